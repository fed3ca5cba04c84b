"""The ``keystile`` command as a command line: global options anywhere, --version, help,
``keys list --all-accounts``, confirmations (no terminal, --yes, a real pty), the store line
on stderr, a reader that goes away, and no silent ./keystile.db inside a Django project.
Subprocesses on real SQLite files; the parser itself in-process where that is all it takes."""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from keystile import Keystile
from keystile._cli.main import describe_store
from keystile._cli.parser import build_parser

from .conftest import FAST_ARGON2, subprocess_environ
from .test_cli import run


@pytest.fixture
def store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'keys.db'}"


@pytest.fixture
def env(store: str) -> dict[str, str]:
    clean = subprocess_environ()
    return {
        **clean,
        "KEYSTILE_STORE": store,
        "KEYSTILE_ARGON2": json.dumps(FAST_ARGON2),
        "NO_COLOR": "1",
    }


@pytest.fixture
def engine(store: str) -> Iterator[Keystile]:
    keystile = Keystile({"store": store, "argon2": FAST_ARGON2})
    yield keystile
    keystile.close()


def run_json(env: dict[str, str], *args: str) -> Any:
    done = run(env, *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


# -- global options after the verb ------------------------------------------------------------

EVERY_VERB = [
    ["demo", "--port", "0"],
    ["check-config"],
    ["usage", "--account", "a1"],
    ["audit", "--account", "a1"],
    ["keys", "create", "--account", "a1", "--name", "x"],
    ["keys", "list", "--account", "a1"],
    ["keys", "list", "--all-accounts"],
    ["keys", "show", "key_x"],
    ["keys", "update", "key_x", "--name", "y"],
    ["keys", "revoke", "key_x"],
    ["keys", "delete", "key_x"],
    ["keys", "roll", "key_x"],
]


@pytest.mark.parametrize("verb", EVERY_VERB, ids=" ".join)
def test_global_options_are_read_before_and_after_every_verb(verb: list[str]) -> None:
    parser = build_parser()
    after = parser.parse_args([*verb, "--json", "--config", "k.toml", "-q"])
    assert (after.json, after.config, after.quiet) == (True, "k.toml", True)
    before = parser.parse_args(["--json", "--config", "k.toml", "--quiet", *verb])
    assert (before.json, before.config, before.quiet) == (True, "k.toml", True)
    # One given before the verb is not reset by the subcommand's own (absent) option.
    mixed = parser.parse_args(["--config", "k.toml", *verb, "--json"])
    assert (mixed.json, mixed.config, mixed.quiet) == (True, "k.toml", False)
    neither = parser.parse_args(verb)
    assert (neither.json, neither.config, neither.quiet) == (False, None, False)


def test_json_after_the_verb_end_to_end(env: dict[str, str]) -> None:
    created = run_json(env, "keys", "create", "--account", "acct_1", "--name", "CI", "--json")
    key_id = created["key"]["id"]
    listing = run_json(env, "keys", "list", "--account", "acct_1", "--json")
    assert [k["id"] for k in listing["items"]] == [key_id]
    report = run_json(env, "usage", "--account", "acct_1", "--month", "2026-11", "--json")
    assert report["month"] == "2026-11" and report["account_id"] == "acct_1"
    assert run_json(env, "keys", "show", key_id, "--json")["id"] == key_id
    assert run_json(env, "keys", "delete", key_id, "--json", "--yes") == {"deleted": key_id}


def test_config_after_the_verb(env: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "keystile.toml"
    config.write_text(
        f'[keystile]\nstore = "sqlite:///{tmp_path / "from_toml.db"}"\n'
        "argon2 = { time_cost = 1, memory_cost = 8 }\n"
    )
    del env["KEYSTILE_STORE"]
    created = run_json(
        env, "keys", "create", "--account", "a1", "--name", "t", "--config", str(config), "--json"
    )
    assert (tmp_path / "from_toml.db").exists()
    done = run(env, "keys", "list", "--account", "a1", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert created["key"]["id"] in done.stdout
    assert "from_toml.db" in done.stderr


# -- --version and help ------------------------------------------------------------------------


def test_version(env: dict[str, str]) -> None:
    done = run(env, "--version")
    assert done.returncode == 0
    assert done.stdout == f"keystile {metadata.version('keystile')}\n"


HELP_PAGES = [
    (["demo"], ["(default: 8000)", "(default: 127.0.0.1)"]),
    (["check-config"], []),
    (["usage"], ["--month"]),
    (["audit"], ["(default: 50)"]),
    (["keys"], ["create", "roll"]),
    (["keys", "create"], ["(default: live)", "--expires-in-days"]),
    (["keys", "list"], ["--all-accounts", "(default: 20"]),
    (["keys", "show"], []),
    (["keys", "update"], ["--no-expiry"]),
    (["keys", "revoke"], ["--yes"]),
    (["keys", "delete"], ["--yes", "confirmation"]),
    (["keys", "roll"], ["(default: 0)"]),
]


@pytest.mark.parametrize(("verb", "needles"), HELP_PAGES, ids=lambda v: " ".join(v))
def test_every_verb_has_help_with_a_description_defaults_and_an_example(
    verb: list[str], needles: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args([*verb, "-h"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    usage_line, _, rest = text.partition("\n\n")
    assert usage_line.startswith(f"usage: keystile {' '.join(verb)} ")
    description = rest.partition("\n\n")[0]
    assert description and not description.startswith(("options:", "positional"))
    examples = text.partition("\nexamples:\n")[2]
    assert f"  keystile {' '.join(verb)}" in examples
    for needle in needles:
        assert needle in text
    assert "(default: None)" not in text and "(default: False)" not in text


def test_top_level_help_lists_every_verb_on_one_line(env: dict[str, str]) -> None:
    done = run(env, "-h")
    assert done.returncode == 0
    for verb in ("demo", "check-config", "usage", "audit", "keys"):
        assert re.search(rf"^    {verb} +\S.*$", done.stdout, re.MULTILINE), done.stdout
    assert "--version" in done.stdout and "exit codes" in done.stdout


def test_a_wrapper_names_itself_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser("manage.py keystile").parse_args(["keys", "roll", "-h"])
    text = capsys.readouterr().out
    assert text.startswith("usage: manage.py keystile keys roll ")
    assert "  manage.py keystile keys roll key_" in text


# -- keys list --all-accounts -----------------------------------------------------------------


def test_all_accounts_table_and_json(env: dict[str, str], engine: Keystile) -> None:
    first = engine.keys.create("acct_1", "first", permissions=["read", "write"])
    second = engine.keys.create("acct_2", "second", expires_at=engine.now().replace(year=2099))
    gone = engine.keys.create("acct_3", "gone")
    engine.keys.revoke(gone.key_id)

    done = run(env, "keys", "list", "--all-accounts")
    assert done.returncode == 0, done.stderr
    header, *rows, footer = done.stdout.strip().splitlines()
    assert header.split() == [
        "ID",
        "ACCOUNT",
        "NAME",
        "PERMISSIONS",
        "STATUS",
        "CREATED",
        "EXPIRES",
    ]
    assert [row.split()[:3] for row in rows] == [
        [second.key_id, "acct_2", "second"],
        [first.key_id, "acct_1", "first"],
    ]
    assert "read, write" in rows[1] and "2099-" in rows[0]
    assert footer == "2 of 2 key(s), all accounts"
    assert first.token not in done.stdout and first.secret not in done.stdout

    listing = run_json(env, "keys", "list", "--all-accounts", "--json", "--all")
    assert listing["total"] == 3
    by_id = {k["id"]: k for k in listing["items"]}
    assert by_id[gone.key_id]["revoked_at"] is not None
    assert {k["account_id"] for k in listing["items"]} == {"acct_1", "acct_2", "acct_3"}
    assert "secret" not in json.dumps(listing) and first.secret not in json.dumps(listing)

    limited = run_json(env, "keys", "list", "--all-accounts", "--limit", "1", "--json")
    assert [k["id"] for k in limited["items"]] == [second.key_id] and limited["total"] == 2
    found = run_json(env, "keys", "list", "--all-accounts", "--search", "FIR", "--json")
    assert [k["id"] for k in found["items"]] == [first.key_id]


@pytest.mark.parametrize(
    "args",
    [
        ["keys", "list"],
        ["keys", "list", "--account", "a1", "--all-accounts"],
        ["keys", "list", "--all-accounts", "--cursor", "abc"],
        ["keys", "list", "--all-accounts", "--limit", "0"],
        ["keys", "list", "--all-accounts", "--env", "prod"],
    ],
)
def test_all_accounts_refuses_what_does_not_fit(env: dict[str, str], args: list[str]) -> None:
    done = run(env, *args)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


# -- confirmation -----------------------------------------------------------------------------


@pytest.mark.parametrize("verb", ["delete", "revoke"])
def test_without_a_terminal_and_without_yes_nothing_happens(
    env: dict[str, str], engine: Keystile, verb: str
) -> None:
    created = engine.keys.create("acct_1", "keep me")
    done = run(env, "keys", verb, created.key_id)
    assert done.returncode == 2
    assert "--yes" in done.stderr and "terminal" in done.stderr
    assert done.stdout == ""
    assert engine.keys.get(created.key_id).revoked_at is None


@pytest.mark.parametrize(("verb", "flag"), [("delete", "--yes"), ("revoke", "-y")])
def test_yes_skips_the_question(
    env: dict[str, str], engine: Keystile, verb: str, flag: str
) -> None:
    created = engine.keys.create("acct_1", "go")
    done = run(env, "keys", verb, created.key_id, flag)
    assert done.returncode == 0, done.stderr
    assert "[y/N]" not in done.stderr
    listing = engine.keys.list("acct_1", include_revoked=True)
    assert listing.total == (0 if verb == "delete" else 1)


def _answer_on_a_terminal(env: dict[str, str], args: list[str], answer: str) -> tuple[int, str]:
    """Run with stdin and stderr on a pseudo-terminal; type ``answer`` once asked."""
    controller, terminal = os.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "keystile", *args],
        env=env,
        stdin=terminal,
        stdout=subprocess.DEVNULL,
        stderr=terminal,
    )
    os.close(terminal)
    seen = b""
    answered = False
    deadline = time.monotonic() + 60  # a safety net for a hang, not a measurement
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 1)
            if ready:
                try:
                    chunk = os.read(controller, 4096)
                except OSError:  # the child closed the terminal: it has ended
                    break
                if not chunk:
                    break
                seen += chunk
            if not answered and b"[y/N]" in seen:
                os.write(controller, answer.encode() + b"\n")
                answered = True
            if process.poll() is not None and not ready:
                break
        return process.wait(timeout=60), seen.decode(errors="replace")
    finally:
        os.close(controller)
        if process.poll() is None:
            process.kill()


@pytest.mark.parametrize("verb", ["delete", "revoke"])
def test_a_terminal_is_asked_and_yes_goes_ahead(
    env: dict[str, str], engine: Keystile, verb: str
) -> None:
    created = engine.keys.create("acct_1", "asked")
    code, seen = _answer_on_a_terminal(env, ["keys", verb, created.key_id], "y")
    assert f"{verb.capitalize()} key {created.key_id} ('asked', account acct_1)? [y/N]" in seen
    assert code == 0, seen
    listing = engine.keys.list("acct_1", include_revoked=True)
    if verb == "delete":
        assert listing.total == 0
    else:
        assert listing.items[0].revoked_at is not None


@pytest.mark.parametrize("answer", ["n", "", "whatever"])
def test_a_terminal_that_does_not_say_yes_changes_nothing(
    env: dict[str, str], engine: Keystile, answer: str
) -> None:
    created = engine.keys.create("acct_1", "kept")
    code, seen = _answer_on_a_terminal(env, ["keys", "delete", created.key_id], answer)
    assert "[y/N]" in seen
    assert code == 2, seen
    assert "not confirmed" in seen
    assert engine.keys.get(created.key_id).name == "kept"


# -- the store line -----------------------------------------------------------------------------


def test_the_store_is_named_once_on_stderr(env: dict[str, str], store: str) -> None:
    done = run(env, "keys", "list", "--account", "a1")
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [f"keystile: store {store}"]
    assert "keystile: store" not in done.stdout
    quiet = run(env, "keys", "list", "--account", "a1", "-q")
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert run(env, "--quiet", "check-config").stderr == ""


def test_a_relative_sqlite_store_is_shown_with_its_full_path(
    env: dict[str, str], tmp_path: Path
) -> None:
    env["KEYSTILE_STORE"] = "sqlite:///relative.db"
    done = run(env, "check-config", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        f"keystile: store sqlite:///relative.db ({tmp_path / 'relative.db'})"
    ]


def test_the_store_line_never_shows_a_password(env: dict[str, str]) -> None:
    pytest.importorskip("psycopg")
    env["KEYSTILE_STORE"] = "postgresql://keystile:hunter2-not-shown@127.0.0.1:1/test"
    done = run(env, "keys", "list", "--account", "a1")
    assert done.returncode == 1  # nothing listens there
    assert "keystile: store postgresql://keystile:***@127.0.0.1:1/test" in done.stderr
    assert "hunter2" not in done.stderr + done.stdout


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:hunter2@db/keys", "postgresql://u:***@db/keys"),
        ("postgresql://u:hun@ter2@db/keys", "postgresql://u:***@db/keys"),
        (
            "postgresql://db/keys?password=hunter2&sslmode=off",
            "postgresql://db/keys?password=***&sslmode=off",
        ),
        ("postgresql://u@db:5432/keys", "postgresql://u@db:5432/keys"),
        ("memory://", "memory://"),
    ],
)
def test_describe_store_hides_passwords(url: str, shown: str) -> None:
    assert describe_store(url) == shown


# -- a reader that goes away --------------------------------------------------------------------


def _without_unbuffered(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k != "PYTHONUNBUFFERED"}


@pytest.mark.parametrize("args", [["keys", "list", "--account", "a1"], ["--json", "check-config"]])
def test_a_reader_gone_before_the_first_line_buffered_stdout(
    env: dict[str, str], engine: Keystile, args: list[str]
) -> None:
    engine.keys.create("a1", "one")
    reader, writer = os.pipe()
    os.close(reader)  # like `| head -0` that has already exited: every write fails
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "keystile", *args],
            env=_without_unbuffered(env),
            stdout=writer,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
    finally:
        os.close(writer)
    _, error = process.communicate(timeout=60)
    assert process.returncode == 141, error
    assert b"BrokenPipeError" not in error and b"Exception ignored" not in error
    assert b"Traceback" not in error


