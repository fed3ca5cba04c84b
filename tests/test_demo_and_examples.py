"""The demo command and the Starlette/FastAPI examples work as their docs say."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from keystile import Keystile

ROOT = Path(__file__).resolve().parent.parent


def get(url: str, headers: dict[str, str]) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_demo_prints_a_key_that_works(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "keystile", "demo", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any("Ctrl+C" in line for line in lines):
            lines.append(process.stdout.readline())
        text = "".join(lines)
        match = re.search(r"Your demo key \(shown once\):\s+(sk_live_\S+)", text)
        assert match, text
        token = match.group(1)
        port = re.search(r"http://127\.0\.0\.1:(\d+)/", text).group(1)  # type: ignore[union-attr]
        assert (
            f'curl -s http://127.0.0.1:{port}/v1/whoami -H "Authorization: Bearer {token}"' in text
        )
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):  # the server starts right after printing
            try:
                status, body = get(f"{base}/v1/whoami", {"Authorization": f"Bearer {token}"})
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        assert status == 200 and '"account_id":"acct_demo"' in body
        status, body = get(f"{base}/v1/whoami", {})
        assert status == 401 and "AUTH_001" in body
        status, body = get(f"{base}/v1/whoami", {"x-api-key": "sk_live_not_a_real_key"})
        assert status == 401 and "AUTH_002" in body
        status, body = get(f"{base}/v1/admin", {"x-api-key": token})
        assert status == 403 and "AUTH_004" in body
        status, body = get(f"{base}/manage/usage", {"x-api-key": token})
        assert status == 200 and '"account_id":"acct_demo"' in body
        key_id = re.search(r"x-api-key: (key_\w+)", text).group(1)  # type: ignore[union-attr]
        secret = re.search(r"x-api-secret: (\w+)", text).group(1)  # type: ignore[union-attr]
        login = urllib.request.Request(
            f"{base}/manage/auth/login",
            method="POST",
            headers={"x-api-key": key_id, "x-api-secret": secret},
        )
        with urllib.request.urlopen(login, timeout=10) as response:
            assert response.status == 200 and b'"token":"sk_sess_' in response.read()
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def test_the_demo_refuses_a_busy_port_before_making_a_key(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "keystile", "demo", "--port", str(port)],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=60,
        )
    assert result.returncode == 1
    assert "sk_live_" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "--port" in result.stderr


@pytest.mark.parametrize("module", ["starlette_app", "fastapi_app"])
def test_examples_serve_with_a_key(
    module: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the examples use sqlite:///keystile.db in the working dir
    monkeypatch.syspath_prepend(str(ROOT))
    example = __import__(f"examples.{module}", fromlist=["app"])
    engine = Keystile({"store": "sqlite:///keystile.db"})
    token = engine.keys.create("acct_1", "example", permissions=["jobs:*"]).token
    engine.close()
    with TestClient(example.app) as client:
        assert client.get("/health").status_code == 200
        assert client.get("/jobs").json()["error"]["code"] == "AUTH_001"
        response = client.get("/jobs", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200 and response.json()["account"] == "acct_1"
        assert response.headers["x-ratelimit-limit"] == "1000"
        response = client.post("/extract", headers={"x-api-key": token})
        assert response.status_code == 200 and response.json() == {"pages": 3}
    sys.modules.pop(f"examples.{module}", None)
