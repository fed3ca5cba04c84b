"""Monthly page quotas through KeystileMiddleware: RateLimit headers, 429s, cost(), charge(),
refunds, exempt paths. No Redis: the in-process meter, on the ``clock`` fixture's time."""

from __future__ import annotations

import base64
import dataclasses
import time
from collections.abc import Callable
from datetime import datetime, timezone

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from keystile import Keystile
from keystile._core.metering import ThresholdEvent
from keystile.starlette import KeystileMiddleware, cost, requires

from .conftest import Clock

UTC = timezone.utc
ACCOUNT = "acct_1"
#: The monthly policy's partition key: the account, as a structured-field byte sequence.
PK = f":{base64.b64encode(ACCOUNT.encode()).decode()}:"
SEPT_END = datetime(2026, 10, 1, tzinfo=UTC)
SEPT_SECONDS = 30 * 86400

Make = Callable[..., Keystile]


async def home(request: Request) -> Response:
    quota = request.state.principal.quota
    return JSONResponse({"used": quota.used, "remaining": quota.remaining, "limit": quota.limit})


@cost(3)
async def expensive(request: Request) -> Response:
    principal = request.state.principal
    return JSONResponse({"reserved": principal.meter.reserved, "used": principal.quota.used})


@cost(3)
def expensive_sync(request: Request) -> Response:
    principal = request.state.principal
    return JSONResponse({"reserved": principal.meter.reserved, "used": principal.quota.used})


@cost(4)
async def expensive_charged(request: Request) -> Response:
    request.state.principal.charge(int(request.query_params["n"]))
    return PlainTextResponse("ok")


async def charged(request: Request) -> Response:
    request.state.principal.charge(int(request.query_params["n"]))
    return PlainTextResponse("ok")


async def failing(request: Request) -> Response:
    return PlainTextResponse("upstream broke", status_code=int(request.query_params["s"]))


async def boom(request: Request) -> Response:
    raise RuntimeError("handler bug")


@requires("admin")
async def admin(request: Request) -> Response:
    return PlainTextResponse("admin")


async def health(request: Request) -> Response:
    has_principal = getattr(request.state, "principal", None) is not None
    return JSONResponse({"ok": True, "principal": has_principal})


def build(ks: Keystile) -> Starlette:
    return Starlette(
        routes=[
            Route("/", home),
            Route("/expensive", expensive),
            Route("/expensive-sync", expensive_sync),
            Route("/expensive-charged", expensive_charged),
            Route("/charged", charged),
            Route("/failing", failing),
            Route("/boom", boom),
            Route("/admin", admin),
            Route("/health", health),
            Route("/public/{rest:path}", health),
        ],
        middleware=[Middleware(KeystileMiddleware, keystile=ks)],
    )


@pytest.fixture
def ks(make_keystile: Make, clock: Clock) -> Keystile:
    return make_keystile(clock=clock, monthly_page_limit=10, exempt_paths=["/health", "/public/*"])


@pytest.fixture
def token(ks: Keystile) -> str:
    return ks.keys.create(ACCOUNT, "app", permissions=["jobs:read"]).token


@pytest.fixture
def client(ks: Keystile) -> TestClient:
    return TestClient(build(ks))


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def used(ks: Keystile) -> int:
    return ks.quotas.usage(ACCOUNT).pages


def use_up(client: TestClient, token: str, n: int) -> None:
    for _ in range(n):
        assert client.get("/", headers=auth(token)).status_code == 200


def seconds_left(clock: Clock) -> int:
    return int(SEPT_END.timestamp() - clock.now)


# -- headers ----------------------------------------------------------------------------------


