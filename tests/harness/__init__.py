"""Harnesses shared by the test tiers: in-process masters, real service processes, faults.

Test modules of any tier import from here; no test module imports another.
"""
