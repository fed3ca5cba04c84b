"""A Flask API protected by keystile.

    pip install keystile flask
    keystile keys create --account acct_1 --name "my laptop" -p "jobs:*"   # prints a token once
    flask --app examples.flask_app run
    curl localhost:5000/jobs -H "Authorization: Bearer <token>"
"""

from flask import Flask, g

from keystile.flask import Keystile, cost, requires

app = Flask(__name__)
app.config["KEYSTILE"] = {
    "store": "sqlite:///keystile.db",  # the CLI's default store, so its keys work here
    "exempt_paths": ["/health"],
    "monthly_page_limit": 1000,
}
keystile = Keystile(app)


@app.get("/health")
def health() -> dict[str, bool]:
    return {"ok": True}


@app.get("/jobs")
@requires("jobs:read")
def list_jobs() -> dict[str, object]:
    return {"account": g.principal.account_id, "jobs": []}


@app.post("/extract")
@requires("jobs:write")
@cost(5)
def extract() -> dict[str, int]:
    pages = 3  # the real work turned out cheaper than the declared 5
    g.principal.charge(pages)
    return {"pages": pages}