def test_ratelimit_headers(client: TestClient, token: str, clock: Clock) -> None:
    response = client.get("/", headers=auth(token))
    assert response.status_code == 200
    assert response.json() == {"used": 1, "remaining": 9, "limit": 10}
    left = seconds_left(clock)
    assert left == 812800
    assert response.headers["ratelimit"] == f'"monthly";r=9;t={left};pk={PK}'
    assert response.headers["ratelimit-policy"] == f'"monthly";q=10;w={SEPT_SECONDS};pk={PK}'
    assert response.headers["x-ratelimit-limit"] == "10"
    assert response.headers["x-ratelimit-remaining"] == "9"
    assert response.headers["x-ratelimit-reset"] == str(int(SEPT_END.timestamp()))
    clock.advance(100)
    response = client.get("/", headers=auth(token))
    assert response.headers["ratelimit"] == f'"monthly";r=8;t={left - 100};pk={PK}'
    assert response.headers["x-ratelimit-remaining"] == "8"


def test_ratelimit_window_follows_the_period_length(make_keystile: Make, clock: Clock) -> None:
    clock.now = datetime(2027, 2, 10, tzinfo=UTC).timestamp()
    ks = make_keystile(clock=clock, monthly_page_limit=5)
    token = ks.keys.create(ACCOUNT, "app").token
    response = TestClient(build(ks)).get("/", headers=auth(token))
    assert response.headers["ratelimit-policy"] == f'"monthly";q=5;w={28 * 86400};pk={PK}'
    assert response.headers["ratelimit"] == f'"monthly";r=4;t={19 * 86400};pk={PK}'


def test_no_ratelimit_headers_when_unlimited(make_keystile: Make, clock: Clock) -> None:
    ks = make_keystile(clock=clock)  # monthly_page_limit=None
    token = ks.keys.create(ACCOUNT, "app").token
    response = TestClient(build(ks)).get("/", headers=auth(token))
    assert response.status_code == 200
    assert response.json() == {"used": 1, "remaining": None, "limit": None}
    for name in (
        "ratelimit",
        "ratelimit-policy",
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
    ):
        assert name not in response.headers
    assert used(ks) == 1  # still metered


def test_headers_reflect_the_route_cost(client: TestClient, token: str) -> None:
    response = client.get("/expensive", headers=auth(token))
    assert response.status_code == 200
    assert response.json() == {"reserved": 3, "used": 3}
    assert response.headers["x-ratelimit-remaining"] == "7"
    assert response.headers["ratelimit"].startswith('"monthly";r=7;')


# -- 429 --------------------------------------------------------------------------------------


def test_quota_exceeded_response(
    client: TestClient, ks: Keystile, token: str, clock: Clock
) -> None:
    use_up(client, token, 10)
    response = client.get("/", headers=auth(token))
    assert response.status_code == 429
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "error": {
            "code": "BILLING_001",
            "type": "quota_exceeded",
            "message": (
                "Monthly page limit of 10 pages exceeded; it resets at 2026-10-01T00:00:00Z."
            ),
        }
    }
    assert int(response.headers["content-length"]) == len(response.content)
    left = seconds_left(clock)
    assert response.headers["retry-after"] == str(left)
    assert response.headers["ratelimit"] == f'"monthly";r=0;t={left};pk={PK}'
    assert response.headers["x-ratelimit-remaining"] == "0"
    assert response.headers["cache-control"] == "no-store"
    assert "www-authenticate" not in response.headers
    assert used(ks) == 10


def test_the_next_period_admits_again(
    client: TestClient, ks: Keystile, token: str, clock: Clock
) -> None:
    use_up(client, token, 10)
    response = client.get("/", headers=auth(token))
    clock.advance(int(response.headers["retry-after"]))
    response = client.get("/", headers=auth(token))
    assert response.status_code == 200
    assert response.json() == {"used": 1, "remaining": 9, "limit": 10}


def test_per_key_limit_message(make_keystile: Make, clock: Clock) -> None:
    ks = make_keystile(clock=clock, monthly_page_limit=10)
    token = ks.keys.create(ACCOUNT, "app").token
    record = ks.store.get(token.split("_")[2])
    assert record is not None
    ks.store.replace(dataclasses.replace(record, page_limit=1, version="v2"), record.version)
    client = TestClient(build(ks))
    assert client.get("/", headers=auth(token)).status_code == 200
    response = client.get("/", headers=auth(token))
    assert response.status_code == 429
    assert response.json()["error"]["message"].startswith("This key's page limit of 1 pages")


