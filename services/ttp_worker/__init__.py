"""The ttp-rulebus worker: rule events -> compiled index -> tags (see README.md)."""