def test_a_reader_that_stops_after_a_few_bytes_of_a_long_listing(
    env: dict[str, str], engine: Keystile
) -> None:
    for n in range(300):  # about 150 kB of JSON: more than a pipe holds
        engine.keys.create(f"acct_{n % 7}", f"key {n}")
    process = subprocess.Popen(
        [sys.executable, "-m", "keystile", "keys", "list", "--all-accounts", "--json", "-q"],
        env=_without_unbuffered(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    assert process.stdout is not None and process.stderr is not None
    assert process.stdout.read(100).startswith(b"{")  # like `| head -c 100`
    process.stdout.close()
    error = process.stderr.read()
    assert process.wait(timeout=60) == 141
    assert error == b""


# -- inside a Django project --------------------------------------------------------------------


def test_no_silent_default_store_inside_a_django_project(
    env: dict[str, str], tmp_path: Path
) -> None:
    del env["KEYSTILE_STORE"]
    env["DJANGO_SETTINGS_MODULE"] = "someproject.settings"
    for args in (["keys", "list", "--account", "a1"], ["check-config"]):
        done = run(env, *args, cwd=tmp_path)
        assert done.returncode == 2
        (line,) = done.stderr.strip().splitlines()
        assert line.startswith("keystile: error: DJANGO_SETTINGS_MODULE")
        assert "python manage.py keystile" in line and "KEYSTILE_STORE=django://" in line
    config = tmp_path / "nostore.toml"
    config.write_text("[keystile]\nlocal_cache_size = 5\n")
    assert run(env, "--config", str(config), "check-config", cwd=tmp_path).returncode == 2
    assert not (tmp_path / "keystile.db").exists()
    # A store said explicitly is used: in the environment, or in the file.
    env["KEYSTILE_STORE"] = f"sqlite:///{tmp_path / 'explicit.db'}"
    assert run(env, "check-config", cwd=tmp_path).returncode == 0
    del env["KEYSTILE_STORE"]
    config.write_text(f'[keystile]\nstore = "sqlite:///{tmp_path / "toml.db"}"\n')
    assert run(env, "check-config", "--config", str(config), cwd=tmp_path).returncode == 0
    assert not (tmp_path / "keystile.db").exists()
