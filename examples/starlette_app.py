"""A Starlette API protected by keystile.

    pip install 'keystile[demo]'
    keystile keys create --account acct_1 --name "my laptop" -p "jobs:*"   # prints a token once
    uvicorn examples.starlette_app:app
    curl localhost:8000/jobs -H "Authorization: Bearer <token>"
"""

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from keystile.starlette import KeystileMiddleware, cost, requires

KEYSTILE = {
    "store": "sqlite:///keystile.db",  # the CLI's default store, so its keys work here
    "exempt_paths": ["/health"],
    "monthly_page_limit": 1000,
}


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


@requires("jobs:read")
async def list_jobs(request: Request) -> JSONResponse:
    principal = request.state.principal
    return JSONResponse({"account": principal.account_id, "jobs": []})


@requires("jobs:write")
@cost(5)
async def extract(request: Request) -> JSONResponse:
    pages = 3  # the real work turned out cheaper than the declared 5
    request.state.principal.charge(pages)
    return JSONResponse({"pages": pages})


app = Starlette(
    routes=[
        Route("/health", health),
        Route("/jobs", list_jobs),
        Route("/extract", extract, methods=["POST"]),
    ]
)
app.add_middleware(KeystileMiddleware, settings=KEYSTILE)
