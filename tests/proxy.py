"""A TCP proxy on a loopback port that a test can freeze, cut and restore, link by link.

It stands between a store and the real database server, so tests can make the server vanish,
hang, answer late or never, or drop a connection, without stopping it (other test runs share
it). Runs in the test's own event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

__all__ = ["Flow", "Link", "TcpProxy"]

_CHUNK = 65536
_LINGER_ZERO = struct.pack("ii", 1, 0)
"""``SO_LINGER`` on with a zero timeout: closing the socket sends RST instead of FIN."""


class Flow:
    """One direction of a :class:`Link`: bytes read from one end, queued, written to the other,
    always in order. The end of the stream travels in the queue like any byte.

    - ``delay``: each chunk read from now on is written that many seconds after it was read;
    - ``held``: nothing is written (the end of the stream neither) until released;
    - ``dropping``: what is read is thrown away (the end of the stream still passes).
    """

    __slots__ = (
        "_queue",
        "_wake",
        "delay",
        "delivered",
        "dropped",
        "dropping",
        "ended",
        "finished",
        "held",
        "received",
    )

    def __init__(self) -> None:
        self.delay = 0.0
        self.held = False
        self.dropping = False
        self.received = 0
        """Bytes read from the source."""
        self.delivered = 0
        """Bytes written to the destination (and drained)."""
        self.dropped = 0
        self.ended = False
        """The source closed (or reset) its side."""
        self.finished = False
        """Nothing more will be written: the end of the stream went through, or a write failed."""
        self._queue: deque[tuple[float, bytes]] = deque()  # (due, chunk); b"" is the end
        self._wake = asyncio.Event()

    @property
    def pending(self) -> int:
        """Bytes read and not yet written nor dropped."""
        return sum(len(chunk) for _, chunk in self._queue)

    def _push(self, chunk: bytes) -> None:
        if chunk:
            self.received += len(chunk)
            if self.dropping:
                self.dropped += len(chunk)
                return
        else:
            self.ended = True
        if self.finished:
            return  # the destination is gone
        self._queue.append((time.monotonic() + self.delay, chunk))
        self._wake.set()

    def _release(self) -> None:
        """Back to passing at once; what is queued is due now."""
        self.delay = 0.0
        self.held = self.dropping = False
        self._queue = deque((0.0, chunk) for _, chunk in self._queue)
        self._wake.set()

    async def _next(self) -> bytes:
        """The next chunk once it may be written (b"" for the end of the stream)."""
        while True:
            self._wake.clear()
            if self._queue and not self.held:
                due, chunk = self._queue[0]
                wait = due - time.monotonic()
                if wait <= 0:
                    self._queue.popleft()
                    return chunk
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
            else:
                await self._wake.wait()


class Link:
    """One client connection through the proxy, and the proxy's connection to the server.

    ``to_server`` carries requests, ``to_client`` answers. A link ends when both directions have
    finished, or when it is reset or cut.
    """

    __slots__ = (
        "_answers",
        "_answers_at_write",
        "_closed",
        "_progress",
        "_tail",
        "_task",
        "_trigger",
        "_writers",
        "id",
        "opened",
        "to_client",
        "to_server",
        "triggered",
    )

    def __init__(self, link_id: int, client: asyncio.StreamWriter) -> None:
        self.id = link_id
        self.opened = time.monotonic()
        self.to_server = Flow()
        self.to_client = Flow()
        self.triggered = False
        """The pattern given to :meth:`withhold_answers` went by."""
        self._writers = [client]
        self._task: asyncio.Task[Any] | None = None
        self._closed = asyncio.Event()
        self._progress = asyncio.Event()
        self._answers = 0  # reads from the server (its end of stream included)
        self._answers_at_write = 0  # ... as counted when the last request bytes were written
        self._trigger: tuple[list[bytes], bool] | None = None
        self._tail = b""

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<Link {self.id} {state} to_server={self.to_server.pending}B queued>"

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    # -- controls --------------------------------------------------------------------------

    def withhold_answers(self, *, drop: bool = False, after: Sequence[bytes] = ()) -> None:
        """Stop passing the server's answers: hold them (``drop=False``) or throw them away.

        With ``after``, only once the client has sent each of those byte strings in turn (say a
        key, then ``COMMIT``): the answer to the request that completes them is the first
        withheld. :attr:`triggered` tells when that happened.
        """
        if after:
            self._trigger = (list(after), drop)
            self._tail = b""
        else:
            self._withhold(drop)

    def _withhold(self, drop: bool) -> None:
        self.triggered = True
        if drop:
            self.to_client.dropping = True
        else:
            self.to_client.held = True

    def delay_requests(self, seconds: float) -> None:
        """Deliver each request byte read from now on ``seconds`` late (0: at once again).
        Bytes already queued keep their time."""
        self.to_server.delay = seconds

    def hold_requests(self) -> None:
        """Keep every request byte (and the client's close) until :meth:`release`."""
        self.to_server.held = True

    def freeze(self) -> None:
        """No byte moves either way until :meth:`release` (a hung server or network)."""
        self.to_server.held = self.to_client.held = True

    def release(self) -> None:
        """Undo every control: what was held or delayed is delivered now, in order."""
        self._trigger = None
        self.to_server._release()
        self.to_client._release()

    def reset(self) -> None:
        """Abort both connections with RST: each end sees ECONNRESET; nothing queued goes."""
        for writer in self._writers:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
            writer.transport.abort()
        self._stop()

    def _stop(self) -> None:
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
        for writer in self._writers:
            writer.close()
        self._closed.set()
        self._progress.set()

    # -- waits -----------------------------------------------------------------------------

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def settled(self) -> None:
        """Wait until every request byte read so far has reached the server and the server has
        run it: it answered after the last of them was written, or, when the client had closed
        its side, it closed the link. Returns at once for a closed link."""
        while not self.closed:
            requests = self.to_server
            if not requests._queue:
                if requests.finished and requests.ended:
                    if self.to_client.ended:
                        return  # the server closed after reading everything the client sent
                elif self._answers > self._answers_at_write or requests.delivered == 0:
                    return
            self._progress.clear()
            await self._progress.wait()

    # -- the pumps -------------------------------------------------------------------------

    async def _run(self, reader: asyncio.StreamReader, upstream: tuple[str, int]) -> None:
        self._task = asyncio.current_task()
        up_reader, up_writer = await asyncio.open_connection(*upstream)
        self._writers.append(up_writer)
        client = self._writers[0]
        await asyncio.gather(
            self._read(reader, self.to_server, requests=True),
            self._read(up_reader, self.to_client, requests=False),
            self._write(self.to_server, up_writer, requests=True),
            self._write(self.to_client, client, requests=False),
        )

    async def _read(self, reader: asyncio.StreamReader, flow: Flow, *, requests: bool) -> None:
        while True:
            try:
                chunk = await reader.read(_CHUNK)
            except OSError:
                chunk = b""  # a reset reads as the end of the stream
            if requests and chunk and self._trigger is not None:
                self._match(chunk)
            if not requests:
                self._answers += 1
            flow._push(chunk)
            self._progress.set()
            if not chunk:
                return

    def _match(self, chunk: bytes) -> None:
        """Follow the patterns of :meth:`withhold_answers` through the request bytes."""
        assert self._trigger is not None
        patterns, drop = self._trigger
        seen = self._tail + chunk
        start = 0
        while patterns and (found := seen.find(patterns[0], start)) >= 0:
            start = found + len(patterns.pop(0))
        if not patterns:
            self._trigger = None
            self._withhold(drop)  # before the request can reach the server
        else:  # what a pattern split across two reads needs
            self._tail = seen[max(start, len(seen) - len(patterns[0]) + 1) :]

    async def _write(self, flow: Flow, writer: asyncio.StreamWriter, *, requests: bool) -> None:
        try:
            while chunk := await flow._next():
                if requests:
                    self._answers_at_write = self._answers
                writer.write(chunk)
                await writer.drain()
                flow.delivered += len(chunk)
                self._progress.set()
            if writer.can_write_eof():
                writer.write_eof()
        except OSError:
            flow._queue.clear()  # the other end is gone: nothing more can reach it
        finally:
            flow.finished = True
            self._progress.set()


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``upstream``; each accepted connection is a :class:`Link`.

    Whole proxy:

    - :meth:`freeze`: connections stay open but no byte moves and new ones are accepted and
      left silent (a server that hangs, a network that drops packets);
    - :meth:`refuse`: the port refuses new connections, open links carry on (a network that is
      down for new connections while old packets are still in flight);
    - :meth:`cut`: every connection is closed and the port refuses new ones (a server down);
    - :meth:`restore`: back to forwarding, on the same port, every link released.

    Link by link: :attr:`links` (live, oldest first; :meth:`mark` and :meth:`links_since` pick
    those opened after a point), then each :class:`Link`'s controls, or :meth:`freeze`,
    :meth:`release` and :meth:`reset` with ``links``.
    """

    __slots__ = (
        "_frozen",
        "_last_id",
        "_links",
        "_server",
        "port",
        "upstream_host",
        "upstream_port",
    )

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._frozen = False
        self._links: dict[int, Link] = {}
        self._last_id = 0

    async def start(self) -> Self:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._last_id += 1
        link = Link(self._last_id, writer)
        self._links[link.id] = link
        if self._frozen:
            link.freeze()
        try:
            await link._run(reader, (self.upstream_host, self.upstream_port))
        except (OSError, asyncio.CancelledError):
            pass  # a link that fails or is torn down at the end of the test just closes
        finally:
            self._links.pop(link.id, None)
            link._stop()

    @property
    def links(self) -> list[Link]:
        """The live links, oldest first."""
        return [link for link in self._links.values() if not link.closed]

    def mark(self) -> int:
        """A point in the proxy's life, for :meth:`links_since`."""
        return self._last_id

    def links_since(self, mark: int) -> list[Link]:
        """The live links opened after :meth:`mark` returned ``mark``."""
        return [link for link in self.links if link.id > mark]

    def _chosen(self, links: Iterable[Link] | None) -> list[Link]:
        return self.links if links is None else list(links)

    def freeze(self, links: Iterable[Link] | None = None) -> None:
        """Freeze ``links``; without them every link, and new ones until :meth:`restore`."""
        if links is None:
            self._frozen = True
        for link in self._chosen(links):
            link.freeze()

    def release(self, links: Iterable[Link] | None = None) -> None:
        """Release ``links`` (default: all) from every control; queued bytes go now."""
        for link in self._chosen(links):
            link.release()

    def reset(self, links: Iterable[Link] | None = None) -> None:
        """Reset ``links`` (default: all) with RST on both sides."""
        for link in self._chosen(links):
            link.reset()

    def refuse(self) -> None:
        """Close the port: new connections are refused; open links are left as they are."""
        server, self._server = self._server, None
        if server is not None:
            server.close()  # closes the listening socket now; wait_closed would wait for links

    async def cut(self) -> None:
        """Close every link (FIN, not RST) and refuse new connections."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for link in list(self._links.values()):
            link._stop()
        self._links.clear()
        if server is not None:
            await server.wait_closed()
        self._frozen = False

    async def restore(self) -> None:
        """Forward again: every link released, new links flow, the port open (the same one)."""
        self._frozen = False
        self.release()
        if self._server is None:
            await self.start()

    async def aclose(self) -> None:
        await self.cut()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *_: object) -> None:
        with contextlib.suppress(OSError):
            await self.aclose()
