"""ttpctl's global ``--env-file PATH`` (or ``$TTP_ENV_FILE``): ``TTP_*`` settings from a file.

Meant for the role credentials ``ttpctl dev`` writes (``<data-dir>/credentials/<role>.env``):
``ttpctl --env-file .ttp/credentials/operator.env state set ...`` acts as the operator.

Precedence, highest first: a command-line option (``--nats-url``), then the file, then the
environment, then the secrets directory and the defaults. The file counts like a command-line
option because it was named for this one run: its variables replace the environment's (a note
on stderr says so when a value differs), so a shell that still exports another role's
``TTP_NATS_*`` cannot silently mix two identities. Variables the file does not set still come
from the environment (TLS files, for example). Only ``TTP_*`` variables are taken: the file
cannot change ``PATH`` or anything else of the processes ttpctl starts.
"""

from __future__ import annotations

import os
import stat
from collections.abc import MutableMapping
from pathlib import Path
from typing import Annotated, Final

import typer

from ttp_runtime.env_file import EnvFileError, read_env_file

__all__ = ["ENV_FILE_VARIABLE", "EnvFileOption", "apply_env_file", "load_env_file_option"]

ENV_FILE_VARIABLE: Final = "TTP_ENV_FILE"
_PREFIX: Final = "TTP_"
_SECRET_MARKERS: Final = ("PASSWORD", "TOKEN", "DATABASE_URL")

EnvFileOption = Annotated[
    Path | None,
    typer.Option(
        "--env-file",
        envvar=ENV_FILE_VARIABLE,
        metavar="PATH",
        help="Read TTP_* settings from PATH (KEY=VALUE lines, # comments), such as the role"
        " credentials `ttpctl dev` writes to <data-dir>/credentials/<role>.env. The file's"
        " variables replace the same ones in the environment; command-line options such as"
        " --nats-url still win over both.",
        show_default=False,
    ),
]


def apply_env_file(path: Path, environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Put the ``TTP_*`` variables of ``path`` into ``environ`` (default ``os.environ``).

    Returns notes for the operator: variables ignored, environment values replaced, a file
    holding a secret that other users may read. Raises :class:`EnvFileError` when the file
    cannot be read or parsed; nothing is changed then.
    """
    target = os.environ if environ is None else environ
    values = read_env_file(path)
    notes: list[str] = []
    ignored = sorted(k for k in values if not k.startswith(_PREFIX) or k == ENV_FILE_VARIABLE)
    if ignored:
        notes.append(f"{path}: ignored {', '.join(ignored)} (only TTP_* settings are read)")
    taken = {k: v for k, v in values.items() if k not in ignored}
    replaced = sorted(k for k, v in taken.items() if k in target and target[k] != v)
    if replaced:
        notes.append(f"{path}: replaces the environment's {', '.join(replaced)}")
    if any(marker in key for key in taken for marker in _SECRET_MARKERS):
        mode = _mode(path)
        if mode is not None and mode & 0o077:
            notes.append(
                f"{path} holds a secret and other users may read or change it"
                f" (mode {mode:04o}); run `chmod 600 {path}`"
            )
    target.update(taken)
    return notes


def _mode(path: Path) -> int | None:
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return None


def load_env_file_option(path: Path | None) -> None:
    """The option's effect: apply ``path`` (if given), notes to stderr, exit 2 if unusable."""
    if path is None:
        return
    try:
        notes = apply_env_file(path)
    except EnvFileError as exc:
        typer.echo(f"ttpctl: --env-file: {exc}", err=True)
        raise typer.Exit(2) from None
    for note in notes:
        typer.echo(f"ttpctl: note: {note}", err=True)
