"""Retention (SPEC §13): with `saga.retention_days`, ended sagas older than that are deleted,
in batches of at most 1,000 sagas per transaction, by one process at a time.

Which sagas may go is the store's to say (terminal, ended before the cut-off, no event still
waiting to be published; see `Store.retention_turn`); this loop only says when. A pass runs
every `interval_secs` and only while this process holds the store's retention turn (another
process holding it: this one does nothing). Within a pass, each batch is followed by a pause at
least as long as the batch took, so deleting takes at most half of one connection's time and
never holds what the API or the executors wait on for more than one short transaction. The loop
never raises out of its thread: a store that does not answer is tried again next pass.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from workers.adapters import metrics
from workers.adapters.store.base import MAX_RETENTION_BATCH, Store
from workers.interpreter import utc_now

log = logging.getLogger("saga.retention")


class Retention:
    """Deletes ended sagas older than `retention_days`; `start()` it, `stop()` it."""

    def __init__(
        self,
        store: Store,
        retention_days: float,
        *,
        batch: int = MAX_RETENTION_BATCH,
        interval_secs: float = 10.0,
        min_pause_secs: float = 0.05,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        if not 0 < batch <= MAX_RETENTION_BATCH:
            raise ValueError(f"batch must be 1..{MAX_RETENTION_BATCH}, not {batch}")
        self._store = store
        self._keep = timedelta(days=retention_days)
        self._batch = batch
        self._interval = interval_secs
        self._min_pause = min_pause_secs
        self._clock = clock
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def cutoff(self) -> datetime:
        """Sagas that ended before this time are due."""
        return self._clock() - self._keep

    def run_pass(self) -> int | None:
        """One pass: take the turn and delete batch after batch until one comes back short
        (or the loop stops). Returns how many sagas were deleted, or None when another
        process held the turn. Raises when the store does not answer."""
        with self._store.retention_turn() as delete_ended:
            if delete_ended is None:
                return None
            deleted = 0
            started = time.monotonic()
            while True:
                cutoff = self.cutoff()
                t0 = time.monotonic()
                n = delete_ended(cutoff, self._batch)
                took = time.monotonic() - t0
                metrics.RETENTION_BATCH.observe(took)
                if n:
                    metrics.RETENTION_DELETED.inc(n)
                    deleted += n
                if n < self._batch or self._stopping.wait(max(self._min_pause, took)):
                    break
        if deleted:
            log.info(
                "retention: deleted %d sagas that ended before %s (%.1f s)",
                deleted,
                cutoff.isoformat(timespec="seconds"),
                time.monotonic() - started,
            )
        return deleted

    def start(self) -> None:
        """Run a pass now, then one every `interval_secs`, on a thread of its own."""
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name="saga-retention", daemon=True)
        self._thread.start()

    def stop(self, grace_secs: float = 10.0) -> None:
        """Stop after the batch in progress (if any)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=grace_secs)
            self._thread = None

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self.run_pass()
            except Exception as exc:
                log.warning(
                    "retention pass failed (%s: %s); trying again in %.0f s",
                    type(exc).__name__,
                    (str(exc).splitlines() or [""])[0][:200],
                    self._interval,
                )
            self._stopping.wait(self._interval)