# -- cost() -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/expensive", "/expensive-sync"])
def test_cost_reserves_the_route_cost(
    client: TestClient, ks: Keystile, token: str, path: str
) -> None:
    assert client.get(path, headers=auth(token)).json() == {"reserved": 3, "used": 3}
    assert used(ks) == 3
    assert client.get(path, headers=auth(token)).json() == {"reserved": 3, "used": 6}
    use_up(client, token, 1)  # 7 used, 3 left: exactly enough
    assert client.get(path, headers=auth(token)).status_code == 200
    assert used(ks) == 10


@pytest.mark.parametrize("path", ["/expensive", "/expensive-sync"])
def test_cost_429s_when_not_enough_is_left(
    client: TestClient, ks: Keystile, token: str, path: str
) -> None:
    use_up(client, token, 8)  # 2 left, the route costs 3
    response = client.get(path, headers=auth(token))
    assert response.status_code == 429
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["error"]["code"] == "BILLING_001"
    assert body["error"]["type"] == "quota_exceeded"
    assert "10 pages" in body["error"]["message"]
    assert int(response.headers["retry-after"]) >= 1
    use_up(client, token, 1)  # a cheap route still fits


@pytest.mark.parametrize("path", ["/expensive", "/expensive-sync"])
def test_a_request_refused_by_cost_is_not_charged(
    client: TestClient, ks: Keystile, token: str, path: str
) -> None:
    use_up(client, token, 8)
    assert client.get(path, headers=auth(token)).status_code == 429
    assert used(ks) == 8
    # retrying the refused route must not drain what is left either
    assert client.get(path, headers=auth(token)).status_code == 429
    assert used(ks) == 8
    use_up(client, token, 2)


def test_cost_with_a_reported_real_cost(client: TestClient, ks: Keystile, token: str) -> None:
    assert client.get("/expensive-charged?n=1", headers=auth(token)).status_code == 200
    assert used(ks) == 1  # 4 reserved, 1 charged
    assert client.get("/expensive-charged?n=6", headers=auth(token)).status_code == 200
    assert used(ks) == 7


