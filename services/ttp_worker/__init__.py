"""The ttp-rulebus worker: rule events -> compiled index -> tags (SPEC section 1)."""
