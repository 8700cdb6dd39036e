"""The pure core of ttp-rulebus: rule language, validation, compilation and tagging.

Nothing in this package performs I/O beyond reading its own packaged data, and nothing
here imports the rest of the project (see README.md).
"""

__version__ = "0.1.0"
