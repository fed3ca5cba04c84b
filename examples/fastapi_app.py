"""A FastAPI API protected by keystile; /docs and /redoc show how to call it.

    pip install 'keystile[fastapi,demo]'
    keystile keys create --account acct_1 --name "my laptop" -p "jobs:*"   # prints a token once
    uvicorn examples.fastapi_app:app
    curl localhost:8000/jobs -H "x-api-key: <token>"
"""

from fastapi import Depends, FastAPI, Request

from keystile import Principal
from keystile.fastapi import KeystileMiddleware, cost, document, get_principal, require

app = FastAPI(title="Jobs API")
app.add_middleware(
    KeystileMiddleware,
    settings={
        "store": "sqlite:///keystile.db",
        # The docs pages, and the document they read, need no key.
        "exempt_paths": ["/docs", "/redoc", "/openapi.json", "/health"],
        "monthly_page_limit": 1000,
    },
)


@app.get("/health")
def health() -> dict[str, bool]:
    return {"ok": True}


@app.get("/whoami")
def whoami(principal: Principal = Depends(get_principal)) -> dict[str, object]:
    quota = principal.quota
    return {
        "key_id": principal.key_id,
        "account_id": principal.account_id,
        "remaining_pages": quota.remaining if quota else None,
    }


@app.get("/jobs")
def list_jobs(principal: Principal = Depends(require("jobs:read"))) -> dict[str, object]:
    return {"account": principal.account_id, "jobs": []}


@app.post("/extract", dependencies=[Depends(cost(5))])
def extract(
    request: Request, principal: Principal = Depends(require("jobs:write"))
) -> dict[str, int]:
    principal.charge(3)  # the real cost, settled after the response
    return {"pages": 3}


document(app)  # 401/403/429, each route's permissions, and x-api-key (key id) + x-api-secret
