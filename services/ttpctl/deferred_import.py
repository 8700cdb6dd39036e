"""Deferring a module nobody may use: :func:`defer_import`.

nats-py imports aiohttp when it is imported, for its websocket transport only; aiohttp
builds its SSL contexts on import, a fifth of a control command's start-up CPU. ttpctl
connects over nats:// or tls:// unless told ws://, so the console script defers it.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

__all__ = ["defer_import"]


class _Deferred(types.ModuleType):
    """Stands in for a module until an attribute of it is read, then imports the real one
    (which replaces it in :data:`sys.modules`) and answers from it from then on."""

    def __getattr__(self, attribute: str) -> object:
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        return getattr(importlib.import_module(self.__name__), attribute)


def defer_import(name: str) -> None:
    """Make ``import name`` cheap until the module is used; nothing if it is already
    imported or not installed (``import name`` then fails as it would have)."""
    if name in sys.modules or importlib.util.find_spec(name) is None:
        return
    sys.modules[name] = _Deferred(name)
