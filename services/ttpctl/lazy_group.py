"""A typer group whose subcommands are imported only when one is used.

Every ttpctl process paid the imports of every command (NATS, aiohttp, the pydantic models
of the contract, the rule validator) before doing anything. A :func:`lazy_group` knows its
subcommands by name and where each lives (``"module:attribute"`` of a :class:`typer.Typer`),
and imports a module the first time one of its commands is resolved: ``ttpctl rules
validate`` imports the validator only. The command objects are the ones typer builds from
that Typer, so options, help texts and exit codes are the same as with eager registration.

A group's own ``--help`` lists its commands with the first paragraph of their help; each
:class:`LazyCommand` carries that paragraph (``summary``) so the listing imports nothing.
The tests check every summary against the command it stands for.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import typer
import typer.main

# typer vendors click as ``typer._click``; the group's hooks are typed with its classes.
from typer import _click
from typer.core import TyperCommand, TyperGroup

__all__ = ["LazyCommand", "lazy_group"]


@dataclass(frozen=True, slots=True)
class LazyCommand:
    """Where a subcommand lives: ``target`` is ``"module:attribute"`` naming a
    :class:`typer.Typer`; with ``command``, the subcommand is that command of the Typer,
    otherwise the Typer itself is the subcommand (a group). ``summary`` is the first
    paragraph of its help, what the group's ``--help`` lists beside its name."""

    target: str
    summary: str
    command: str | None = None

    def load(self, name: str) -> _click.Command:
        """Import the target and build the click command typer would register as ``name``."""
        module_name, _, attribute = self.target.partition(":")
        app = getattr(importlib.import_module(module_name), attribute)
        if not isinstance(app, typer.Typer):
            raise TypeError(f"{self.target} is not a typer.Typer")
        group = typer.main.get_group(app)
        if self.command is None:
            group.name = name
            return group
        return group.commands[self.command]

    def listing(self, name: str) -> _click.Command:
        """A stand-in for the command in its group's help listing: its name and summary."""
        return TyperCommand(name, help=self.summary)


def lazy_group(commands: Mapping[str, LazyCommand]) -> type[TyperGroup]:
    """A :class:`TyperGroup` class (for ``typer.Typer(cls=...)``) whose subcommands are
    ``commands``, listed in that order after any registered eagerly."""
    lazy = MappingProxyType(dict(commands))

    class LazyGroup(TyperGroup):
        # True while this group prints its help: unloaded commands are listed by summary.
        _listing = False

        def format_help(self, ctx: _click.Context, formatter: _click.HelpFormatter) -> None:
            self._listing = True
            try:
                super().format_help(ctx, formatter)
            finally:
                self._listing = False

        def list_commands(self, ctx: _click.Context) -> list[str]:
            eager = super().list_commands(ctx)
            return [*eager, *(name for name in lazy if name not in eager)]

        def get_command(self, ctx: _click.Context, cmd_name: str) -> _click.Command | None:
            if cmd_name not in self.commands and cmd_name in lazy:
                if self._listing:
                    return lazy[cmd_name].listing(cmd_name)
                self.add_command(lazy[cmd_name].load(cmd_name), cmd_name)
            return super().get_command(ctx, cmd_name)

        def resolve_command(
            self, ctx: _click.Context, args: list[str]
        ) -> tuple[str | None, _click.Command | None, list[str]]:
            if args and args[0] not in lazy and args[0] not in self.commands:
                # Not one of ours: typer's "no such command" suggests names from
                # self.commands, so every command must be there to be suggested.
                for name in lazy:
                    self.get_command(ctx, name)
            return super().resolve_command(ctx, args)

    return LazyGroup
