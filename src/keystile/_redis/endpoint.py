"""Where one Redis server is and how to log in, read once from its URL (``redis://``,
``rediss://``, ``unix://``), for keystile's own connections (the pipelined asyncio one and the
blocking one); redis-py's URL rules, so the same URL means the same server to both."""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from typing import Any, NamedTuple

from redis.connection import parse_url


class Endpoint(NamedTuple):
    path: str | None  # a unix socket's, else None
    host: str
    port: int
    db: int
    username: str | None
    password: str | None
    tls: ssl.SSLContext | None

    def __repr__(self) -> str:  # a NamedTuple's would show the password
        return f"Endpoint({self.where!r}, db={self.db})"

    @property
    def where(self) -> str:
        """For error messages: never the password."""
        return self.path or f"{self.host}:{self.port}"

    def handshake(self) -> list[Sequence[Any]]:
        """The commands a new connection sends first (AUTH, SELECT)."""
        commands: list[Sequence[Any]] = []
        if self.password is not None:
            user = (self.username,) if self.username else ()
            commands.append(("AUTH", *user, self.password))
        if self.db:
            commands.append(("SELECT", self.db))
        return commands


def endpoint_of(url: str) -> Endpoint:
    opts: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
    tls: ssl.SSLContext | None = None
    if url.startswith("rediss:"):
        # redis-py's query options: ssl_cert_reqs, ssl_ca_certs, ssl_certfile, ssl_keyfile,
        # ssl_check_hostname.
        tls = ssl.create_default_context(cafile=opts.get("ssl_ca_certs"))
        if opts.get("ssl_certfile"):
            tls.load_cert_chain(opts["ssl_certfile"], opts.get("ssl_keyfile"))
        reqs = str(opts.get("ssl_cert_reqs", "required")).lower()
        if reqs in ("none", "optional") or opts.get("ssl_check_hostname") is False:
            tls.check_hostname = False
        if reqs in ("none", "optional"):
            tls.verify_mode = ssl.CERT_NONE if reqs == "none" else ssl.CERT_OPTIONAL
    return Endpoint(
        path=opts.get("path") if url.startswith("unix:") else None,
        host=opts.get("host", "localhost"),
        port=int(opts.get("port", 6379)),
        db=int(opts.get("db", 0)),
        username=opts.get("username"),
        password=opts.get("password"),
        tls=tls,
    )
