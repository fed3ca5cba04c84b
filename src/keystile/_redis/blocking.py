"""A blocking Redis client for the request path of one server: a socket, hiredis, nothing more.

redis-py's blocking client spends about three quarters of a warm request's CPU on its own
machinery (a pool lookup, health polls, observability hooks, two packers); a sync worker
(gunicorn, Django, Flask) waits for each request's one meter call, so that is time no request
is served. Here a command is packed by hiredis, written with one ``sendall`` and read with
``recv`` until hiredis has the reply.

Connections are kept in a list of idle ones: a thread takes one for a command and gives it back
after the reply, so threads never share a socket. A connection that fails in any way (a
timeout, a cut, a reply it cannot read) is closed, never reused: a late reply would answer the
next command. Errors are redis-py's classes. Nothing is retried but EVALSHA after NOSCRIPT
(which means the script did not run). A forked child drops its parent's connections.
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
#: SO_RCVTIMEO and SO_SNDTIMEO take a struct timeval of two longs on Linux.
_KERNEL_TIMEOUTS = sys.platform.startswith("linux")


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
            error = _as_redis_error(exc, self._endpoint, self._timeout)
            if error is exc:
                raise
            raise error from exc
        if self._closed:
            conn.sock.close()
        else:
            self._idle.append(conn)
        if isinstance(reply, Exception):
            raise reply
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
        self._drop(close=True)

    def _drop(self, *, close: bool) -> None:
        idle, self._idle = self._idle, []
        if close:
            for conn in idle:
                conn.sock.close()

    def _open(self) -> _Connection:
        endpoint, timeout = self._endpoint, self._timeout
        self._closed = False  # used again after close(): as redis-py's clients are
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
            if endpoint.tls is None and _KERNEL_TIMEOUTS:
                # The kernel times the wait: a timeout socket polls before every send and recv,
                # two system calls more a command.
                sock.settimeout(None)
                timeval = struct.pack("ll", int(timeout), int(timeout % 1 * 1e6))
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
        except TimeoutError:
            raise rx.TimeoutError(f"timeout connecting to Redis at {endpoint.where}") from None
        except OSError as exc:
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
            raise error from exc
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
        client._drop(close=False)  # the parent's sockets: the parent still uses them


os.register_at_fork(after_in_child=_after_fork)
