"""examples/django_project: its settings pass the checks, its views work in-process, and
``python manage.py runserver`` serves it with a key from the CLI's default store."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytest.importorskip("django")

from .djangoproj import settings as project

project.configure()

from django.test import Client, override_settings  # noqa: E402

from keystile import Keystile  # noqa: E402
from keystile._core.settings import load_settings  # noqa: E402

from .conftest import FAST_ARGON2  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "django_project"


@pytest.fixture
def example(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    monkeypatch.syspath_prepend(str(EXAMPLE))
    settings = importlib.import_module("exampleproj.settings")
    yield settings
    for name in [n for n in sys.modules if n == "exampleproj" or n.startswith("exampleproj.")]:
        del sys.modules[name]


def test_the_example_settings_are_valid(example: Any) -> None:
    assert "keystile.django" in example.INSTALLED_APPS
    assert "keystile.django.KeystileMiddleware" in example.MIDDLEWARE
    settings = load_settings(example.KEYSTILE)
    assert settings.store == "sqlite:///keystile.db"  # the CLI's default: its keys work


def test_the_example_views_in_process(example: Any, tmp_path: Path) -> None:
    engine = Keystile(
        {**example.KEYSTILE, "store": f"sqlite:///{tmp_path}/keystile.db", "argon2": FAST_ARGON2}
    )
    token = engine.keys.create("acct_1", "example", permissions=["jobs:*"]).token
    usage_token = engine.keys.create("acct_1", "usage", permissions=["usage:read"]).token
    client = Client()
    try:
        with override_settings(
            ROOT_URLCONF="exampleproj.urls", MIDDLEWARE=example.MIDDLEWARE, KEYSTILE=engine
        ):
            assert client.get("/health").json() == {"ok": True}
            assert client.get("/jobs").json()["error"]["code"] == "AUTH_001"
            response = client.get("/jobs", headers={"Authorization": f"Bearer {token}"})
            assert response.json() == {"account": "acct_1", "jobs": []}
            assert response["x-ratelimit-limit"] == "1000"
            response = client.post("/extract", headers={"x-api-key": token})
            assert response.json() == {"pages": 3}
            assert client.get("/extract", headers={"x-api-key": token}).status_code == 405
            refused = client.get("/usage", headers={"x-api-key": token})
            assert refused.json()["error"]["code"] == "AUTH_004"
            report = client.get("/usage", headers={"x-api-key": usage_token}).json()
            # /jobs 1, /extract 3, the 405 answered by the app 1 (4xx count), the refusal 0,
            # /usage itself 1.
            assert report["pages"] == 1 + 3 + 1 + 0 + 1 and report["limit"] == 1000
    finally:
        engine.close()


def _get(url: str, headers: dict[str, str]) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_manage_py_runserver_serves_the_example(tmp_path: Path) -> None:
    engine = Keystile({"store": f"sqlite:///{tmp_path}/keystile.db"})
    token = engine.keys.create("acct_1", "cli key", permissions=["jobs:*"]).token
    engine.close()
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    src = str(ROOT / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    check = subprocess.run(
        [sys.executable, str(EXAMPLE / "manage.py"), "check"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert check.returncode == 0 and "no issues" in check.stdout, check.stderr
    server = subprocess.Popen(
        [sys.executable, str(EXAMPLE / "manage.py"), "runserver", f"127.0.0.1:{port}",
         "--noreload"],
        cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status, body = _get(f"{base}/health", {})
                break
            except (urllib.error.URLError, ConnectionError):
                assert server.poll() is None, "runserver exited"
                assert time.monotonic() < deadline, "runserver did not answer"
                time.sleep(0.1)
        assert status == 200
        status, body = _get(f"{base}/jobs", {"Authorization": f"Bearer {token}"})
        assert status == 200 and '"account": "acct_1"' in body
        status, body = _get(f"{base}/jobs", {})
        assert status == 401 and "AUTH_001" in body
        # runserver drops underscore header names: X_Api_Key never reaches keystile.
        status, body = _get(f"{base}/jobs", {"X_Api_Key": token})
        assert status == 401 and "AUTH_001" in body
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
