"""The ttp-rulebus master: rules directory -> PostgreSQL -> JetStream (see README.md)."""
