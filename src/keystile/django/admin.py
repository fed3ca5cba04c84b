"""The admin for the ``django://`` store: list keys (masked), create one (token shown once),
revoke. Every change goes through the engine's key manager (``engine.keys``), which
bumps the key's state version and tells Redis, so a revocation is enforced at once in every
process; rows are never edited directly, and keys are not deleted here (revoked keys stay for
audit).

The token is shown on the page that answers the "add" form and nowhere else: it is not put
in a message (messages live in a cookie or the session until shown) nor logged.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django import forms  # type: ignore[import-untyped,unused-ignore]
from django.contrib import admin, messages  # type: ignore[import-untyped,unused-ignore]
from django.template.response import TemplateResponse  # type: ignore[import-untyped,unused-ignore]
from django.urls import reverse  # type: ignore[import-untyped,unused-ignore]

from keystile._core.errors import BackendError, InvalidInput, KeystileError
from keystile._core.keyfields import (
    check_account,
    check_expiry,
    check_name,
    check_networks,
    check_page_limit,
    check_permissions,
)
from keystile._core.ratelimits import check_rate_limit
from keystile.django.conf import get_engine
from keystile.django.models import Key
from keystile.django.store import DjangoStore, from_db

CREATED_TEMPLATE = "keystile/admin/created_key.html"
_TOKEN_ATTR = "_keystile_created"


def actor_of(request: Any) -> str:
    """Who the audit log says acted: the admin user."""
    return f"django-admin:{request.user.get_username()}"


def _split(text: str) -> list[str]:
    return [part for part in text.replace(",", " ").split() if part]


class KeyCreateForm(forms.ModelForm):  # type: ignore[misc,unused-ignore]
    """What a person chooses for a new key; keystile makes the id, secret and hash."""

    permissions_text = forms.CharField(
        label="Permissions",
        required=False,
        help_text="Separated by spaces or commas; * is a wildcard (e.g. jobs:* or *).",
    )
    accounts_text = forms.CharField(
        label="Extra accounts",
        required=False,
        help_text="Other account ids this key may act for (x-account-id).",
    )
    allowed_ips_text = forms.CharField(
        label="Allowed networks",
        required=False,
        help_text="CIDRs the key may be used from, e.g. 203.0.113.0/24 2001:db8::/32; "
        "empty: anywhere.",
    )
    environment = forms.ChoiceField(choices=())

    class Meta:
        model = Key
        fields = (
            "name", "account_id", "environment", "owner", "expires_at", "page_limit", "rate_limit"
        )  # fmt: skip

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        environments = get_engine().settings.environments
        self.fields["environment"].choices = [(env, env) for env in environments]
        self.fields["environment"].initial = environments[0]

    def _check(self, field: str, check: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return check(*args, **kwargs)
        except InvalidInput as exc:
            self.add_error(field, str(exc).split(": ", 1)[-1])
            return None

    def clean(self) -> dict[str, Any]:
        data: dict[str, Any] = super().clean()
        engine = get_engine()
        if "name" in data:
            self._check("name", check_name, data["name"])
        if "account_id" in data:
            self._check("account_id", check_account, "account_id", data["account_id"])
        data["permissions"] = self._check(
            "permissions_text", check_permissions, _split(data.get("permissions_text") or "")
        )
        accounts = _split(data.get("accounts_text") or "")
        for account in accounts:
            self._check("accounts_text", check_account, "accounts", account)
        data["accounts"] = accounts
        expires_at: datetime | None = data.get("expires_at")
        if expires_at is not None:
            self._check("expires_at", check_expiry, expires_at, engine.now(), future=True)
        self._check("page_limit", check_page_limit, data.get("page_limit"))
        data["rate_limit"] = self._check(
            "rate_limit", check_rate_limit, "rate_limit", data.get("rate_limit") or None
        )
        data["allowed_ips"] = self._check(
            "allowed_ips_text",
            check_networks,
            "allowed_ips",
            _split(data.get("allowed_ips_text") or ""),
        )
        return data


@admin.register(Key)
class KeyAdmin(admin.ModelAdmin):  # type: ignore[misc,unused-ignore]
    list_display = (
        "name",
        "key_id",
        "preview",
        "account_id",
        "environment",
        "status",
        "created_at",
        "last_used_at",
    )
    list_filter = ("environment", "enabled")
    search_fields = ("name", "account_id", "kid")
    ordering = ("-created_at", "-kid")
    actions = ("revoke_keys",)
    detail_fields = (
        "key_id",
        "preview",
        "name",
        "account_id",
        "accounts",
        "owner",
        "environment",
        "permissions",
        "status",
        "enabled",
        "created_at",
        "expires_at",
        "last_used_at",
        "revoked_at",
        "page_limit",
        "allowed_ips",
        "rate_limit",
        "meta",
    )

    @admin.display(description="key id")  # type: ignore[untyped-decorator,misc,unused-ignore]
    def key_id(self, obj: Key) -> str:
        return str(obj.key_id)

    @admin.display(description="key")  # type: ignore[untyped-decorator,misc,unused-ignore]
    def preview(self, obj: Key) -> str:
        return str(obj.preview)

    @admin.display(description="status")  # type: ignore[untyped-decorator,misc,unused-ignore]
    def status(self, obj: Key) -> str:
        engine = get_engine()
        now = engine.now()
        if obj.revoked_at is not None:
            return "revoked"
        expires_at = from_db(obj.expires_at)
        if expires_at is not None and expires_at <= now:
            return "expired"
        return "active" if obj.enabled else "disabled"

    # -- create: through the engine, token shown once ----------------------------------------

    def get_form(self, request: Any, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        if obj is None:
            kwargs["form"] = KeyCreateForm
            kwargs["fields"] = None
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request: Any, obj: Any = None) -> Any:
        if obj is None:
            return (
                "name",
                "account_id",
                "environment",
                "permissions_text",
                "accounts_text",
                "owner",
                "expires_at",
                "page_limit",
                "rate_limit",
                "allowed_ips_text",
            )
        return self.detail_fields

    def get_readonly_fields(self, request: Any, obj: Any = None) -> Any:
        return () if obj is None else self.detail_fields

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False  # keys change through the engine: revoke (action), or keystile's API/CLI

    def has_delete_permission(self, request: Any, obj: Any = None) -> bool:
        return False  # revoked keys stay for audit; deleting rows would bypass Redis

    def has_revoke_permission(self, request: Any) -> bool:
        return bool(request.user.has_perm("keystile.change_key"))

    def save_model(self, request: Any, obj: Key, form: Any, change: bool) -> None:
        if change:
            raise PermissionError("keys are changed through keystile, not the admin form")
        engine = get_engine()
        if not isinstance(engine.store, DjangoStore):
            raise KeystileError("the admin creates keys only with KEYSTILE['store'] = 'django://'")
        data = form.cleaned_data
        created = engine.keys.create(
            data["account_id"],
            data["name"],
            permissions=data["permissions"],
            environment=data["environment"],
            expires_at=data.get("expires_at"),
            owner=data.get("owner") or None,
            accounts=data["accounts"],
            page_limit=data.get("page_limit"),
            allowed_ips=data.get("allowed_ips") or (),
            rate_limit=data.get("rate_limit"),
            actor=actor_of(request),
        )
        obj.kid = created.key_id.removeprefix("key_")
        obj.refresh_from_db()
        setattr(obj, _TOKEN_ATTR, created)

    def save_related(self, request: Any, form: Any, formsets: Any, change: bool) -> None:
        """Nothing related: the key was written by the engine."""

    def response_add(self, request: Any, obj: Key, post_url_continue: Any = None) -> Any:
        created = getattr(obj, _TOKEN_ATTR, None)
        if created is None:
            return super().response_add(request, obj, post_url_continue)
        opts = self.model._meta
        context = {
            **self.admin_site.each_context(request),
            "title": "API key created",
            "opts": opts,
            "key": created.key,
            "token": created.token,
            "changelist_url": reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"),
            "add_url": reverse(f"admin:{opts.app_label}_{opts.model_name}_add"),
        }
        response = TemplateResponse(request, CREATED_TEMPLATE, context)
        response["Cache-Control"] = "no-store"
        return response

    # -- revoke ------------------------------------------------------------------------------

    @admin.action(  # type: ignore[untyped-decorator,misc,unused-ignore]
        description="Revoke selected API keys", permissions=["revoke"]
    )
    def revoke_keys(self, request: Any, queryset: Any) -> None:
        engine = get_engine()
        revoked = 0
        for key in queryset:
            try:
                engine.keys.revoke(key.key_id, actor=actor_of(request))
            except BackendError as exc:  # saved, but Redis could not be told
                self.message_user(request, f"{key.key_id}: {exc}", messages.WARNING)
            except KeystileError as exc:
                self.message_user(request, f"{key.key_id}: {exc}", messages.ERROR)
                continue
            revoked += 1
        if revoked:
            self.message_user(request, f"Revoked {revoked} API key(s).", messages.SUCCESS)
