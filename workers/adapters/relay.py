"""The outbox relay: publishes the saga events that commits wrote to the outbox (SPEC §6).

One daemon thread per process. It claims unpublished outbox rows (oldest first, per saga only
its oldest ones), sends them with one idempotent kafka-python producer (acks=all), waits for the
broker's answer to every send and marks published only what the broker acknowledged. Delivery
is at-least-once: a crash between the broker's ack and `mark_published` sends a row again, with
the same `event_id`, and consumers de-duplicate by it.

Order per saga: rows are sent in outbox order with the saga id as the key (one partition per
saga), and a saga's rows after its first failed one are not marked, so they go again after it.

It must never block the API or the executor, never crash on a broker outage (it backs off and
recreates the producer), never create a producer at import or outside its own thread, and never
decide anything about a saga: it copies what the store committed.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from workers.adapters import metrics
from workers.adapters.store.base import OutboxRow, Store
from workers.config import KafkaConfig

log = logging.getLogger("saga.relay")

_BACKOFF_START_SECS = 0.1
_BACKOFF_CAP_SECS = 5.0
_STATS_EVERY_SECS = 1.0
_PRUNE_EVERY_SECS = 60.0
_ERROR_LOG_EVERY_SECS = 10.0


class OutboxRelay:
    """Relays outbox rows to Kafka from a daemon thread. `start()` it, `stop()` it."""

    def __init__(
        self,
        store: Store,
        kafka: KafkaConfig,
        *,
        owner: str | None = None,
        batch: int = 500,
        claim_lease_secs: float = 30,
        poll_interval_secs: float = 0.05,
        retention_secs: float | None = None,
    ) -> None:
        self.owner = owner or f"relay-{uuid.uuid4()}"
        self._store = store
        self._kafka = kafka
        self._topic = kafka.topics.publish
        self._batch = max(1, batch)
        self._lease = claim_lease_secs
        self._poll = poll_interval_secs
        self._retention = retention_secs
        # A claimed row must be settled (acked or failed) well before its claim expires, or a
        # second relay could send it (and the saga's later rows) while this one still might.
        # The producer gives up on a record after `_delivery_secs`; we wait a little longer.
        self._delivery_secs = max(1.0, min(15.0, claim_lease_secs / 2.0))
        self._wait_secs = self._delivery_secs + 2.0
        self._producer: Any = None
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._stop_deadline = float("inf")
        self._down_since: float | None = None
        self._last_error_log = 0.0
        self._quiet = True  # the last round found little: look before claiming
        self._suspects: set[str] = set()  # sagas with a failed row in the last round
        self.published = 0  # rows this relay saw acknowledged (tests and logs)

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        if self._thread is not None:
            return
        if not self._store.outbox_enabled():
            log.warning("the store's outbox is off: this relay will find nothing to publish")
        self._thread = threading.Thread(target=self._run, name="saga-outbox-relay", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Look for rows now rather than at the next poll."""
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the batch in hand (up to `timeout`), then flush and close the producer."""
        self._stop_deadline = time.monotonic() + timeout
        self._stopping.set()
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout + 1.0)
            if thread.is_alive():
                log.warning("outbox relay did not stop within %.1fs", timeout)

    # ---------------------------------------------------------------- the thread

    def _run(self) -> None:
        backoff = _BACKOFF_START_SECS
        next_stats = 0.0
        next_prune = time.monotonic() + _PRUNE_EVERY_SECS
        try:
            while not self._stopping.is_set():
                now = time.monotonic()
                if now >= next_stats:
                    next_stats = now + _STATS_EVERY_SECS
                    self._update_stats()
                if self._retention is not None and now >= next_prune:
                    next_prune = now + _PRUNE_EVERY_SECS
                    self._prune(self._retention)
                try:
                    outcome = self._cycle()
                except Exception as exc:
                    # A store error or a bug: never let the thread die; try again later (the
                    # traceback once per streak of failures, then one line each).
                    log.warning(
                        "outbox relay round failed (%s); retrying in %.1fs",
                        _reason(exc),
                        backoff,
                        exc_info=backoff == _BACKOFF_START_SECS,
                    )
                    outcome = "failed"
                self._quiet = outcome != "busy"
                if outcome == "failed":
                    self._pause(backoff)
                    backoff = min(backoff * 2, _BACKOFF_CAP_SECS)
                    continue
                backoff = _BACKOFF_START_SECS
                if outcome == "idle":
                    self._pause(self._poll)
        finally:
            self._close_producer(max(0.0, min(5.0, self._stop_deadline - time.monotonic())))
            self._update_stats()

    def _pause(self, secs: float) -> None:
        self._wake.wait(secs)
        self._wake.clear()

    def _cycle(self) -> str:
        """One claim-send-mark round: "busy" (a full batch went out, or rows were held back: go
        again at once), "idle" (nothing left, or some rows failed while others went through:
        poll again) or "failed" (nothing went through: back off)."""
        if self._producer is None or self._quiet:
            # A read first, so an idle relay takes no write lock, and no producer is made
            # while there is nothing to send.
            waiting, _ = self._store.outbox_stats()
            if waiting == 0:
                return "idle"
        # Claim nothing we cannot send: while the broker is away the rows stay free for any
        # relay that can reach it.
        if self._producer is None and not self._connect():
            return "failed"
        rows = self._store.claim_outbox(self.owner, self._batch, self._lease)
        if not rows:
            return "idle"
        acked, failures, held_back = self._send(rows)
        if acked:
            self._store.mark_published(acked)
            self.published += len(acked)
            metrics.OUTBOX_PUBLISHED.inc(len(acked))
        if failures:
            metrics.OUTBOX_ERRORS.inc(len(failures))
            self._log_failures(failures, acked=len(acked))
        if self._down_since is not None and acked:
            log.info(
                "publishing again after %.1fs of broker trouble",
                time.monotonic() - self._down_since,
            )
            self._down_since = None
        if failures:
            # Nothing got through: back off. Some did: per-row trouble; the rest flows on.
            return "idle" if acked else "failed"
        return "busy" if held_back or len(rows) == self._batch else "idle"

    # ---------------------------------------------------------------- sending

    def _send(
        self, rows: Sequence[OutboxRow]
    ) -> tuple[list[int], list[tuple[OutboxRow, str]], int]:
        """Send the rows and wait for every answer. Returns the seqs to mark published (per
        saga, only those before its first failed or unsent row), the failures as (row, reason),
        and how many rows were held back unsent (they stay claimed and go next round)."""
        from kafka.errors import KafkaTimeoutError

        producer = self._producer
        sent: list[tuple[OutboxRow, Any]] = []
        failed: dict[int, str] = {}
        # Sagas whose later rows must not go out this round: after a row that could not be
        # sent (they would overtake it), and after the first row of a saga that failed last
        # round (one at a time until one goes through, so a row the broker keeps refusing
        # does not drag its saga's later rows out again and again as duplicates).
        halted: set[str] = set()
        held_back = 0
        broken = False
        for row in rows:
            if row.saga_id in halted:
                held_back += 1
                continue
            if broken:
                failed[row.seq] = "not sent: the producer could not send an earlier row"
                halted.add(row.saga_id)
                continue
            try:
                future = producer.send(
                    self._topic,
                    key=row.saga_id.encode("utf-8"),
                    value=json.dumps(row.body, separators=(",", ":"), ensure_ascii=False).encode(
                        "utf-8"
                    ),
                )
            except KafkaTimeoutError as exc:
                # No metadata within max_block_ms: the broker is away; the rest would wait too.
                failed[row.seq] = _reason(exc)
                halted.add(row.saga_id)
                broken = True
                continue
            except Exception as exc:  # e.g. a record over the producer's size limit
                failed[row.seq] = _reason(exc)
                halted.add(row.saga_id)
                continue
            sent.append((row, future))
            if row.saga_id in self._suspects:
                halted.add(row.saga_id)
        deadline = time.monotonic() + self._wait_secs
        pending = False
        for row, future in sent:
            error = _await(future, lambda: min(deadline, self._stop_deadline))
            if error is not None:
                failed[row.seq] = error
                pending = pending or not future.is_done
        got_through = any(row.seq not in failed for row, _ in sent)
        if broken or pending or (sent and not got_through):
            # The producer looks stuck (nothing it took got through, or records may still be
            # in flight): start over with a fresh one, so a stale record cannot land after its
            # saga's later ones are resent.
            self._close_producer(0.0)
        sent_seqs = {row.seq for row, _ in sent}
        acked: list[int] = []
        blocked: set[str] = set()
        failures: list[tuple[OutboxRow, str]] = []
        for row in rows:  # outbox order, so per saga this keeps only the acked prefix
            if row.saga_id in blocked:
                continue
            if row.seq in failed:
                blocked.add(row.saga_id)
                failures.append((row, failed[row.seq]))
            elif row.seq not in sent_seqs:
                blocked.add(row.saga_id)
            else:
                acked.append(row.seq)
        self._suspects = {row.saga_id for row, _ in failures}
        return acked, failures, held_back

    def _connect(self) -> bool:
        """Create the producer; False (and logged) when the broker cannot be reached."""
        from kafka import KafkaProducer

        delivery_ms = int(self._delivery_secs * 1000)
        options: dict[str, Any] = {
            "bootstrap_servers": list(self._kafka.brokers),
            "client_id": f"saga-{self.owner}",
            "acks": "all",
            "enable_idempotence": True,
            # <= 5 keeps idempotence (and so per-partition order) with pipelined requests.
            "max_in_flight_requests_per_connection": 5,
            "linger_ms": 5,
            "delivery_timeout_ms": delivery_ms,
            "request_timeout_ms": max(500, delivery_ms // 2),
            "max_block_ms": 5000,
            "bootstrap_timeout_ms": 3000,
            "reconnect_backoff_max_ms": 1000,
            "security_protocol": self._kafka.security_protocol,
        }
        sasl = self._kafka.sasl
        if sasl is not None:
            options["sasl_mechanism"] = sasl.mechanism
            options["sasl_plain_username"] = sasl.username
            options["sasl_plain_password"] = sasl.password
        try:
            self._producer = KafkaProducer(**options)
        except Exception as exc:
            # kafka-python 3 raises KafkaTimeoutError here when no broker answers (2.x raised
            # NoBrokersAvailable); a bad setting raises too. Either way: log, back off, retry.
            self._note_trouble(f"cannot connect to {','.join(self._kafka.brokers)}: {_reason(exc)}")
            return False
        log.info("outbox relay %s connected to %s", self.owner, ",".join(self._kafka.brokers))
        return True

    def _close_producer(self, timeout: float) -> None:
        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            producer.close(timeout=timeout)
        except Exception as exc:
            # kafka-python's close() flushes first and raises if records are still pending,
            # leaving its sender thread running; stop that thread without sending them.
            log.debug("producer close: %s; forcing", _reason(exc))
            sender = getattr(producer, "_sender", None)
            if sender is not None:
                try:
                    sender.force_close()
                except Exception:
                    log.debug("producer force close failed", exc_info=True)

    # ---------------------------------------------------------------- housekeeping

    def _update_stats(self) -> None:
        try:
            waiting, oldest = self._store.outbox_stats()
        except Exception as exc:
            log.debug("outbox stats unavailable: %s", _reason(exc))
            return
        metrics.OUTBOX_BACKLOG.set(waiting)
        metrics.OUTBOX_OLDEST_AGE.set(oldest or 0.0)

    def _prune(self, older_than_secs: float) -> None:
        try:
            pruned = self._store.prune_outbox(older_than_secs)
        except Exception as exc:
            log.warning("outbox prune failed: %s", _reason(exc))
            return
        if pruned:
            log.info("pruned %d published outbox rows", pruned)

    def _note_trouble(self, message: str) -> None:
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
            log.warning("outbox relay: %s; events wait in the outbox, retrying", message)
            self._last_error_log = now
        elif now - self._last_error_log >= _ERROR_LOG_EVERY_SECS:
            log.warning(
                "outbox relay: still failing after %.0fs: %s", now - self._down_since, message
            )
            self._last_error_log = now

    def _log_failures(self, failures: Sequence[tuple[OutboxRow, str]], *, acked: int) -> None:
        row, reason = failures[0]
        message = (
            f"{len(failures)} events not published ({acked} were); first: saga {row.saga_id} "
            f"{row.event_type}: {reason}"
        )
        if acked:
            # Per-row trouble with the broker still answering: not an outage.
            now = time.monotonic()
            if now - self._last_error_log >= _ERROR_LOG_EVERY_SECS:
                log.warning("outbox relay: %s", message)
                self._last_error_log = now
        else:
            self._note_trouble(message)


def _await(future: Any, deadline: Callable[[], float]) -> str | None:
    """Wait for one send's answer until `deadline()`; None when acked, else the reason."""
    while True:
        remaining = deadline() - time.monotonic()
        try:
            # Short slices, so stop() can cut the wait short.
            future.get(timeout=max(0.0, min(remaining, 0.25)))
            return None
        except Exception as exc:
            if future.is_done or remaining <= 0.25:
                return _reason(exc)


def _reason(exc: BaseException) -> str:
    name = type(exc).__name__
    text = str(exc).splitlines()[0] if str(exc) else ""
    if text.startswith(name):  # kafka-python's errors already name themselves
        return text
    return f"{name}: {text}" if text else name


__all__ = ["OutboxRelay"]
