"""ttpctl, the ttp-rulebus operator CLI."""
