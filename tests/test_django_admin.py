"""The admin for the ``django://`` store: masked list, create with the token shown once (and
kept nowhere else), revoke through the engine (Redis told), no edit or delete of rows."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("django")

from .djangoproj import settings as project

project.setup_database()

from django.contrib.auth.models import User  # noqa: E402
from django.test import Client, override_settings  # noqa: E402

from keystile import Keystile  # noqa: E402
from keystile._core.errors import AuthError  # noqa: E402
from keystile.django import get_engine  # noqa: E402

from .conftest import FAST_ARGON2  # noqa: E402
from .test_django_store import clear_tables  # noqa: E402

LIST_URL = "/admin/keystile/key/"
ADD_URL = "/admin/keystile/key/add/"
DJANGO_STORE = {"store": "django://", "argon2": FAST_ARGON2, "exempt_paths": ["/admin/*"]}


@pytest.fixture
def admin_client() -> Iterator[Client]:
    clear_tables()
    User.objects.filter(username="root").delete()
    user = User.objects.create_superuser("root", "root@example.com", "pw")
    client = Client()
    client.force_login(user)
    with override_settings(KEYSTILE=DJANGO_STORE):
        yield client
    clear_tables()
    user.delete()


def create_form(**fields: Any) -> dict[str, Any]:
    return {
        "name": "CI deploys",
        "account_id": "acct-1",
        "environment": "live",
        "permissions_text": "jobs:read, jobs:write",
        "accounts_text": "",
        "owner": "ops@example.com",
        "expires_at_0": "",
        "expires_at_1": "",
        "page_limit": "",
        **fields,
    }


def test_add_shows_the_token_once_and_keeps_it_nowhere(admin_client: Client) -> None:
    response = admin_client.post(ADD_URL, create_form())
    assert response.status_code == 200, response.content[:2000]
    assert "no-store" in response["Cache-Control"]
    token = response.context["token"]
    assert token.startswith("sk_live_") and token.encode() in response.content
    engine = get_engine()
    [key] = engine.keys.list("acct-1").items
    assert key.name == "CI deploys" and key.permissions == ("jobs:read", "jobs:write")
    assert key.owner == "ops@example.com"
    principal = engine.authenticate([("authorization", f"Bearer {token}")])
    assert principal.key_id == key.id
    [entry] = engine.audit.list("acct-1").items
    assert (entry.action, entry.actor, entry.target) == ("key.create", "django-admin:root", key.id)
    # Not in a cookie, the session or a message; not on the list page.
    assert all(token not in morsel.value for morsel in response.cookies.values())
    assert token not in str(dict(admin_client.session))
    listing = admin_client.get(LIST_URL)
    assert listing.status_code == 200
    assert token.encode() not in listing.content
    assert key.preview.encode() in listing.content  # the masked form: sk_live_…abcd
    assert b"argon2" not in listing.content
    detail = admin_client.get(f"{LIST_URL}{key.id.removeprefix('key_')}/change/")
    assert detail.status_code == 200
    assert token.encode() not in detail.content and b"argon2" not in detail.content


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("account_id", "has spaces"),
        ("permissions_text", "ok bad!perm"),
        ("accounts_text", "fine no/t-fine!"),
        ("page_limit", "-1"),
        ("expires_at_0", "2001-01-01"),
    ],
)
def test_bad_input_is_a_form_error(admin_client: Client, field: str, value: str) -> None:
    fields = create_form(**{field: value})
    if field == "expires_at_0":
        fields["expires_at_1"] = "00:00:00"
    response = admin_client.post(ADD_URL, fields)
    assert response.status_code == 200
    assert response.context["adminform"].form.errors, field
    assert "token" not in response.context
    assert get_engine().keys.list("acct-1").total == 0


def test_revoke_action_goes_through_the_engine(admin_client: Client) -> None:
    engine = get_engine()
    keys = [engine.keys.create("acct-1", f"k{i}", permissions=["read"]) for i in range(3)]
    for created in keys:
        engine.authenticate([("x-api-key", created.token)])  # cached by the engine
    chosen = [k.key_id.removeprefix("key_") for k in keys[:2]]
    response = admin_client.post(
        LIST_URL, {"action": "revoke_keys", "_selected_action": chosen}, follow=True
    )
    assert b"Revoked 2 API key(s)." in response.content
    for created in keys[:2]:
        assert engine.keys.get(created.key_id).revoked_at is not None
        with pytest.raises(AuthError) as refused:
            engine.authenticate([("x-api-key", created.token)])
        assert refused.value.code == "AUTH_003"
    assert engine.keys.get(keys[2].key_id).revoked_at is None
    revokes = engine.audit.list("acct-1", action="key.revoke").items
    assert {e.target for e in revokes} == {k.key_id for k in keys[:2]}
    assert {e.actor for e in revokes} == {"django-admin:root"}


@pytest.mark.redis
def test_revoke_from_the_admin_reaches_other_processes(
    redis_settings: dict[str, Any],
) -> None:
    clear_tables()
    User.objects.filter(username="root").delete()
    user = User.objects.create_superuser("root", "root@example.com", "pw")
    settings = {**DJANGO_STORE, **redis_settings}
    other = Keystile(settings)  # another process's engine, on the same DB and Redis
    try:
        with override_settings(KEYSTILE=settings):
            client = Client()
            client.force_login(user)
            created = get_engine().keys.create("acct-1", "shared", permissions=["read"])
            headers = [("x-api-key", created.token)]
            other.settle(other.authenticate(headers), 200)  # cached in `other`
            response = client.post(
                LIST_URL,
                {"action": "revoke_keys", "_selected_action": [created.key_id[4:]]},
                follow=True,
            )
            assert b"Revoked 1 API key(s)." in response.content
        with pytest.raises(AuthError) as refused:
            other.authenticate(headers)
        assert refused.value.code == "AUTH_003"
    finally:
        other.close()
        clear_tables()
        user.delete()


def test_rows_are_not_edited_or_deleted_here(admin_client: Client) -> None:
    created = get_engine().keys.create("acct-1", "k", permissions=["read"])
    kid = created.key_id.removeprefix("key_")
    assert admin_client.get(f"{LIST_URL}{kid}/delete/").status_code == 403
    response = admin_client.post(f"{LIST_URL}{kid}/change/", {"name": "hacked"})
    assert response.status_code == 403
    assert get_engine().keys.get(created.key_id).name == "k"


def test_the_admin_refuses_to_create_keys_in_another_store(admin_client: Client) -> None:
    with (
        override_settings(KEYSTILE={**DJANGO_STORE, "store": "memory://"}),
        pytest.raises(Exception, match="django://"),
    ):
        admin_client.post(ADD_URL, create_form())
