"""Compiling rules and tagging events with them."""
