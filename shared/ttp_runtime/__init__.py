"""What every ttp-rulebus process needs to meet the world.

Settings, NATS and JetStream helpers, logging, telemetry, the health/metrics HTTP server, and
launchers for embedded NATS and PostgreSQL servers (:mod:`ttp_runtime.embedded`). Imports only
point down: this package may use :mod:`ttp_core`, never a service package.
"""
