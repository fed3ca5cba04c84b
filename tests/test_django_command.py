"""``python manage.py keystile ...`` in a throwaway Django project: the CLI's verbs on the
project's ``settings.KEYSTILE`` (never on ``KEYSTILE_*`` variables), keystile's own help,
the CLI's exit codes; checked afterwards through the configured store itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from keystile import Keystile

from .conftest import FAST_ARGON2, subprocess_environ

pytest.importorskip("django")

MANAGE_PY = """\
import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kproj.settings")
from django.core.management import execute_from_command_line

execute_from_command_line(sys.argv)
"""


def make_project(root: Path, keystile: Any) -> None:
    """``root/manage.py`` and ``root/kproj/settings.py`` with ``KEYSTILE = keystile``."""
    package = root / "kproj"
    package.mkdir(exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / "settings.py").write_text(
        "SECRET_KEY = 'manage-py-keystile-tests'\nUSE_TZ = True\n"
        "INSTALLED_APPS = ['django.contrib.contenttypes', 'django.contrib.auth', "
        "'keystile.django']\n"
        f"DATABASES = {{'default': {{'ENGINE': 'django.db.backends.sqlite3', "
        f"'NAME': {str(root / 'django.db')!r}}}}}\n"
        f"KEYSTILE = {keystile!r}\n"
    )
    (root / "manage.py").write_text(MANAGE_PY)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    clean = subprocess_environ()
    # Set, and to be ignored: the command reads settings.KEYSTILE only.
    return {
        **clean,
        "KEYSTILE_STORE": f"sqlite:///{tmp_path / 'from_the_environment.db'}",
        "NO_COLOR": "1",
    }


@pytest.fixture
def store(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'project_keys.db'}"
    make_project(tmp_path, {"store": url, "argon2": FAST_ARGON2})
    return url


def manage(
    env: dict[str, str], root: Path, *args: str, **variables: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=root,
        env={**env, **variables},
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def key_name(store: str, key_id: str) -> str:
    """The key's name, read through the store itself."""
    engine = Keystile({"store": store, "argon2": FAST_ARGON2})
    try:
        return engine.keys.get(key_id).name
    finally:
        engine.close()


