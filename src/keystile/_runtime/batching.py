"""What requests leave to be written later, in batches: last-use times, session use, usage
charges, lease reports, and the counter changes Redis did not confirm."""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timezone

from keystile._backends.backends import Backends
from keystile._core.admission import Admission
from keystile._core.errors import BackendError
from keystile._core.rediskeys import CALL_MARKER_TTL
from keystile._core.resends import FIRST, Resend
from keystile._core.store import UsageDelta
from keystile._core.verification import Verifier
from keystile._runtime.flusher import Flusher

log = logging.getLogger("keystile")
Counter = tuple[str, str, str]


class BatchedWrites:
    def __init__(self, backends: Backends, admission: Admission, verifier: Verifier) -> None:
        self._backends = backends
        self._admission = admission
        self._verifier = verifier
        self._wall = backends.clocks.wall
        self._last_used: dict[str, float] = {}
        self._last_used_lock = threading.Lock()
        settings = backends.settings
        interval = min(settings.last_used_interval, settings.usage_flush_interval)
        self._flusher = Flusher(self.flush, interval)
        self._idle = True

    def note_use(self, kid: str, now: float) -> None:
        """``now``: the wall clock, as the request read it."""
        # No lock: one dict store is atomic, and a use noted into a batch just taken by the
        # flusher is noted again by the key's next request.
        self._last_used[kid] = now
        if self._idle:
            self._idle = False
            self._flusher.start()

    def flush(self) -> None:
        """Send Redis again what it did not confirm; report leases; write batched last-use
        times and usage to the store."""
        self._resend()
        # Leases first: should Redis have lost a counter meanwhile, it is rebuilt from the
        # store, which then does not hold this flush yet (an error in the customer's favour).
        self._report_leases()
        store = self._backends.store
        with self._last_used_lock:
            taken, self._last_used = self._last_used, {}
        batch = {kid: datetime.fromtimestamp(at, timezone.utc) for kid, at in taken.items()}
        try:
            if batch:
                store.touch(batch)
        except Exception as exc:  # a lost last_used_at is not worth failing a request for
            log.warning("keystile: could not record last use (%s)", type(exc).__name__)
        self._flush_sessions()
        deltas = self._admission.buffer.take()
        if deltas:
            try:
                reconciled = self._reconcile(deltas)
            except Exception as exc:  # never lose the batch to it: the store write comes first
                log.warning("keystile: could not reconcile counters (%s)", type(exc).__name__)
                reconciled = {}
            try:
                store.add_usage(deltas)
            except Exception as exc:
                self._admission.buffer.give_back(deltas)
                log.warning("keystile: could not write usage, will retry (%s)", type(exc).__name__)
            else:
                self._written(reconciled)

    def stop(self) -> None:
        self._flusher.stop()

    def _reconcile(self, deltas: list[UsageDelta]) -> dict[Counter, tuple[int, str]]:
        """Strict mode, before the store write: each counter gets back any of this process's
        unwritten pages it lost (``pending.lua``). ``{counter: (pages in this batch, the
        counter's generation)}``."""
        redis, admission = self._backends.redis, self._admission
        if redis is None or not admission.holder:
            return {}
        batch: dict[Counter, int] = {}
        for d in deltas:
            counter = (d.account_id, d.period, d.environment)
            batch[counter] = batch.get(counter, 0) + d.pages
        reconciled: dict[Counter, tuple[int, str]] = {}
        for counter, pages in batch.items():
            unwritten = pages + sum(d.pages for d in admission.buffer.pending(*counter))
            keys = [
                admission.keys.usage(*counter),
                admission.keys.call(counter[0], admission.call_ids()),
            ]
            args = [FIRST, CALL_MARKER_TTL, "reconcile", admission.holder, unwritten]
            try:
                reply = redis.pending(keys, args)
            except BackendError:
                reply = ["down"]  # the counter is as the last reply left it, or so presumed
            if reply[0] == "ok" and int(reply[2]):
                log.warning(
                    "keystile: Redis had lost %s page(s) of %s; added back", reply[2], counter
                )
            gen = str(reply[1]) if reply[0] == "ok" else admission.gens.get(counter, "")
            if reply[0] != "lost":
                reconciled[counter] = (pages, gen)
        return reconciled

    def _written(self, reconciled: dict[Counter, tuple[int, str]]) -> None:
        """The batch is in the store: its pages leave this process's pending fields."""
        redis, admission = self._backends.redis, self._admission
        assert redis is not None or not reconciled
        for counter, (pages, gen) in reconciled.items():
            keys = [
                admission.keys.usage(*counter),
                admission.keys.call(counter[0], admission.call_ids()),
            ]
            args = [FIRST, CALL_MARKER_TTL, "written", admission.holder, pages, gen]
            try:
                redis.pending(keys, args)  # type: ignore[union-attr]
            except BackendError:
                admission.resends.add(Resend("pending", keys, args, counter))

    def _report_leases(self) -> None:
        """Fast mode: report the pages spent from leases and give every unused page back."""
        redis, admission = self._backends.redis, self._admission
        if redis is None or admission.leases is None:
            return
        calls = admission.lease_reports(keep=False)
        for index, (report, keys, args) in enumerate(calls):
            try:
                reply = redis.lease_report(keys, args)
            except BackendError as exc:
                # Not merged into the next report: this one may have run. Sent again as is.
                for report, keys, args in calls[index:]:
                    admission.resends.add(
                        Resend("lease_report", keys, args, report.counter, report)
                    )
                log.warning("keystile: could not report leases, will retry (%s)", exc)
                return
            admission.lease_reported(report, reply)

    def _flush_sessions(self) -> None:
        seen = self._verifier.session_seen
        if not seen:
            return
        batch = {sid: datetime.fromtimestamp(at, timezone.utc) for sid, at in list(seen.items())}
        try:
            self._backends.store.touch_sessions(batch)
        except Exception as exc:
            log.warning("keystile: could not record session use (%s)", type(exc).__name__)
            return
        # Forget sessions idle for longer than any session may live.
        cutoff = self._backends.clocks.wall() - self._backends.settings.session_ttl
        for sid, at in list(seen.items()):
            if at < cutoff:
                seen.pop(sid, None)

    def _resend(self) -> None:
        """Counter changes Redis did not confirm, sent again (their markers make it safe)."""
        redis, admission = self._backends.redis, self._admission
        if redis is None or not len(admission.resends):
            return
        calls = admission.resends.take()
        for index, call in enumerate(calls):
            try:
                reply = redis.resend(call.script, call.keys, call.args)
            except BackendError:
                admission.resends.give_back(calls[index:])
                return
            if call.report is not None:
                admission.lease_reported(call.report, reply)
