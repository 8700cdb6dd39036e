"""Writing an ATT&CK Navigator layer for `ttpctl coverage --layer` and `ttpctl tags layer`."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["layer_text", "write_layer"]


def layer_text(document: dict[str, Any]) -> str:
    """The layer as indented JSON with a final newline: one field a line, so files diff well."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def write_layer(path: Path, document: dict[str, Any]) -> None:
    """Write ``document`` to ``path`` (``-``: stdout) in one step.

    The file is written beside its target and renamed over it, so a Navigator (or a
    script) never reads half a layer, and a failed write leaves the previous file as it
    was. Raises :class:`OSError` when the directory is missing or not writable.
    """
    text = layer_text(document)
    if str(path) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    target = path.expanduser()
    descriptor, temporary = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=".tmp", dir=target.parent if str(target.parent) else "."
    )
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
        # mkstemp makes the file 0600; a layer is meant to be shared like any other file.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
