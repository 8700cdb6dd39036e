"""Chaos tier: real processes and servers, faults injected from outside, no loss allowed."""
