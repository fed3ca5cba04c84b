"""What the ``keystile`` command prints: tables and key details for people, JSON with
``--json``. A token is printed by :func:`show_created` only."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TextIO

from keystile._core.models import ApiKey
from keystile._services.audit import AuditPage, entry_to_dict
from keystile._services.keys import CreatedKey, KeyPage
from keystile._services.quotas import UsageReport


class Output:
    """Where a command prints (``stream``), and, on ``errors``, what is not its result: the
    store line, a confirmation question, whose answer is read from ``answers``."""

    def __init__(
        self,
        stream: TextIO,
        as_json: bool,
        *,
        errors: TextIO | None = None,
        answers: TextIO | None = None,
    ) -> None:
        self.stream = stream
        self.as_json = as_json
        self.errors = sys.stderr if errors is None else errors
        self.answers = sys.stdin if answers is None else answers
        self.colour = stream.isatty() and "NO_COLOR" not in os.environ

    @property
    def interactive(self) -> bool:
        """Whether someone can answer: the answers come from a terminal."""
        try:
            return self.answers.isatty()
        except (AttributeError, ValueError):  # no stdin at all (None), or a closed one
            return False

    def ask(self, question: str) -> str:
        """The answer typed to ``question`` ("" at the end of input)."""
        self.errors.write(question)
        self.errors.flush()
        return self.answers.readline()

    def note(self, text: str) -> None:
        print(f"keystile: {text}", file=self.errors)

    def bold(self, text: str) -> str:
        return f"\033[1m{text}\033[0m" if self.colour else text

    def line(self, text: str = "") -> None:
        print(text, file=self.stream)

    def json(self, data: Any) -> None:
        print(json.dumps(data, indent=2, default=str), file=self.stream)

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        widths = [
            max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
            for i, h in enumerate(headers)
        ]
        self.line(self.bold("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()))
        for row in rows:
            self.line("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


def when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else "-"


def show_created(out: Output, created: CreatedKey, verb: str) -> None:
    if out.as_json:
        out.json({"token": created.token, "secret": created.secret, "key": created.key.to_dict()})
        return
    out.line(f"{verb} {created.key_id} ({created.key.name}) for account {created.key.account_id}")
    out.line()
    out.line(f"  token:   {out.bold(created.token)}")
    out.line(f"  key id:  {created.key_id}")
    out.line(f"  secret:  {created.secret}")
    out.line()
    out.line("Store it now: it is shown only this once.")


def show_key(out: Output, key: ApiKey, now: datetime) -> None:
    if out.as_json:
        out.json(key.to_dict())
        return
    rows = [
        ("id", key.id),
        ("preview", key.preview),
        ("name", key.name),
        ("account", key.account_id),
        ("owner", key.owner or "-"),
        ("environment", key.environment),
        ("permissions", ", ".join(key.permissions) or "-"),
        ("accounts", ", ".join(key.accounts) or "-"),
        ("allowed ips", ", ".join(key.allowed_ips) or "anywhere"),
        ("rate limit", key.rate_limit or "-"),
        ("status", key.status(now)),
        ("created", when(key.created_at)),
        ("expires", when(key.expires_at)),
        ("last used", when(key.last_used_at)),
        ("revoked", when(key.revoked_at)),
        ("meta", json.dumps(dict(key.meta)) if key.meta else "-"),
    ]
    for label, value in rows:
        out.line(f"{label:<12} {value}")


def show_key_page(out: Output, page: KeyPage, now: datetime) -> None:
    if out.as_json:
        out.json(
            {
                "items": [k.to_dict() for k in page.items],
                "total": page.total,
                "next_cursor": page.next_cursor,
            }
        )
        return
    out.table(
        ["ID", "PREVIEW", "NAME", "ENV", "STATUS", "OWNER", "CREATED", "LAST USED"],
        [
            [
                k.id,
                k.preview,
                k.name,
                k.environment,
                k.status(now),
                k.owner or "-",
                when(k.created_at),
                when(k.last_used_at),
            ]
            for k in page.items
        ],
    )
    more = f"; next page: --cursor {page.next_cursor}" if page.next_cursor else ""
    out.line(f"{len(page.items)} of {page.total} key(s){more}")


def show_all_keys(out: Output, keys: Sequence[ApiKey], total: int, now: datetime) -> None:
    if out.as_json:
        out.json({"items": [k.to_dict() for k in keys], "total": total})
        return
    out.table(
        ["ID", "ACCOUNT", "NAME", "PERMISSIONS", "STATUS", "CREATED", "EXPIRES"],
        [
            [
                k.id,
                k.account_id,
                k.name,
                ", ".join(k.permissions) or "-",
                k.status(now),
                when(k.created_at),
                when(k.expires_at),
            ]
            for k in keys
        ],
    )
    out.line(f"{len(keys)} of {total} key(s), all accounts")


def show_usage(out: Output, report: UsageReport) -> None:
    if out.as_json:
        out.json(report.to_dict())
        return
    limit = "unlimited" if report.limit is None else f"{report.limit:,}"
    out.line(
        f"{report.account_id} · {report.environment} · {report.month}: "
        f"{report.pages:,} pages of {limit}, {report.requests:,} requests; "
        f"resets {report.resets_at:%Y-%m-%d %H:%M} UTC"
    )
    out.line()
    out.table(
        ["KEY", "PAGES", "REQUESTS"],
        [[k.key_id, f"{k.pages:,}", f"{k.requests:,}"] for k in report.keys],
    )
    out.line()
    out.table(
        ["MONTH", "PAGES", "REQUESTS"],
        [[m.month, f"{m.pages:,}", f"{m.requests:,}"] for m in report.history],
    )


def show_audit(out: Output, page: AuditPage) -> None:
    if out.as_json:
        out.json({"items": [entry_to_dict(e) for e in page.items], "next_cursor": page.next_cursor})
        return
    out.table(
        ["WHEN", "ACTION", "ACTOR", "TARGET", "DETAILS"],
        [
            [
                f"{e.at:%Y-%m-%d %H:%M:%S}",
                e.action,
                e.actor,
                e.target or "-",
                json.dumps(dict(e.details), separators=(",", ":")) if e.details else "-",
            ]
            for e in page.items
        ],
    )
    if page.next_cursor:
        out.line(f"more: --cursor {page.next_cursor}")
