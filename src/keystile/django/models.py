"""The tables of the ``django://`` store: keys, monthly usage, account limits, the audit log
and login sessions.

Rows are written through :class:`keystile.django.store.DjangoStore` (the engine's store), never
edited directly: a change must get a new state version and reach Redis, which only
:class:`keystile._services.keys.KeyManager` (``engine.keys``) does.
"""

from __future__ import annotations

from django.db import models  # type: ignore[import-untyped,unused-ignore]

from keystile._core.tokens import KEY_ID_PREFIX, mask


class Key(models.Model):  # type: ignore[misc,unused-ignore]
    kid = models.CharField("key id", max_length=32, primary_key=True)
    token_prefix = models.CharField(max_length=12)
    last4 = models.CharField(max_length=4)
    name = models.CharField(max_length=200)
    account_id = models.CharField("account", max_length=128)
    owner = models.CharField(max_length=200, null=True, blank=True)
    permissions = models.JSONField(default=list)
    environment = models.CharField(max_length=16)
    accounts = models.JSONField("extra accounts", default=list)
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    enabled = models.BooleanField(default=True)
    meta = models.JSONField(default=dict)
    secret_hash = models.CharField(max_length=255)
    previous_hash = models.CharField(max_length=255, null=True, blank=True)
    previous_expires_at = models.DateTimeField(null=True, blank=True)
    version = models.CharField(max_length=32)
    page_limit = models.BigIntegerField(null=True, blank=True)
    allowed_ips = models.JSONField("allowed networks", default=list, blank=True)
    rate_limit = models.CharField(max_length=32, null=True, blank=True)

    class Meta:
        db_table = "keystile_keys"
        verbose_name = "API key"
        verbose_name_plural = "API keys"
        ordering = ("-created_at", "-kid")
        indexes = (
            models.Index(
                fields=["account_id", "-created_at", "-kid"], name="keystile_keys_account"
            ),
        )

    def __str__(self) -> str:
        return f"{self.name} ({self.preview})"

    @property
    def key_id(self) -> str:
        return KEY_ID_PREFIX + str(self.kid)

    @property
    def preview(self) -> str:
        return mask(str(self.token_prefix), str(self.environment), str(self.last4))


class Usage(models.Model):  # type: ignore[misc,unused-ignore]
    id = models.BigAutoField(primary_key=True)
    account_id = models.CharField(max_length=128)
    period = models.CharField(max_length=16)
    environment = models.CharField(max_length=16)
    kid = models.CharField(max_length=32)
    pages = models.BigIntegerField(default=0)
    requests = models.BigIntegerField(default=0)

    class Meta:
        db_table = "keystile_usage"
        verbose_name = "monthly usage"
        verbose_name_plural = "monthly usage"
        constraints = (
            models.UniqueConstraint(
                fields=["account_id", "period", "environment", "kid"],
                name="keystile_usage_unique",
            ),
        )

    def __str__(self) -> str:
        return f"{self.account_id} {self.period} {self.environment} {self.kid}"


class Limit(models.Model):  # type: ignore[misc,unused-ignore]
    account_id = models.CharField(max_length=128, primary_key=True)
    pages = models.BigIntegerField(null=True, blank=True)
    plan = models.CharField(max_length=64, null=True, blank=True)
    rate = models.CharField("rate limit", max_length=32, null=True, blank=True)

    class Meta:
        db_table = "keystile_limits"
        verbose_name = "account limit"

    def __str__(self) -> str:
        return str(self.account_id)


class AuditEntry(models.Model):  # type: ignore[misc,unused-ignore]
    id = models.BigAutoField(primary_key=True)
    at = models.DateTimeField()
    account_id = models.CharField(max_length=128)
    actor = models.CharField(max_length=200)
    action = models.CharField(max_length=32)
    target = models.CharField(max_length=64, null=True, blank=True)
    details = models.JSONField(default=dict)

    class Meta:
        db_table = "keystile_audit"
        verbose_name = "audit entry"
        verbose_name_plural = "audit log"
        indexes = (models.Index(fields=["account_id", "-id"], name="keystile_audit_account"),)

    def __str__(self) -> str:
        return f"{self.at} {self.actor} {self.action} {self.target or self.account_id}"


class Session(models.Model):  # type: ignore[misc,unused-ignore]
    sid = models.CharField(max_length=32, primary_key=True)
    kid = models.CharField(max_length=32)
    account_id = models.CharField(max_length=128)
    secret_digest = models.CharField(max_length=128)
    key_hash_fingerprint = models.CharField(max_length=128)
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    idle_timeout = models.FloatField()
    last_seen_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "keystile_sessions"
        verbose_name = "login session"

    def __str__(self) -> str:
        return str(self.sid)


__all__ = ["AuditEntry", "Key", "Limit", "Session", "Usage"]
