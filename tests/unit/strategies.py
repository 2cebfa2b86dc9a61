"""Hypothesis strategies for workflows and participant outcome scripts."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from saga.model import (
    DEFAULT_NON_RETRYABLE_CODES,
    GRPC_CODE_NAMES,
    Action,
    Backoff,
    RetryPolicy,
    Step,
    Workflow,
)
from saga.simulation import Outcome

CODES = sorted(GRPC_CODE_NAMES)

retry_policies = st.builds(
    RetryPolicy,
    max_attempts=st.integers(1, 5),
    backoff=st.sampled_from(list(Backoff)),
    initial_interval_ms=st.integers(0, 5000),
    max_interval_ms=st.none() | st.integers(1, 20000),
    jitter=st.booleans(),
    non_retryable_codes=st.one_of(
        st.just(DEFAULT_NON_RETRYABLE_CODES),
        st.lists(st.sampled_from(CODES), unique=True, max_size=5).map(tuple),
    ),
)


@st.composite
def workflows(draw: Any, min_steps: int = 1, max_steps: int = 20) -> Workflow:
    n = draw(st.integers(min_steps, max_steps))
    steps = tuple(
        Step(
            name=f"step-{i}",
            service=f"svc-{draw(st.integers(0, 3))}",
            method=f"Svc{i}.Do",
            compensate=draw(st.none() | st.just(f"Svc{i}.Undo")),
            timeout_secs=draw(st.sampled_from([0.5, 1, 30])),
            retry=draw(retry_policies),
        )
        for i in range(n)
    )
    return Workflow(name="wf", steps=steps)


outcomes = st.one_of(
    st.just(Outcome("success", response={"ok": True})),
    st.builds(
        Outcome,
        kind=st.just("error"),
        code=st.sampled_from(CODES),
        message=st.just("boom"),
        jitter=st.floats(-1, 1),
    ),
    st.builds(Outcome, kind=st.just("timeout"), jitter=st.floats(-1, 1)),
)


@st.composite
def scripts(draw: Any, workflow: Workflow) -> dict[tuple[int, Action, int], Outcome]:
    """A full table: the outcome of every attempt of every step and compensation."""
    table: dict[tuple[int, Action, int], Outcome] = {}
    for i, step in enumerate(workflow.steps):
        for action in (Action.EXECUTE, Action.COMPENSATE):
            for attempt in range(1, step.retry.max_attempts + 1):
                table[(i, action, attempt)] = draw(outcomes)
    return table