@pytest.mark.parametrize("declared", [0, 1])
def test_a_route_cheaper_than_page_cost_pays_its_own_cost(
    make_keystile: Make, clock: Clock, declared: int
) -> None:
    ks = make_keystile(clock=clock, monthly_page_limit=10, page_cost=2)

    @cost(declared)
    async def cheap(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def reported(request: Request) -> Response:
        request.state.principal.charge(5)  # the handler's word wins over the declared cost
        return PlainTextResponse("ok")

    app = Starlette(
        routes=[Route("/cheap", cheap), Route("/reported", cost(declared)(reported))],
        middleware=[Middleware(KeystileMiddleware, keystile=ks)],
    )
    token = ks.keys.create(ACCOUNT, "app").token
    with TestClient(app) as client:
        assert client.get("/cheap", headers=auth(token)).status_code == 200
        assert used(ks) == declared
        assert client.get("/reported", headers=auth(token)).status_code == 200
        assert used(ks) == declared + 5


def test_cost_rejects_bad_pages() -> None:
    for bad in (-1, True, 1.5, "3"):
        with pytest.raises(ValueError):
            cost(bad)  # type: ignore[arg-type]


# -- settlement -------------------------------------------------------------------------------


def test_charge_settles_the_real_cost(client: TestClient, ks: Keystile, token: str) -> None:
    assert client.get("/charged?n=5", headers=auth(token)).status_code == 200
    assert used(ks) == 5
    assert client.get("/charged?n=0", headers=auth(token)).status_code == 200
    assert used(ks) == 5
    assert ks.quotas.usage(ACCOUNT).requests == 2


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_is_refunded(client: TestClient, ks: Keystile, token: str, status: int) -> None:
    response = client.get(f"/failing?s={status}", headers=auth(token))
    assert response.status_code == status
    assert used(ks) == 0
    response = client.get("/charged?n=9", headers=auth(token))  # the allowance is intact
    assert used(ks) == 9


def test_4xx_from_the_handler_is_counted(client: TestClient, ks: Keystile, token: str) -> None:
    assert client.get("/failing?s=404", headers=auth(token)).status_code == 404
    assert client.get("/no-such-route", headers=auth(token)).status_code == 404
    assert used(ks) == 2


def test_an_unhandled_exception_is_refunded(ks: Keystile, token: str) -> None:
    client = TestClient(build(ks), raise_server_exceptions=False)
    response = client.get("/boom", headers=auth(token))
    assert response.status_code == 500
    assert used(ks) == 0
    assert client.get("/", headers=auth(token)).json()["used"] == 1


def test_an_unhandled_exception_is_refunded_when_it_propagates(
    client: TestClient, ks: Keystile, token: str
) -> None:
    with pytest.raises(RuntimeError, match="handler bug"):
        client.get("/boom", headers=auth(token))
    assert used(ks) == 0


def test_a_missing_permission_is_a_403(client: TestClient, token: str) -> None:
    response = client.get("/admin", headers=auth(token))
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "AUTH_004"
    assert response.headers["content-type"] == "application/json"


def test_a_requires_403_is_refunded(client: TestClient, ks: Keystile, token: str) -> None:
    assert client.get("/admin", headers=auth(token)).status_code == 403
    assert used(ks) == 0


def test_refused_credentials_are_never_charged(
    client: TestClient, ks: Keystile, token: str
) -> None:
    assert client.get("/").status_code == 401
    bad = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert client.get("/", headers=auth(bad)).status_code == 401
    assert used(ks) == 0


def test_idempotency_key_through_the_middleware(
    client: TestClient, ks: Keystile, token: str
) -> None:
    headers = {**auth(token), "Idempotency-Key": "order-9"}
    assert client.get("/charged?n=2", headers=headers).status_code == 200
    assert client.get("/charged?n=2", headers=headers).status_code == 200
    assert used(ks) == 2
    failed = {**auth(token), "Idempotency-Key": "order-10"}
    assert client.get("/failing?s=500", headers=failed).status_code == 500
    assert client.get("/charged?n=1", headers=failed).status_code == 200  # retried: charged
    assert used(ks) == 3


# -- exempt paths -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/health", "/public/docs", "/public/a/b"])
def test_exempt_paths_are_not_metered(
    client: TestClient, ks: Keystile, token: str, path: str
) -> None:
    anonymous = client.get(path)
    assert anonymous.status_code == 200
    assert anonymous.json() == {"ok": True, "principal": False}
    with_key = client.get(path, headers=auth(token))
    assert with_key.status_code == 200
    assert with_key.json() == {"ok": True, "principal": False}
    for response in (anonymous, with_key):
        assert "ratelimit" not in response.headers
        assert "x-ratelimit-limit" not in response.headers
    assert used(ks) == 0
    assert ks.quotas.usage(ACCOUNT).requests == 0


def test_exempt_paths_work_when_the_quota_is_used_up(client: TestClient, token: str) -> None:
    use_up(client, token, 10)
    assert client.get("/", headers=auth(token)).status_code == 429
    assert client.get("/health", headers=auth(token)).status_code == 200


# -- thresholds -------------------------------------------------------------------------------


def test_threshold_hook_fires_once_through_the_middleware(
    make_keystile: Make, clock: Clock
) -> None:
    events: list[ThresholdEvent] = []
    ks = make_keystile(clock=clock, monthly_page_limit=10, on_quota_threshold=events.append)
    token = ks.keys.create(ACCOUNT, "app").token
    with TestClient(build(ks)) as client:
        use_up(client, token, 9)
        deadline = time.monotonic() + 5
        while not events and time.monotonic() < deadline:
            time.sleep(0.01)
    assert [(e.threshold, e.used, e.period) for e in events] == [(0.8, 8, "2026-09")]
