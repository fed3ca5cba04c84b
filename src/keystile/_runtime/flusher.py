"""A daemon thread that runs the batched writes every few seconds, and once more at close."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("keystile")


class Flusher:
    def __init__(self, work: Callable[[], None], interval: float) -> None:
        self._work = work
        self._interval = max(interval, 0.05)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Idempotent and cheap: called on every request, starts the thread the first time."""
        if self._thread is not None or self._stop.is_set():
            return
        with self._lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(
                    target=self._run, name="keystile-flusher", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._work()
            except Exception:  # keep flushing; the work logs its own failures
                log.exception("keystile: background flush failed")

    def stop(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
