"""Faults injected on purpose: an asyncio TCP proxy between a Redis client and Redis.

:class:`Proxy` passes client->server bytes untouched and splits the server->client stream
into RESP replies (:class:`Framer`) to delay, drop or cut at single replies; its event loop
runs in a daemon thread.  :class:`ProxyGroup`: one proxy per node of a Redis Cluster."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import threading
from collections import deque
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar
from urllib.parse import urlsplit

__all__ = ["FAULTS", "MODES", "WAIT", "Framer", "Proxy", "ProxyGroup"]

WAIT = 5.0
MODES = ("pass", "refuse", "blackhole")
FAULTS = ("delay", "drop", "cut")

T = TypeVar("T")
Address = tuple[str, int]

_PER_COUNT = {"*": 1, "~": 1, ">": 1, "%": 2, "|": 2}  # items per count in an aggregate
_UNTIL_END, _CHUNKS = -1, -2  # open streamed aggregate (ends with "."), streamed string (";0")


class Framer:
    """Incremental RESP2/RESP3 framer: :meth:`feed` bytes as they come, get back the replies
    they complete, each as its exact bytes (an attribute ``|`` goes with the value after it;
    a push ``>`` is a reply).  On bytes that are not RESP it turns :attr:`raw`: it returns
    what it holds, then whatever it is fed, as is."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0  # parsing point inside the reply that starts at _buf[0]
        self._open: list[int] = []  # per open aggregate: elements still due (or a marker)
        self.raw = False

    @property
    def pending(self) -> int:
        """Bytes held back: the start of a reply not complete yet."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        if self.raw:
            return [bytes(data)] if data else []
        self._buf += data
        out: list[bytes] = []
        start = 0
        try:
            while (step := self._step()) is not None:
                if step:
                    out.append(bytes(self._buf[start : self._pos]))
                    start = self._pos
        except ValueError:
            self.raw = True
            rest = bytes(self._buf[start:])
            self._buf, self._pos, self._open = bytearray(), 0, []
            return [*out, rest] if rest else out
        del self._buf[:start]
        self._pos -= start
        return out

    def _step(self) -> bool | None:
        """Parse one item at ``_pos``: None if incomplete, else whether it ended a reply."""
        buf, open_ = self._buf, self._open
        eol = buf.find(b"\r\n", self._pos)
        if eol < 0:
            return None
        kind, arg, end = chr(buf[self._pos]), bytes(buf[self._pos + 1 : eol]), eol + 2
        if (kind == ";") != (open_[-1:] == [_CHUNKS]):
            raise ValueError(f"unexpected RESP type {kind!r}")
        streamed = arg == b"?" and kind in "$!=*~>%"
        n = 0
        if kind in "$!=;" and not streamed:
            n = int(arg)
            if n < (0 if kind == ";" else -1):
                raise ValueError(f"bad length {n}")
            if n > 0 or (n == 0 and kind != ";"):
                if len(buf) < end + n + 2:
                    return None
                if buf[end + n : end + n + 2] != b"\r\n":
                    raise ValueError("blob not followed by CRLF")
                end += n + 2
        self._pos = end
        if streamed:  # a string in ";<n>" chunks up to ";0", or items up to "."
            open_.append(_CHUNKS if kind in "$!=" else _UNTIL_END)
            return False
        if kind == ";" and n:
            return False
        if kind in ";.":
            if kind == "." and (arg or open_[-1:] != [_UNTIL_END]):
                raise ValueError("'.' outside a streamed aggregate")
            open_.pop()
        elif kind in _PER_COUNT:
            if int(arg) < -1:
                raise ValueError(f"bad count {arg!r}")
            due = max(int(arg), 0) * _PER_COUNT[kind] + (kind == "|")  # + the annotated value
            if due:
                open_.append(due)
                return False
        elif kind not in "$!=+-:_#,(":  # blobs; simple string, error, integer, null, bool,
            raise ValueError(f"not RESP: {kind!r}")  # double, big number
        return self._done()

    def _done(self) -> bool:
        """One element completed: close the aggregates it completes; True at the top level."""
        while self._open:
            if self._open[-1] < 0:
                return False
            self._open[-1] -= 1
            if self._open[-1]:
                return False
            self._open.pop()
        return True


def _parse_target(target: str | Address) -> tuple[Address, str, str]:
    """(host, port), "scheme://user:pass@" and path+query of a redis URL or an address."""
    if not isinstance(target, str):
        return (str(target[0]), int(target[1])), "redis://", "/0"
    parts = urlsplit(target)
    auth = parts.netloc.rpartition("@")[0]
    tail = (parts.path or "/0") + (f"?{parts.query}" if parts.query else "")
    address = (parts.hostname or "127.0.0.1", parts.port or 6379)
    return address, f"{parts.scheme or 'redis'}://{auth}{'@' if auth else ''}", tail


class _Closing:
    def __enter__(self: T) -> T:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()  # type: ignore[attr-defined]


class Proxy(_Closing):
    """TCP proxy on 127.0.0.1 (an ephemeral port) to the Redis ``target`` (URL or address).

    ``url``: the proxied URL (same database, credentials, query); ``address``: where it
    listens.  ``mode``: "pass", "refuse" (new connections are closed at once) or
    "blackhole" (all replies swallowed).  :meth:`cut` drops every link; :meth:`faults` and
    :meth:`fail_next` inject faults per reply; ``replies`` counts the replies forwarded,
    ``injected`` the faults by kind.  :meth:`close` (or the end of a ``with``) stops it."""

    def __init__(self, target: str | Address, *, seed: Any = None) -> None:
        self.target, head, tail = _parse_target(target)
        self._mode = "pass"
        self.replies = 0
        self.injected = dict.fromkeys(FAULTS, 0)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._fractions, self._delay = (0.0, 0.0, 0.0), 0.0
        self._next: deque[tuple[str, float]] = deque()
        self._links: dict[asyncio.Task[None], list[asyncio.StreamWriter]] = {}
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        try:
            self._server = self._call(asyncio.start_server(self._serve, "127.0.0.1", 0))
        except BaseException:
            self._stop_loop()
            raise
        host, port = self._server.sockets[0].getsockname()[:2]
        self.address: Address = (host, port)
        self.url = f"{head}{host}:{port}{tail}"

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {value!r}")
        self._mode = value

    def faults(self, delay=0.0, delay_fraction=0.0, drop_fraction=0.0, cut_fraction=0.0) -> None:
        """From now on each reply is, at random (``seed``), delayed by ``delay`` seconds
        (with ``delay_fraction``), dropped or replaced by a cut; replaces earlier odds."""
        fractions = (delay_fraction, drop_fraction, cut_fraction)
        if delay < 0 or any(not 0 <= f <= 1 for f in fractions) or sum(fractions) > 1:
            raise ValueError("need delay >= 0 and fractions in [0, 1] summing to at most 1")
        with self._lock:
            self._fractions, self._delay = fractions, delay

    def fail_next(self, n: int = 1, how: str = "drop", delay: float = 0.0) -> None:
        """Inject ``how`` on each of the next ``n`` replies (queued after earlier calls;
        before the random faults)."""
        if how not in FAULTS or n < 0 or delay < 0:
            raise ValueError(f"need n >= 0, delay >= 0 and how in {FAULTS}")
        with self._lock:
            self._next.extend([(how, delay)] * n)

    def clear(self) -> None:
        """No more injected faults (the counters stay)."""
        with self._lock:
            self._fractions, self._delay = (0.0, 0.0, 0.0), 0.0
            self._next.clear()

    def cut(self) -> None:
        """Drop every current link, both sides; returns once they are closed."""
        if not self._closed:
            self._call(self._cut_all())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._call(self._shutdown())
        finally:
            self._stop_loop()

    def __repr__(self) -> str:
        return f"<Proxy {self.address} -> {self.target} mode={self._mode}>"

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(WAIT)

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(WAIT)
        if not self._thread.is_alive():
            self._loop.close()

    async def _shutdown(self) -> None:
        self._server.close()
        await self._cut_all()
        await self._server.wait_closed()

    async def _cut_all(self) -> None:
        for task, writers in self._links.items():
            if not writers[0].is_closing():  # not ending already
                task.cancel()
        if self._links:
            await asyncio.wait(list(self._links), timeout=WAIT)

    def _decide(self) -> tuple[str | None, float]:
        """The fault for the next reply, if any, and its delay."""
        with self._lock:
            if self._next:
                how: str | None
                how, delay = self._next.popleft()
            else:
                how, delay = None, self._delay
                d, dr, c = self._fractions
                if d or dr or c:
                    r = self._rng.random()
                    if r < d + dr + c:
                        how = "delay" if r < d else "drop" if r < d + dr else "cut"
            if how is None:
                return None, 0.0
            self.injected[how] += 1
            return how, delay if how == "delay" else 0.0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        writers = self._links[task] = [writer]  # type: ignore[index]
        pumps: list[asyncio.Future[None]] = []
        try:
            if self._mode == "refuse" or self._closed:
                return
            connecting = asyncio.open_connection(*self.target)
            up_reader, up_writer = await asyncio.wait_for(connecting, WAIT)
            writers.append(up_writer)
            both = (self._requests(reader, up_writer), self._replies(up_reader, writer))
            pumps += map(asyncio.ensure_future, both)
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        except (OSError, asyncio.TimeoutError, asyncio.CancelledError):
            pass  # no upstream, or cut: this link ends either way
        finally:  # no await before the writers are closing: _cut_all cancels no more
            for w in writers:
                w.close()
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            for w in writers:
                try:
                    await asyncio.wait_for(w.wait_closed(), 1.0)
                except (Exception, asyncio.CancelledError):
                    w.transport.abort()
            del self._links[task]

    async def _requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()

    async def _replies(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        framer = Framer()
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                for reply in framer.feed(data):
                    if self._mode == "blackhole":
                        continue
                    how, delay = (None, 0.0) if framer.raw else self._decide()
                    if how == "cut":
                        return  # the link is closed before this reply
                    if how == "drop":
                        continue
                    if delay > 0:  # replies after this one wait too: a slow server
                        await writer.drain()
                        await asyncio.sleep(delay)
                    self.replies += 1  # first: a test that got the reply sees it counted
                    writer.write(reply)
                await writer.drain()


def _host_key(address: Address) -> Address:
    host, port = address
    with contextlib.suppress(OSError, UnicodeError):
        host = socket.gethostbyname(host) if host else host
    return host, int(port)


class ProxyGroup(_Closing):
    """One :class:`Proxy` per node of a Redis Cluster (``targets``: the nodes' addresses).

    Hand :meth:`address_remap` to ``RedisCluster(..., address_remap=group.address_remap)``
    (sync or asyncio) and use one of ``addresses`` as its startup node: every node the
    cluster announces is then reached through its proxy.  ``faults``, ``fail_next``,
    ``clear``, ``cut``, ``close`` and ``mode`` apply to all members."""

    def __init__(self, targets: Iterable[Address], *, seed: Any = None) -> None:
        self.proxies: list[Proxy] = []
        try:
            for i, target in enumerate(targets):
                self.proxies.append(Proxy(target, seed=None if seed is None else f"{seed}:{i}"))
        except BaseException:
            self.close()
            raise
        self._remap = {_host_key(p.target): p.address for p in self.proxies}

    @property
    def addresses(self) -> list[Address]:
        return [p.address for p in self.proxies]

    def address_remap(self, address: Address) -> Address:
        """Where the node at ``address`` (as the cluster announces it) is reached: its
        proxy; a proxy's own address stays; an unknown node is left unchanged."""
        host, port = address[0], int(address[1])
        if (host, port) in self.addresses:
            return host, port
        found = self._remap.get(_host_key((host, port)))
        if found is None:  # e.g. announced under another name: match the port if unique
            same_port = [a for (_, p), a in self._remap.items() if p == port]
            found = same_port[0] if len(same_port) == 1 else None
        return found or (host, port)

    def proxy_for(self, address: Address) -> Proxy:
        """The member in front of the node at ``address`` (or listening there)."""
        return {p.address: p for p in self.proxies}[self.address_remap(address)]

    @property
    def mode(self) -> str:
        return "/".join(sorted({p.mode for p in self.proxies}))  # "pass", or "pass/refuse"...

    @mode.setter
    def mode(self, value: str) -> None:
        for p in self.proxies:
            p.mode = value

    @property
    def replies(self) -> int:
        return sum(p.replies for p in self.proxies)

    @property
    def injected(self) -> dict[str, int]:
        return {how: sum(p.injected[how] for p in self.proxies) for how in FAULTS}

    def faults(self, delay: float = 0.0, **fractions: float) -> None:
        self._each("faults", delay, **fractions)

    def fail_next(self, n: int = 1, how: str = "drop", delay: float = 0.0) -> None:
        self._each("fail_next", n, how, delay)  # on every member: its next n replies

    def clear(self) -> None:
        self._each("clear")

    def cut(self) -> None:
        self._each("cut")

    def _each(self, method: str, *args: Any, **kwargs: Any) -> None:
        for p in self.proxies:
            getattr(p, method)(*args, **kwargs)

    def close(self) -> None:
        for p in self.proxies:
            p.close()
