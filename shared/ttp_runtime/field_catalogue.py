"""Reading a deployment's field catalogue extension (`TTP_FIELD_CATALOGUE`, `--fields`)."""

from __future__ import annotations

from pathlib import Path

from ttp_core.contract.field_catalogue import (
    BUILTIN,
    CatalogueError,
    FieldCatalogue,
    parse_extension,
)

MAX_CATALOGUE_BYTES = 1024 * 1024


def load_field_catalogue(path: Path | None) -> FieldCatalogue:
    """The built-in catalogue, extended by the YAML or JSON file at `path` when one is given.

    Raises :class:`CatalogueError` (located: `file:line:column: message`) when the file
    cannot be read or is not a catalogue.
    """
    if path is None:
        return BUILTIN
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_CATALOGUE_BYTES + 1)
    except OSError as exc:
        raise CatalogueError(str(path), 1, 1, f"cannot read: {exc.strerror or exc}") from None
    if len(raw) > MAX_CATALOGUE_BYTES:
        raise CatalogueError(str(path), 1, 1, f"larger than {MAX_CATALOGUE_BYTES:,} bytes")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CatalogueError(str(path), 1, 1, f"not UTF-8: {exc.reason}") from None
    return BUILTIN.extended(parse_extension(text, str(path)))
