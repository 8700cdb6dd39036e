"""MITRE ATT&CK Enterprise catalogue bundled with ``ttp_core``.

Data from MITRE ATT&CK®, © The MITRE Corporation; see ``NOTICE.md`` in this
package for the terms of use and how the data file is regenerated.
"""

from ttp_core.attack.catalogue import AttackCatalogue, Tactic, Technique, load_catalogue

__all__ = ["AttackCatalogue", "Tactic", "Technique", "load_catalogue"]
