"""ttp-console: the web console of ttp-rulebus (pages for analysts and operators over NATS)."""
