"""A blocking Redis client for the request path of one server: a socket, hiredis, nothing more.

redis-py's blocking client costs a script call about three times the CPU of the call itself
(a pool lookup, health polls, observability hooks, two packers), and a sync worker (gunicorn,
Django, Flask) waits for each request's meter call: that is time no request is served. Here a
command is packed by hiredis, written with one ``sendall`` and read with ``recv`` until hiredis
has the reply; on Linux the kernel times the wait (``SO_RCVTIMEO``), except on a socket that
gevent or eventlet patched, which keeps Python's timeout.

Connections are kept in a list of idle ones: a thread takes one for a command and gives it back
after the reply, so threads never share a socket. A connection that fails in any way (a
timeout, a cut, a reply it cannot read) is closed, never reused (a late reply would answer the
next command), and the idle ones with it: they fail together (a restart, a failover, an idle
cut), and no health poll runs before each command, so the caller's one retry gets a new
connection. Errors are redis-py's classes. Nothing is retried but EVALSHA after NOSCRIPT
(which means the script did not run). A forked child opens its own connections.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
import weakref
from collections.abc import Sequence
from typing import Any

import redis.exceptions as rx

from keystile._redis.endpoint import Endpoint, endpoint_of
from keystile._redis.multiplex import LuaScript
from keystile._redis.replies import NOT_ENOUGH_DATA, pack, reply_reader

__all__ = ["BlockingRedis"]

_READ_SIZE = 65536


def _kernel_timeouts(sock: socket.socket) -> bool:
    """Whether the kernel can time the waits (SO_RCVTIMEO takes a timeval of two longs on
    Linux): not for a socket that gevent or eventlet patched, which waits in its own loop
    and never returns on a kernel timeout."""
    return sys.platform.startswith("linux") and type(sock).__module__ == "socket"


class _Connection:
    __slots__ = ("reader", "sock")

    def __init__(self, sock: socket.socket, decode: bool) -> None:
        self.sock = sock
        self.reader = reply_reader(decode)

    def call(self, packed: bytes) -> Any:
        """Write one command, read its reply (a reply error is returned, not raised)."""
        sock, reader = self.sock, self.reader
        sock.sendall(packed)
        while True:
            data = sock.recv(_READ_SIZE)
            if not data:
                raise rx.ConnectionError("connection to Redis closed by the server")
            reader.feed(data)
            reply = reader.gets()
            if reply is not NOT_ENOUGH_DATA:
                return reply


class BlockingRedis:
    """``execute_command`` and ``evalsha`` on one server, safe to call from many threads."""

    def __init__(self, url: str, *, timeout: float, decode_responses: bool = True) -> None:
        self._endpoint: Endpoint = endpoint_of(url)
        self._timeout = timeout
        self._decode = decode_responses
        self._idle: list[_Connection] = []
        self._closed = False
        _ALL.add(self)

    def execute_command(self, *args: Any) -> Any:
        packed = pack(args)
        try:
            conn = self._idle.pop()
        except IndexError:
            conn = self._open()
        try:
            reply = conn.call(packed)
        except BaseException as exc:
            conn.sock.close()
            # Idle connections fail together (a restart, a failover, an idle cut): drop them,
            # so the caller's one retry gets a new connection, not the next dead one.
            self._drop()
            error = _as_redis_error(exc, self._endpoint, self._timeout)
            if error is exc:
                raise
            try:
                raise error from exc
            finally:
                del error  # no cycle through this frame
        if self._closed:
            conn.sock.close()
        else:
            self._idle.append(conn)
        if isinstance(reply, Exception):
            try:
                raise reply
            finally:
                del reply
        return reply

    def evalsha(self, script: LuaScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return self.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        except rx.NoScriptError:  # it did not run: load it and run it, once
            self.execute_command("SCRIPT", "LOAD", script.source)
            return self.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)

    def close(self) -> None:
        """Close the idle connections; one in use is closed when its command ends."""
        self._closed = True
        self._drop()

    def _drop(self) -> None:
        # In a forked child this closes its copies of the parent's descriptors: the parent's
        # connections stay open (a socket ends when its last descriptor closes).
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.sock.close()

    def _open(self) -> _Connection:
        endpoint, timeout = self._endpoint, self._timeout
        self._closed = False  # used again after close(): as redis-py's clients are
        sock: socket.socket | None = None
        try:
            if endpoint.path is not None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(timeout)
                sock.connect(endpoint.path)
            else:
                sock = socket.create_connection((endpoint.host, endpoint.port), timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if endpoint.tls is not None:
                    sock = endpoint.tls.wrap_socket(sock, server_hostname=endpoint.host)
            if endpoint.tls is None and _kernel_timeouts(sock):
                # The kernel times the wait: a timeout socket polls before every send and recv,
                # two system calls more a command.
                sock.settimeout(None)
                timeval = struct.pack("ll", int(timeout), int(timeout % 1 * 1e6))
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
        except TimeoutError:
            if sock is not None:
                sock.close()
            raise rx.TimeoutError(f"timeout connecting to Redis at {endpoint.where}") from None
        except OSError as exc:
            if sock is not None:
                sock.close()
            raise rx.ConnectionError(
                f"error connecting to Redis at {endpoint.where}: {exc}"
            ) from exc
        conn = _Connection(sock, self._decode)
        try:
            for command in endpoint.handshake():
                reply = conn.call(pack(tuple(command)))
                if isinstance(reply, Exception):
                    raise reply
        except BaseException as exc:
            sock.close()
            error = _as_redis_error(exc, endpoint, timeout)
            if error is exc:
                raise
            try:
                raise error from exc
            finally:
                del error
        finally:
            reply = None  # an error reply raised above: no cycle through this frame
        return conn


def _as_redis_error(exc: BaseException, endpoint: Endpoint, timeout: float) -> BaseException:
    """The redis-py error for what failed (``exc`` itself when it is one already, or not an
    error of the connection: KeyboardInterrupt, say)."""
    if isinstance(exc, rx.RedisError) or not isinstance(exc, Exception):
        return exc
    if isinstance(exc, UnicodeDecodeError):
        return rx.DataError("reply is not valid UTF-8 (decode_responses=True)")
    if isinstance(exc, (TimeoutError, BlockingIOError)):  # BlockingIOError: SO_RCVTIMEO's
        return rx.TimeoutError(f"no reply from Redis at {endpoint.where} within {timeout} s")
    if isinstance(exc, OSError):
        return rx.ConnectionError(f"connection to Redis at {endpoint.where} failed: {exc}")
    return rx.ConnectionError(f"invalid reply from Redis at {endpoint.where}")


#: Every client, for the fork hook: a child must not write to its parent's sockets.
_ALL: weakref.WeakSet[BlockingRedis] = weakref.WeakSet()


def _after_fork() -> None:
    for client in list(_ALL):
        client._drop()


os.register_at_fork(after_in_child=_after_fork)
