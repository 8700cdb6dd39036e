"""A loopback TCP proxy that a test can cut and restore, to take a server away from one client.

Killing a server takes it from every client at once and loses what it held in memory; a proxy
between one process and the server takes it away from that process alone, with the server's
state intact, like a broken network path:

    with TcpProxy("127.0.0.1", 5432) as proxy:
        url = f"postgresql://...@127.0.0.1:{proxy.port}/db"   # give this to the process
        proxy.cut()       # every connection is reset, new ones are refused
        proxy.freeze()    # or: nothing gets through, and nobody is told
        proxy.restore()   # connections are accepted (and forwarded) again

`on_reply`, when set, sees every chunk the server sends before the client gets it; a test can
act at an exact point of a protocol exchange there (cut another proxy before a reply arrives).

The proxy runs its own asyncio loop in a daemon thread, so it keeps forwarding while the
test's loop is busy, and it works the same from synchronous code (bench scripts).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import urllib.parse
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Self, TypeVar

from ttp_runtime.embedded import free_port

_T = TypeVar("_T")
_CHUNK = 64 * 1024
_CALL_TIMEOUT_S = 10.0


class TcpProxy:
    """Forwards 127.0.0.1:`port` to `target_host`:`target_port` until cut."""

    def __init__(self, target_host: str, target_port: int, port: int | None = None) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = port if port is not None else free_port()
        self.connections_accepted = 0
        self.cuts = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.on_reply: Callable[[bytes], None] | None = None
        """Called in the proxy's thread with each server -> client chunk, before forwarding."""

    # ---------------------------------------------------------------- public surface

    def start(self) -> Self:
        """Start forwarding (once; later calls do nothing); returns self."""
        if not self._thread.is_alive():
            self._thread.start()
            self._call(self._listen())
        return self

    @property
    def is_cut(self) -> bool:
        """True between `cut()` and `restore()`."""
        return self._server is None

    def cut(self) -> None:
        """Reset every open connection and refuse new ones (the port stops listening)."""
        self._call(self._cut())

    def freeze(self) -> None:
        """Hold every byte in both directions and leave new connections unanswered, with every
        socket open: a path that silently drops packets, which no peer notices by itself."""
        self._call(self._set_flowing(False))

    def restore(self) -> None:
        """Listen again on the same port and forward again (held bytes are delivered)."""
        self._call(self._listen())
        self._call(self._set_flowing(True))

    def close(self) -> None:
        """Cut, then stop the proxy's thread."""
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self._call(self._cut())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(_CALL_TIMEOUT_S)
        self._loop.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # ---------------------------------------------------------------- the proxy's loop

    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(_CALL_TIMEOUT_S)

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._accept, "127.0.0.1", self.port, reuse_address=True
            )

    async def _set_flowing(self, flowing: bool) -> None:
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _cut(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            self.cuts += 1
            server.close()
        for writer in list(self._writers):
            _reset(writer)
        self._writers.clear()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self._server is None:  # accepted in the instant before a cut
            _reset(client_w)
            return
        await self._flowing.wait()
        try:
            server_r, server_w = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            _reset(client_w)
            return
        self.connections_accepted += 1
        self._writers.update((client_w, server_w))
        try:
            await asyncio.gather(
                _pump(client_r, server_w, lambda _: None, self._flowing),
                _pump(server_r, client_w, self._tap, self._flowing),
            )
        finally:
            for writer in (client_w, server_w):
                self._writers.discard(writer)
                writer.close()

    def _tap(self, data: bytes) -> None:
        if self.on_reply is not None:
            self.on_reply(data)


async def _pump(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    tap: Callable[[bytes], None],
    flowing: asyncio.Event,
) -> None:
    """Copy bytes one way until either side ends; then close the other side's write half."""
    try:
        while data := await reader.read(_CHUNK):
            await flowing.wait()
            tap(data)
            if writer.is_closing():  # cut by the tap
                return
            writer.write(data)
            await writer.drain()
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        with contextlib.suppress(OSError):
            if writer.can_write_eof() and not writer.is_closing():
                writer.write_eof()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST rather than FIN, as a broken path looks to the peer."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def proxy_to(url: str, default_port: int) -> TcpProxy:
    """A started `TcpProxy` to the server of `url` (`default_port` when it names none)."""
    parts = urllib.parse.urlsplit(url)
    return TcpProxy(parts.hostname or "127.0.0.1", parts.port or default_port).start()


def via(url: str, proxy: TcpProxy) -> str:
    """`url` with its host and port replaced by the proxy's (credentials kept)."""
    parts = urllib.parse.urlsplit(url)
    netloc = f"127.0.0.1:{proxy.port}"
    if parts.username:
        password = f":{parts.password}" if parts.password else ""
        netloc = f"{parts.username}{password}@{netloc}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