def test_keys_create_goes_to_the_configured_store(
    env: dict[str, str], tmp_path: Path, store: str
) -> None:
    done = manage(
        env, tmp_path, "keystile", "keys", "create", "--account", "acct_1", "--name", "CI",
        "-p", "jobs:*", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    created = json.loads(done.stdout)
    assert done.stderr.splitlines() == [f"keystile: store {store}"]
    assert not (tmp_path / "from_the_environment.db").exists()
    assert key_name(store, created["key"]["id"]) == "CI"
    engine = Keystile({"store": store, "argon2": FAST_ARGON2})
    try:
        principal = engine.authenticate([("x-api-key", created["token"])])
        assert principal.account_id == "acct_1" and principal.has_permission("jobs:read")
    finally:
        engine.close()

    listing = manage(env, tmp_path, "keystile", "keys", "list", "--account", "acct_1", "-q")
    assert listing.returncode == 0 and listing.stderr == ""
    assert created["key"]["id"] in listing.stdout and created["token"] not in listing.stdout
    deleted = manage(env, tmp_path, "keystile", "keys", "delete", created["key"]["id"], "--yes")
    assert deleted.returncode == 0, deleted.stderr


def test_help_is_keystiles(env: dict[str, str], tmp_path: Path, store: str) -> None:
    done = manage(env, tmp_path, "keystile", "-h")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: manage.py keystile ")
    assert "check-config" in done.stdout and "--verbosity" not in done.stdout
    create = manage(env, tmp_path, "keystile", "keys", "create", "--help")
    assert create.stdout.startswith("usage: manage.py keystile keys create ")
    assert "manage.py keystile keys create --account" in create.stdout
    assert "(default: live)" in create.stdout
    help_page = manage(env, tmp_path, "help", "keystile")
    assert help_page.returncode == 0 and help_page.stdout.startswith("usage: manage.py keystile ")
    assert "keystile" in manage(env, tmp_path, "help").stdout


def test_exit_codes_are_the_clis(env: dict[str, str], tmp_path: Path, store: str) -> None:
    missing = manage(env, tmp_path, "keystile", "keys", "show", "key_A1b2C3d4E5f6G7h8")
    assert missing.returncode == 3 and "key_A1b2C3d4E5f6G7h8" in missing.stderr
    bad = manage(env, tmp_path, "keystile", "keys", "create", "--account", "a b", "--name", "x")
    assert bad.returncode == 2 and "account_id" in bad.stderr
    unknown = manage(env, tmp_path, "keystile", "keys", "frobnicate")
    assert unknown.returncode == 2 and "usage: manage.py keystile keys" in unknown.stderr
    created = manage(env, tmp_path, "keystile", "keys", "create", "--account", "a", "--name", "x")
    key_id = next(w for w in created.stdout.split() if w.startswith("key_"))
    unconfirmed = manage(env, tmp_path, "keystile", "keys", "delete", key_id)
    assert unconfirmed.returncode == 2 and "--yes" in unconfirmed.stderr
    config = manage(env, tmp_path, "keystile", "--config", "x.toml", "check-config")
    assert config.returncode == 2 and "--config" in config.stderr
    for done in (missing, bad, unknown, unconfirmed, config):
        assert "Traceback" not in done.stderr


def test_djangos_own_settings_option_is_not_passed_on(
    env: dict[str, str], tmp_path: Path, store: str
) -> None:
    for args in (["--settings", "kproj.settings"], ["--settings=kproj.settings"]):
        done = manage(env, tmp_path, "keystile", "check-config", "--json", *args)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["ok"] is True


def test_bad_keystile_settings_are_one_line(env: dict[str, str], tmp_path: Path) -> None:
    make_project(tmp_path, {"store": "sqlite:///x.db", "nonsense": 1})
    done = manage(env, tmp_path, "keystile", "check-config")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert "nonsense" in done.stderr and "Traceback" not in done.stderr


def test_the_django_store_through_manage_py(env: dict[str, str], tmp_path: Path) -> None:
    make_project(tmp_path, {"store": "django://", "argon2": FAST_ARGON2})
    before = manage(env, tmp_path, "keystile", "keys", "list", "--account", "a1")
    assert before.returncode == 1 and "migrate" in before.stderr
    migrated = manage(env, tmp_path, "migrate", "--verbosity", "0")
    assert migrated.returncode == 0, migrated.stderr
    done = manage(
        env, tmp_path, "keystile", "keys", "create", "--account", "a1", "--name", "dj", "--json"
    )
    assert done.returncode == 0, done.stderr
    key_id = json.loads(done.stdout)["key"]["id"]
    assert "keystile: store django://" in done.stderr
    # Through the configured store, from another process: the bare CLI on the project.
    shown = subprocess.run(
        [sys.executable, "-m", "keystile", "keys", "show", key_id, "--json"],
        cwd=tmp_path,
        env={
            **env,
            "KEYSTILE_STORE": "django://",
            "DJANGO_SETTINGS_MODULE": "kproj.settings",
            "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["name"] == "dj"


CALL_COMMAND = """\
import io, json, sys
import django
from django.core.management import CommandError, call_command

django.setup()
out = io.StringIO()
call_command("keystile", "keys", "create", "--account", "a1", "--name", "cc", "--json", stdout=out)
created = json.loads(out.getvalue())
out = io.StringIO()
call_command("keystile", "keys", "list", "--account", "a1", "--json", "-q", stdout=out)
listed = json.loads(out.getvalue())
try:
    call_command("keystile", "keys", "show", "key_A1b2C3d4E5f6G7h8", stderr=io.StringIO())
except CommandError as error:
    code = error.returncode
print(json.dumps({"created": created["key"]["id"], "listed": [k["id"] for k in listed["items"]],
                  "code": code}))
"""


def test_call_command(env: dict[str, str], tmp_path: Path, store: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", CALL_COMMAND],
        cwd=tmp_path,
        env={
            **env,
            "DJANGO_SETTINGS_MODULE": "kproj.settings",
            "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["listed"] == [result["created"]] and result["code"] == 3


def test_a_project_without_keystile_settings_runs_on_the_environments(
    env: dict[str, str], tmp_path: Path
) -> None:
    # As its middleware would: Keystile() with no settings reads KEYSTILE_* variables.
    make_project(tmp_path, None)
    store = env["KEYSTILE_STORE"]
    done = manage(
        env, tmp_path, "keystile", "keys", "create", "--account", "a1", "--name", "env", "--json",
        KEYSTILE_ARGON2=json.dumps(FAST_ARGON2),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [f"keystile: store {store}"]
    assert key_name(store, json.loads(done.stdout)["key"]["id"]) == "env"
    bad = manage(env, tmp_path, "keystile", "check-config", KEYSTILE_LOCAL_CACHE_SIZE="many")
    assert bad.returncode == 2 and "KEYSTILE_LOCAL_CACHE_SIZE" in bad.stderr
    assert "Traceback" not in bad.stderr
