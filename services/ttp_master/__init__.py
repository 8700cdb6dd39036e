"""The ttp-rulebus master: rules directory -> PostgreSQL -> JetStream (SPEC section 1)."""
