"""Faults injected on purpose: a TCP proxy between keystile and Redis."""

from __future__ import annotations

import contextlib
import socket
import threading
from urllib.parse import urlsplit

WAIT = 5.0


class Proxy:
    """TCP proxy on 127.0.0.1:0 to Redis (``url``: the same database as the target). ``mode``: "pass", "refuse" (new connections are
    closed at once) or "blackhole" (replies are swallowed); :meth:`cut` drops all links."""

    def __init__(self, target: str) -> None:
        parts = urlsplit(target)
        self._target = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self.mode = "pass"
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.05)
        self.url = f"redis://127.0.0.1:{self._server.getsockname()[1]}{parts.path or '/0'}"
        self._links: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.mode == "refuse":
                client.close()
                continue
            try:
                upstream = socket.create_connection(self._target, timeout=WAIT)
            except OSError:
                client.close()
                continue
            for s in (client, upstream):
                s.settimeout(None)
            with self._lock:
                self._links += [client, upstream]
            for src, dst, replies in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(target=self._pump, args=(src, dst, replies), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, replies: bool) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if not (replies and self.mode == "blackhole"):
                    dst.sendall(data)
        for s in (src, dst):
            self._drop(s)

    def _drop(self, s: socket.socket) -> None:
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)  # wakes the pump blocked in recv()
        s.close()

    def cut(self) -> None:
        with self._lock:
            links, self._links = self._links, []
        for s in links:
            self._drop(s)

    def close(self) -> None:
        self._closed.set()
        self._server.close()
        self.cut()
