"""``flask keystile ...``: the CLI's verbs on the app's settings (``app.config["KEYSTILE"]``,
or flat ``KEYSTILE_*`` keys, or the engine of the extension set up on the app), never on
``KEYSTILE_*`` environment variables; as ``flask --app`` in a subprocess and through click's
runner. Checked afterwards through the configured SQLite store itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("flask")

from flask import Flask

from keystile.flask_cli import app_settings, keystile_command

from .conftest import FAST_ARGON2
from .test_django_command import key_name

#: The ``flask`` script next to this interpreter, as a user runs it.
FLASK = str(Path(sys.executable).with_name("flask"))

#: No add_command: installing keystile registers ``flask keystile`` (a ``flask.commands``
#: entry point) for every app.
APP_MODULE = """\
from flask import Flask

app = Flask(__name__)
app.config.update({config!r})
{extra}
"""


def write_app(root: Path, config: dict[str, Any], extra: str = "") -> str:
    (root / "kflask.py").write_text(APP_MODULE.format(config=config, extra=extra))
    return "kflask"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("KEYSTILE_", "FLASK_"))}
    # Set, and to be ignored: the command reads the app's settings only.
    return {
        **clean,
        "KEYSTILE_STORE": f"sqlite:///{tmp_path / 'from_the_environment.db'}",
        "NO_COLOR": "1",
    }


def flask(env: dict[str, str], root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FLASK, "--app", "kflask", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def test_flask_keystile_keys_create_in_a_subprocess(env: dict[str, str], tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'app_keys.db'}"
    write_app(tmp_path, {"KEYSTILE": {"store": store, "argon2": FAST_ARGON2}})
    done = flask(
        env, tmp_path, "keystile", "keys", "create", "--account", "acct_1", "--name", "CI",
        "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    created = json.loads(done.stdout)
    assert done.stderr.splitlines() == [f"keystile: store {store}"]
    assert key_name(store, created["key"]["id"]) == "CI"
    assert not (tmp_path / "from_the_environment.db").exists()

    missing = flask(env, tmp_path, "keystile", "keys", "show", "key_A1b2C3d4E5f6G7h8")
    assert missing.returncode == 3 and "Traceback" not in missing.stderr
    unconfirmed = flask(env, tmp_path, "keystile", "keys", "delete", created["key"]["id"])
    assert unconfirmed.returncode == 2 and "--yes" in unconfirmed.stderr
    help_page = flask(env, tmp_path, "keystile", "-h")
    assert help_page.returncode == 0
    assert help_page.stdout.startswith("usage: flask keystile ")
    create_help = flask(env, tmp_path, "keystile", "keys", "create", "--help")
    assert "flask keystile keys create --account" in create_help.stdout
    assert "keystile" in flask(env, tmp_path, "--help").stdout


def test_flat_keys_in_a_subprocess(env: dict[str, str], tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'flat.db'}"
    write_app(tmp_path, {"KEYSTILE_STORE": store, "KEYSTILE_ARGON2": FAST_ARGON2})
    done = flask(env, tmp_path, "keystile", "keys", "create", "--account", "a1", "--name", "f")
    assert done.returncode == 0, done.stderr
    key_id = next(word for word in done.stdout.split() if word.startswith("key_"))
    assert key_name(store, key_id) == "f"


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    app = Flask("keystile_cli_tests")
    app.cli.add_command(keystile_command)
    yield app


def invoke(app: Flask, *args: str) -> Any:
    return app.test_cli_runner().invoke(args=["keystile", *args])


def test_config_dict_through_the_cli_runner(app: Flask, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'dict.db'}"
    app.config["KEYSTILE"] = {"store": store, "argon2": FAST_ARGON2}
    result = invoke(app, "keys", "create", "--account", "a1", "--name", "runner", "--json", "-q")
    assert result.exit_code == 0, result.output
    created = json.loads(result.stdout)
    assert key_name(store, created["key"]["id"]) == "runner"
    listing = invoke(app, "keys", "list", "--all-accounts", "--json", "-q")
    assert listing.exit_code == 0, listing.output
    assert [k["id"] for k in json.loads(listing.stdout)["items"]] == [created["key"]["id"]]
    assert invoke(app, "keys", "show", "key_A1b2C3d4E5f6G7h8").exit_code == 3
    assert invoke(app, "keys", "create", "--account", "a b", "--name", "x").exit_code == 2


def test_the_dict_wins_over_flat_keys(app: Flask, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'dict.db'}"
    app.config["KEYSTILE"] = {"store": store, "argon2": FAST_ARGON2}
    app.config["KEYSTILE_STORE"] = f"sqlite:///{tmp_path / 'flat.db'}"
    assert app_settings(app) == {"store": store, "argon2": FAST_ARGON2}
    result = invoke(app, "keys", "create", "--account", "a1", "--name", "d", "--json", "-q")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "dict.db").exists() and not (tmp_path / "flat.db").exists()


def test_flat_keys_are_settings_only(app: Flask, tmp_path: Path) -> None:
    app.config.update(
        KEYSTILE_STORE="sqlite:///x.db",
        KEYSTILE_LOCAL_CACHE_SIZE=5,
        KEYSTILE_MANAGEMENT_PREFIX="/v1",  # not a setting of the engine: left alone
        KEYSTILE_NOT_A_SETTING=1,
    )
    assert app_settings(app) == {"store": "sqlite:///x.db", "local_cache_size": 5}
    app.config["KEYSTILE_LOCAL_CACHE_SIZE"] = "many"
    result = invoke(app, "check-config")
    assert result.exit_code == 2 and "local_cache_size" in result.output


def test_with_no_settings_in_the_app_the_environments_are_used(
    app: Flask, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As the extension would: Keystile() with no settings reads KEYSTILE_* variables.
    store = f"sqlite:///{tmp_path / 'env.db'}"
    monkeypatch.setenv("KEYSTILE_STORE", store)
    monkeypatch.setenv("KEYSTILE_ARGON2", json.dumps(FAST_ARGON2))
    assert app_settings(app) is None
    result = invoke(app, "keys", "create", "--account", "a1", "--name", "e", "--json")
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [f"keystile: store {store}"]
    assert key_name(store, json.loads(result.stdout)["key"]["id"]) == "e"


def test_the_extensions_engine_is_used_when_set_up(app: Flask, tmp_path: Path) -> None:
    from keystile.flask import Keystile as Extension

    store = f"sqlite:///{tmp_path / 'extension.db'}"
    extension = Extension(app, settings={"store": store, "argon2": FAST_ARGON2})
    try:
        result = invoke(app, "keys", "create", "--account", "a1", "--name", "ext", "--json")
        assert result.exit_code == 0, result.output
        assert "the project's own engine" in result.stderr
        created = json.loads(result.stdout)
        assert extension.engine.keys.get(created["key"]["id"]).name == "ext"
        # Still open for the app: the command does not close an engine it did not make.
        assert extension.engine.keys.list("a1").total == 1
    finally:
        extension.engine.close()


def test_the_extension_reads_the_same_flat_keys(tmp_path: Path) -> None:
    from keystile.flask import Keystile as Extension

    app = Flask("keystile_flat_extension")
    store = f"sqlite:///{tmp_path / 'flat_ext.db'}"
    app.config.update({"KEYSTILE_STORE": store, "KEYSTILE_ARGON2": FAST_ARGON2, "DEBUG": 1})
    engine = Extension(app).engine
    try:
        assert engine.settings.store == store and app_settings(app) == {
            "store": store,
            "argon2": FAST_ARGON2,
        }
    finally:
        engine.close()
