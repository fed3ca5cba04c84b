"""The app's ``on_quota_threshold`` hook, called once per threshold a charge crossed."""

from __future__ import annotations

import logging
from collections.abc import Callable

from keystile._core.metering import Meter, ThresholdEvent

log = logging.getLogger("keystile")


def fire_thresholds(
    hook: Callable[[ThresholdEvent], object] | None, meter: Meter, crossed: tuple[float, ...]
) -> None:
    status = meter.status
    if hook is None or status.limit is None:
        return
    for threshold in crossed:
        event = ThresholdEvent(
            meter.charge_info.account_id,
            meter.charge_info.environment,
            status.period,
            threshold,
            status.limit,
            status.used,
        )
        try:
            hook(event)
        except Exception:  # the app's hook must never fail a request
            log.exception("keystile: on_quota_threshold hook failed")
