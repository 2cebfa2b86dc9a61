"""`Engine`: the one application service. REST, gRPC and the CLI call it; it validates input,
reads and writes the store, and (when this process executes sagas) owns the executor.

It raises domain errors (`ValidationError`, `NotFound`, `Conflict`) for the edges to map.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from attrs import evolve, frozen

from saga.codec import format_timestamp, workflow_to_dict
from saga.decide import decide, resolved_resume_action
from saga.errors import Conflict, IllegalEvent, NotFound, ValidationError
from saga.events import CancelRequested, Commit, ResumeRequested
from saga.model import OperatorAction, SagaState, SagaStatus, StepLog, Workflow, new_saga
from saga.workflow import parse_workflow
from workers.adapters import metrics
from workers.adapters.participant import ParticipantCaller
from workers.adapters.relay import OutboxRelay
from workers.adapters.store.base import SagaFilter, SagaPage, Store, UnknownWorkflow
from workers.adapters.tracing import Tracing, start_context
from workers.config import Config, DatabaseConfig
from workers.interpreter import Executor, WorkflowCatalog, utc_now
from workers.service import inputs
from workers.service.retention import Retention

log = logging.getLogger("saga.engine")

# The highest workflow version `get_workflow` takes (a query integer has at most 9 digits).
MAX_VERSION = 999_999_999


def open_store(config: Config) -> Store:
    """PostgreSQL when `DATABASE_URL` or a `database` section is given, else the SQLite file."""
    outbox = config.kafka is not None
    url = config.postgres_url
    if url:
        from workers.adapters.store.postgres import PostgresStore

        db = config.database
        size = max(2, db.max_open_conns if db else 10)
        idle = min(size, max(1, db.max_idle_conns if db else 2))
        timing = db or DatabaseConfig(name="", user="")  # DATABASE_URL alone: the defaults
        return PostgresStore(
            url,
            outbox=outbox,
            min_size=idle,
            max_size=size,
            max_lifetime=timing.max_lifetime_secs,
            statement_timeout=timing.statement_timeout_secs,
        )
    from workers.adapters.store.sqlite import SqliteStore

    return SqliteStore(config.saga.sqlite_path, outbox=outbox)


class Engine:
    def __init__(
        self, config: Config, store: Store, *, execute: bool | None = None, relay: bool = True
    ) -> None:
        self.config = config
        self.store = store
        self.catalog = WorkflowCatalog(store)
        self.executor: Executor | None = None
        self.caller: ParticipantCaller | None = None
        self.tracing: Tracing | None = None
        if config.saga.execute if execute is None else execute:
            self.tracing = Tracing.from_config(config.telemetry)
            self.caller = ParticipantCaller(
                config.service_map,
                max_send_bytes=config.limits.grpc_send_bytes,
                max_receive_bytes=config.limits.grpc_receive_bytes,
                max_reply_bytes=config.limits.participant_response_bytes,
            )
            self.executor = Executor(
                store,
                self.catalog,
                self.caller,
                max_concurrent=config.saga.max_concurrent,
                lease_secs=config.saga.lease_secs,
                claim_interval_secs=config.saga.claim_interval_ms / 1000.0,
                commit_batch=config.saga.commit_batch,
                tracing=self.tracing,
            )
        self.relay: OutboxRelay | None = None
        if relay and config.kafka is not None:
            self.relay = OutboxRelay(
                store,
                config.kafka,
                batch=config.kafka.relay_batch,
                retention_secs=config.kafka.retention_hours * 3600,
            )
        self.retention: Retention | None = None
        if config.saga.retention_days is not None:
            self.retention = Retention(store, config.saga.retention_days)

    @classmethod
    def from_config(
        cls, config: Config, *, execute: bool | None = None, relay: bool = True
    ) -> Engine:
        return cls(config, open_store(config), execute=execute, relay=relay)

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Load `workflow_dir`, then start executing (when this process executes)."""
        if self.config.kafka is not None and self.config.kafka.consumer_group:
            log.info("kafka.consumer_group is ignored: this server only publishes events")
        self.load_workflow_dir()
        if self.executor is not None:
            self.executor.start()
        if self.relay is not None:
            self.relay.start()
        if self.retention is not None:
            self.retention.start()

    def close(self, grace_secs: float = 10.0) -> None:
        if self.retention is not None:
            self.retention.stop(grace_secs)
        if self.executor is not None:
            self.executor.stop(grace_secs)
        if self.caller is not None:
            self.caller.close()
        if self.tracing is not None:
            self.tracing.close()  # after the executor: its last spans are exported too
        if self.relay is not None:
            self.relay.stop(grace_secs)
        self.store.close()

    def load_workflow_dir(self) -> list[Workflow]:
        """Register each valid `.yaml`/`.yml` file whose definition differs from the stored
        latest version; log and skip invalid ones; a missing directory is not an error."""
        directory = Path(self.config.saga.workflow_dir)
        loaded: list[Workflow] = []
        if not directory.is_dir():
            log.info("workflow_dir %s does not exist; no workflows loaded from files", directory)
            return loaded
        for path in sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml")):
            try:
                workflow = self._parse(path.read_text(encoding="utf-8"))
            except (ValidationError, OSError, UnicodeDecodeError) as exc:
                message = exc.message if isinstance(exc, ValidationError) else str(exc)
                log.warning("skipping workflow file %s: %s", path, message)
                continue
            latest = self.store.get_workflow(workflow.name)
            if latest is not None and _same_definition(latest, workflow):
                loaded.append(latest)
                continue
            stored = self.store.register_workflow(workflow)
            log.info("loaded workflow %s v%d from %s", stored.name, stored.version, path)
            loaded.append(stored)
        return loaded

    def ready(self) -> bool:
        """The store answers, and (when this process executes) every executor loop runs."""
        return self.not_ready_reason() is None

    def not_ready_reason(self) -> str | None:
        """Why this process cannot do its work now, or None when it can."""
        try:
            self.store.ping()
        except Exception:
            return "the saga store does not answer"
        if self.executor is not None and not self.executor.healthy():
            down = ", ".join(sorted(self.executor.down())) or "stopped"
            return f"the saga executor is not running ({down})"
        return None

    # ---------------------------------------------------------------- workflows

    def _parse(self, text: Any) -> Workflow:
        if not isinstance(text, str) or not text.strip():
            raise ValidationError("workflow_yaml: is required")
        return parse_workflow(
            text,
            max_bytes=self.config.limits.workflow_bytes,
            max_steps=self.config.limits.workflow_steps,
            known_services=set(self.config.services),
        )

    def register_workflow(self, yaml_text: Any) -> Workflow:
        stored = self.store.register_workflow(self._parse(yaml_text))
        self.catalog.remember(stored)
        return stored

    def list_workflows(self) -> list[Workflow]:
        return self.store.list_workflows()

    def get_workflow(self, name: Any, version: Any = None) -> Workflow:
        """One version of a workflow (None: the latest); NotFound for an unknown name or
        version."""
        limits = self.config.limits
        chosen = inputs.required_string(name, "name", limits.string_length)
        number = inputs.positive_int(version, "version", default=0, maximum=MAX_VERSION)
        workflow = self.store.get_workflow(chosen, number or None)
        if workflow is None:
            if number:
                raise NotFound(f"workflow not found: {chosen} version {number}")
            raise NotFound(f"workflow not found: {chosen}")
        return workflow

    # ---------------------------------------------------------------- sagas

    def start_saga(
        self,
        workflow_name: Any,
        payload: Any = None,
        *,
        correlation_id: Any = None,
        initiated_by: Any = None,
        idempotency_key: Any = None,
        principal: str | None = None,
        traceparent: Any = None,
        tracestate: Any = None,
    ) -> tuple[SagaState, bool]:
        """Write a STARTED saga and return (saga, created). With an idempotency key already
        used for the same request, return the first saga and False; for another request, 409.
        `principal` (the authenticated caller) is recorded as `initiated_by` when none is given.
        The saga joins the W3C trace of `traceparent`/`tracestate` when they are valid, else
        starts a new one (never an error, SPEC §12)."""
        limits = self.config.limits
        name = inputs.required_string(workflow_name, "workflow_name", limits.string_length)
        body = inputs.payload(payload, max_bytes=limits.payload_bytes, max_depth=limits.json_depth)
        correlation = inputs.optional_string(correlation_id, "correlation_id", limits.string_length)
        if initiated_by is None:
            initiated_by = principal
        initiator = inputs.optional_string(initiated_by, "initiated_by", limits.string_length)
        key = inputs.idempotency_key(idempotency_key)
        # The version is the latest one, read by the store in the insert (one round trip).
        state = new_saga(
            saga_id=str(uuid.uuid4()),
            workflow=_Unversioned(name),
            payload=body,
            correlation_id=correlation,
            initiated_by=initiator,
            at=utc_now(),
            trace_context=start_context(traceparent, tracestate, self._sample_ratio),
        )
        request_hash = None
        if key is not None:
            canonical = json.dumps(
                [name, body, correlation, initiator], sort_keys=True, separators=(",", ":")
            )
            request_hash = hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()
        # With room in this process's executor, the saga is written leased to it and runs
        # here at once: no claim, no other executor woken (SPEC §8: still one at a time).
        executor = self.executor
        lease = executor.start_lease() if executor is not None else None
        taken = False
        try:
            try:
                stored, stored_hash, created = self.store.create_saga(
                    state,
                    idempotency_key=key,
                    request_hash=request_hash,
                    latest_version=True,
                    lease=lease,
                )
            except UnknownWorkflow:
                raise NotFound(f"workflow not found: {name}") from None
            if not created:
                if stored_hash != request_hash:
                    raise Conflict("Idempotency-Key was already used with a different request")
                return stored, False
            metrics.SAGAS_STARTED.labels(name).inc()
            if executor is not None:
                if lease is not None:
                    taken = True
                    executor.take(stored)
                else:
                    executor.wake()
            return stored, True
        finally:
            if executor is not None and lease is not None and not taken:
                executor.unreserve()

    @property
    def _sample_ratio(self) -> float:
        telemetry = self.config.telemetry
        return 1.0 if telemetry is None else telemetry.sample_ratio

    def get_saga(self, saga_id: Any) -> tuple[SagaState, list[StepLog]]:
        state, logs, _ = self.get_saga_detail(saga_id)
        return state, logs

    def get_saga_detail(
        self, saga_id: Any
    ) -> tuple[SagaState, list[StepLog], list[OperatorAction]]:
        """The saga, its step logs and its operator actions (oldest first)."""
        sid = inputs.saga_id(saga_id)
        found = self.store.saga_detail(sid)
        if found is None:
            raise NotFound(f"saga not found: {sid}")
        state, logs, actions = found
        return state, logs, actions

    def operator_actions(self, saga_id: Any) -> list[OperatorAction]:
        """A saga's pauses, resumes and cancels, oldest first (SPEC §11 audit)."""
        return self.store.operator_actions(inputs.saga_id(saga_id))

    def list_sagas(
        self,
        *,
        page: Any = None,
        page_size: Any = None,
        workflow_name: Any = None,
        status: Any = None,
        correlation_id: Any = None,
    ) -> SagaPage:
        limits = self.config.limits
        number = inputs.positive_int(page, "page", default=1, maximum=10_000_000)
        size = inputs.positive_int(page_size, "page_size", default=20, maximum=limits.page_size)
        filters = SagaFilter(
            workflow_name=inputs.optional_string(
                workflow_name or None, "workflow_name", limits.string_length
            ),
            status=inputs.status(status),
            correlation_id=inputs.optional_string(
                correlation_id or None, "correlation_id", limits.string_length
            ),
        )
        return self.store.list_sagas(filters, number, size)

    def stats(self, minutes: int = 60) -> dict[str, Any]:
        """Counts by status, sagas started and ended in each of the last `minutes` minutes
        (oldest first, the current minute last), and the outbox backlog."""
        now = utc_now().replace(second=0, microsecond=0)
        since = now - timedelta(minutes=minutes - 1)
        stats = self.store.stats(since)
        backlog, oldest = self.store.outbox_stats()
        minutes_list = [since + timedelta(minutes=i) for i in range(minutes)]
        return {
            "counts": {status.value: stats.counts.get(status, 0) for status in SagaStatus},
            "activity": [
                {
                    "minute": format_timestamp(m),
                    "started": stats.started.get(m, 0),
                    "ended": stats.ended.get(m, 0),
                }
                for m in minutes_list
            ],
            "outbox": {"backlog": backlog, "oldest_age_secs": oldest},
        }

    def cancel_saga(self, saga_id: Any, by: str | None = None) -> SagaState:
        """Ask a STARTED or RUNNING saga to stop (the executor compensates at the next boundary),
        or cancel one PAUSED in its forward phase (it compensates now); recorded for the audit."""
        sid = inputs.saga_id(saga_id)
        now = utc_now()
        outcome = self.store.request_cancel(sid, by=by, at=now)
        if outcome is None:
            raise NotFound(f"saga not found: {sid}")
        if outcome.accepted:
            self._wake()
            return outcome.state
        if outcome.state.status is SagaStatus.PAUSED:
            return self._operator_decision(
                sid, CancelRequested(at=now), OperatorAction("cancel", by, now)
            )
        raise Conflict(
            f"saga {sid} is {outcome.state.status.value}; only STARTED, RUNNING or PAUSED "
            "(before compensating) sagas can be cancelled"
        )

    def pause_saga(self, saga_id: Any, by: str | None = None) -> SagaState:
        """Ask a STARTED, RUNNING or COMPENSATING saga to pause at its next step boundary
        (SPEC §11); an in-flight call finishes and is committed first."""
        sid = inputs.saga_id(saga_id)
        outcome = self.store.request_pause(sid, by=by, at=utc_now())
        if outcome is None:
            raise NotFound(f"saga not found: {sid}")
        if not outcome.accepted:
            raise Conflict(
                f"saga {sid} is {outcome.state.status.value}; only STARTED, RUNNING or "
                "COMPENSATING sagas can be paused"
            )
        self._wake()
        return outcome.state

    def resume_saga(
        self, saga_id: Any, action: Any = None, payload: Any = None, by: str | None = None
    ) -> SagaState:
        """Resume a PAUSED saga (SPEC §11) with `action` (None: retry after a failure, continue
        after a pause request) and, in the forward phase, a replacement `payload`."""
        sid = inputs.saga_id(saga_id)
        chosen = inputs.resume_action(action)
        replacement = None
        if payload is not None:
            limits = self.config.limits
            replacement = inputs.payload(
                payload, max_bytes=limits.payload_bytes, max_depth=limits.json_depth
            )
        now = utc_now()
        state = self._operator_decision(
            sid,
            ResumeRequested(at=now, action=chosen, payload=replacement),
            OperatorAction("resume", by, now, payload_replaced=replacement is not None),
        )
        return state

    def _operator_decision(
        self, sid: str, event: ResumeRequested | CancelRequested, action: OperatorAction
    ) -> SagaState:
        """Decide an operator's request on a PAUSED saga with the core and write it, only if
        the saga did not change meanwhile."""
        state = self.store.get_saga(sid, with_steps=True)
        if state is None:
            raise NotFound(f"saga not found: {sid}")
        if state.status is not SagaStatus.PAUSED or state.pause is None:
            raise Conflict(f"saga {sid} is {state.status.value}; only PAUSED sagas can be resumed")
        workflow = self.catalog.get(state.workflow_name, state.workflow_version)
        if workflow is None:
            raise Conflict(f"saga {sid}: its workflow {state.workflow_name} is gone")
        try:
            decision = decide(state, workflow, event)
        except IllegalEvent as exc:
            raise Conflict(str(exc)) from None
        if isinstance(event, ResumeRequested):
            action = evolve(action, resume_action=resolved_resume_action(state, event))
        [commit] = decision.effects
        assert isinstance(commit, Commit)
        if not self.store.commit_operator(commit, state.resumes, action):
            raise Conflict(f"saga {sid} changed while this request was decided; look and retry")
        if isinstance(event, ResumeRequested) and action.resume_action is not None:
            metrics.RESUMES.labels(action.resume_action.value).inc()
        self._wake()
        return decision.state

    def paused_by_workflow(self) -> dict[str, int]:
        """How many sagas are PAUSED now, per workflow (the `saga_paused` gauge)."""
        return self.store.paused_by_workflow()

    def _wake(self) -> None:
        if self.executor is not None:
            self.executor.wake()


@frozen
class _Unversioned:
    """A workflow by name; the store writes the saga at its latest version."""

    name: str
    version: int = 0


def _same_definition(a: Workflow, b: Workflow) -> bool:
    return workflow_to_dict(evolve(a, version=0)) == workflow_to_dict(evolve(b, version=0))
