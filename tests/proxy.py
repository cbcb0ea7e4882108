"""A TCP proxy on a loopback port that a test can freeze, cut and restore.

It stands between a store and the real PostgreSQL server, so tests can make the server vanish
without stopping it (other test runs share it). Runs in the test's own event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Self

__all__ = ["TcpProxy"]


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``upstream``.

    - :meth:`freeze`: connections stay open but no byte moves and new ones are accepted and
      left silent (a server that hangs, a network that drops packets);
    - :meth:`cut`: every connection is closed and the port refuses new ones (a server down);
    - :meth:`restore`: back to forwarding, on the same port.
    """

    __slots__ = ("_frozen", "_links", "_server", "port", "upstream_host", "upstream_port")

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._frozen = asyncio.Event()
        self._frozen.set()  # set means "flowing"
        self._links: set[asyncio.StreamWriter] = set()

    async def start(self) -> Self:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._links.add(writer)
        ends = [writer]
        try:
            await self._frozen.wait()
            up_reader, up_writer = await asyncio.open_connection(
                self.upstream_host, self.upstream_port
            )
            ends.append(up_writer)
            self._links.add(up_writer)
            await asyncio.gather(
                self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
            )
        except (OSError, asyncio.CancelledError):
            pass  # a link that fails or is torn down at the end of the test just closes
        finally:
            for end in ends:
                self._links.discard(end)
                end.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self._frozen.wait()
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    def freeze(self) -> None:
        self._frozen.clear()

    async def cut(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._links):
            writer.close()
        self._links.clear()
        if server is not None:
            await server.wait_closed()
        self._frozen.set()

    async def restore(self) -> None:
        self._frozen.set()
        if self._server is None:
            await self.start()

    async def aclose(self) -> None:
        await self.cut()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *_: object) -> None:
        with contextlib.suppress(OSError):
            await self.aclose()
