"""The managers behind ``ks.keys``, ``ks.quotas``, ``ks.audit`` and ``ks.sessions``."""
