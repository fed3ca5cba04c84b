"""The ``keystile`` command end to end, as a subprocess, on a real SQLite store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from keystile import Keystile
from keystile._core.tokens import TOKEN_PATTERN

from .conftest import FAST_ARGON2


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "KEYSTILE_STORE": f"sqlite:///{tmp_path / 'keys.db'}",
        "KEYSTILE_ARGON2": json.dumps(FAST_ARGON2),
        "NO_COLOR": "1",
    }


def run(
    env: dict[str, str], *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``keystile *args`` in a child process, with no terminal on stdin."""
    return subprocess.run(
        [sys.executable, "-m", "keystile", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        cwd=cwd,
    )


def is_store_line(line: str) -> bool:
    """The line every command starts with, on stderr, naming the store it opened."""
    return line.startswith("keystile: store ")


def run_json(env: dict[str, str], *args: str) -> Any:
    done = run(env, "--json", *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_create_prints_a_working_token_once(env: dict[str, str]) -> None:
    done = run(env, "keys", "create", "--account", "acct_1", "--name", "CI", "-p", "jobs:*")
    assert done.returncode == 0, done.stderr
    tokens = [line.split()[-1] for line in done.stdout.splitlines() if "token:" in line]
    assert len(tokens) == 1
    import re

    assert re.fullmatch(TOKEN_PATTERN.replace(r"\b", ""), tokens[0])
    engine = Keystile({"store": env["KEYSTILE_STORE"], "argon2": FAST_ARGON2})
    principal = engine.authenticate([("authorization", f"Bearer {tokens[0]}")])
    assert principal.account_id == "acct_1"
    assert principal.has_permission("jobs:read")
    engine.close()

    listing = run(env, "keys", "list", "--account", "acct_1")
    assert listing.returncode == 0
    assert tokens[0] not in listing.stdout
    secret = tokens[0].split("_")[-1]
    assert secret not in listing.stdout
    assert "sk_live_…" + tokens[0][-4:] in listing.stdout


def test_json_lifecycle_show_update_roll_revoke_delete(env: dict[str, str]) -> None:
    created = run_json(env, "keys", "create", "--account", "acct_1", "--name", "A")
    key_id = created["key"]["id"]
    shown = run_json(env, "keys", "show", key_id)
    assert shown["preview"].endswith(created["token"][-4:])
    assert "token" not in shown and "secret" not in json.dumps(shown)

    updated = run_json(env, "keys", "update", key_id, "--name", "B", "-p", "read")
    assert updated["name"] == "B" and updated["permissions"] == ["read"]
    fenced = ["--allowed-ip", "203.0.113.7/24", "--allowed-ip", "2001:DB8::/32"]
    updated = run_json(env, "keys", "update", key_id, *fenced)
    assert updated["allowed_ips"] == ["203.0.113.0/24", "2001:db8::/32"]
    text = run(env, "keys", "show", key_id).stdout
    assert "203.0.113.0/24, 2001:db8::/32" in text
    assert run_json(env, "keys", "update", key_id, "--allowed-ip", "")["allowed_ips"] == []
    assert run_json(env, "keys", "update", key_id, "--rate-limit", "10/S")["rate_limit"] == "10/s"
    assert "10/s" in run(env, "keys", "show", key_id).stdout
    assert run_json(env, "keys", "update", key_id, "--rate-limit", "")["rate_limit"] is None

    rolled = run_json(env, "keys", "roll", key_id, "--grace", "60")
    assert rolled["token"] != created["token"]

    revoked = run_json(env, "keys", "revoke", key_id, "--yes")
    assert revoked["revoked_at"] is not None
    assert run_json(env, "keys", "delete", key_id, "-y") == {"deleted": key_id}
    assert run(env, "keys", "show", key_id).returncode == 3


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["keys", "create", "--account", "bad account", "--name", "x"], "account_id"),
        (["keys", "create", "--account", "a", "--name", "x", "--env", "prod"], "environment"),
        (["keys", "create", "--account", "a", "--name", "x", "--meta", "[1]"], "--meta"),
        (
            ["keys", "create", "--account", "a", "--name", "x", "--expires-at", "soon"],
            "--expires-at",
        ),
        (["keys", "list", "--account", "a", "--limit", "0"], "limit"),
        (
            ["keys", "create", "--account", "a", "--name", "x", "--allowed-ip", "10.0.0.300"],
            "allowed_ips",
        ),
        (
            ["keys", "create", "--account", "a", "--name", "x", "--rate-limit", "9/day"],
            "rate_limit",
        ),
        (["keys", "list", "--account", "a", "--cursor", "!!"], "cursor"),
        (["usage", "--account", "a", "--month", "2026-13"], "month"),
    ],
)
def test_bad_input_is_one_line_naming_the_field(
    env: dict[str, str], args: list[str], field: str
) -> None:
    done = run(env, *args)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.strip().splitlines() if not is_store_line(line)]
    assert len(lines) == 1 and field in lines[0]


def test_bad_settings_exit_2(env: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "keystile.toml"
    config.write_text('[keystile]\nstore = "sqlite:///x.db"\nnonsense = 1\n')
    done = run(env, "--config", str(config), "check-config")
    assert done.returncode == 2 and "nonsense" in done.stderr
    assert run(env, "--config", str(tmp_path / "missing.toml"), "check-config").returncode == 2


def test_usage_reports_the_month_per_key(env: dict[str, str]) -> None:
    created = run_json(env, "keys", "create", "--account", "acct_1", "--name", "A")
    engine = Keystile({"store": env["KEYSTILE_STORE"], "argon2": FAST_ARGON2})
    for _ in range(3):
        principal = engine.authenticate([("x-api-key", created["token"])])
        engine.settle(principal, 200)
    engine.close()  # writes the buffered usage
    report = run_json(env, "usage", "--account", "acct_1")
    assert report["pages"] == 3 and report["requests"] == 3
    assert report["keys"] == [{"key_id": created["key"]["id"], "pages": 3, "requests": 3}]
    assert len(report["history"]) == 12
    table = run(env, "usage", "--account", "acct_1")
    assert table.returncode == 0 and created["key"]["id"] in table.stdout


def test_audit_lists_cli_actions_with_the_cli_user(env: dict[str, str]) -> None:
    created = run_json(env, "keys", "create", "--account", "acct_1", "--name", "A")
    run_json(env, "keys", "revoke", created["key"]["id"], "--yes")
    page = run_json(env, "audit", "--account", "acct_1")
    assert [e["action"] for e in page["items"]] == ["key.revoke", "key.create"]
    assert all(e["actor"].startswith("cli") for e in page["items"])
    assert created["secret"] not in json.dumps(page)
    only = run_json(env, "audit", "--account", "acct_1", "--action", "key.create")
    assert [e["action"] for e in only["items"]] == ["key.create"]
    bad = run(env, "audit", "--account", "acct_1", "--action", "nope")
    assert bad.returncode == 2 and "action" in bad.stderr


def test_settings_from_a_toml_file(tmp_path: Path) -> None:
    config = tmp_path / "keystile.toml"
    config.write_text(
        f'[keystile]\nstore = "sqlite:///{tmp_path / "t.db"}"\n'
        "argon2 = { time_cost = 1, memory_cost = 8 }\n"
    )
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith("KEYSTILE_")}
    done = run(clean_env, "--config", str(config), "--json", "check-config")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ok"] is True
    assert (tmp_path / "t.db").exists()
