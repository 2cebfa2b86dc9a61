"""The real executor under generated schedules of faults, checked against the saga's promises.

What it explores: hypothesis writes a schedule of up to ~80 moves over two executors sharing one
store (memory, and SQLite with its own file): claims, commit rounds, participants answering in
any order and in every way (success, a value the store cannot keep, retryable and permanent
errors, time-outs with and without the work done, unusable replies, a duplicated answer),
retry timers, lease renewals, the clock jumping past leases, an executor killed with everything
it held, the store going down and coming back, a commit whose outcome is lost, cancels at any
moment (also one landing between the executor's decision and its write), and the relay's sends
failing. Then faults stop and the world drains; every saga must
have ended and keep every promise of `saga.invariants` (compensations complete, newest first,
none for a step never called; a cancel answered 200 never ends COMPLETED; events in order,
none lost).

What it cannot see: real threads racing (one thread runs every round here, so interleavings
inside one round are not explored: the threaded tests and `make chaos` cover those), real
network and database timing, PostgreSQL's own concurrency (the store contract suite and the
real-process tests cover it), and a frozen process whose call leaves after its lease ran out
(a retry checks its lease first; a first attempt cannot, and such a call is marked stale).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from saga.invariants import violations
from saga.model import SagaStatus
from tests.fault.world import LEASE_SECS, World

HOWS = (
    "success",
    "success",
    "success",
    "success_poison",
    "busy",
    "declined",
    "timeout_applied",
    "timeout_unapplied",
    "unusable",
    "twice",
)

slot = st.integers(0, 1)
# The moves, weighted towards the ones that make progress (claims, commits, answers), so that a
# schedule of a few dozen moves reaches the far steps of a saga as often as its faults.
move = st.one_of(
    st.tuples(st.just("progress"), slot),
    st.tuples(st.just("progress"), slot),
    st.tuples(st.just("progress"), slot),
    st.tuples(st.just("answer"), st.integers(0, 3), st.just("success")),
    st.tuples(st.just("answer"), st.integers(0, 3), st.just("success")),
    st.tuples(st.just("answer"), st.integers(0, 3), st.sampled_from(HOWS)),
    st.tuples(st.just("claim"), slot),
    st.tuples(st.just("commit"), slot),
    st.tuples(st.just("timers"), slot),
    st.tuples(st.just("renew"), slot),
    st.tuples(st.just("tick"), st.sampled_from([0.3, 3.0, LEASE_SECS + 1])),
    st.tuples(st.just("crash"), slot),
    st.tuples(
        st.just("store"), st.sampled_from(["down", "up", "lose_outcome", "down_after_claim"])
    ),
    st.tuples(st.just("cancel"), st.integers(0, 3)),
    st.tuples(st.just("cancel_racing_next_commit"), st.integers(0, 3)),
    st.tuples(st.just("pause"), st.integers(0, 3)),
    st.tuples(st.just("pause_racing_next_commit"), st.integers(0, 3)),
    st.tuples(
        st.just("resume"),
        st.integers(0, 3),
        st.sampled_from([None, "continue", "retry", "skip", "compensate"]),
    ),
    st.tuples(st.just("relay"), st.booleans()),
    st.tuples(st.just("start"), st.just(0)),
)
schedules = st.lists(move, min_size=10, max_size=60)


def play(world: World, schedule: list[tuple[Any, ...]]) -> None:
    for step in schedule:
        kind = step[0]
        if kind == "progress":  # one fair round: what a healthy, idle system would do next
            world.commit(step[1])
            world.claim(step[1])
            world.participants.answer(0, "success")
        elif kind == "claim":
            world.claim(step[1])
        elif kind == "commit":
            world.commit(step[1])
        elif kind == "answer":
            world.participants.answer(step[1], step[2])
        elif kind == "timers":
            world.timers(step[1])
        elif kind == "renew":
            world.renew(step[1])
        elif kind == "tick":
            world.clock.advance(step[1])
        elif kind == "crash":
            world.crash(step[1])
        elif kind == "store":
            if step[1] == "down":
                world.store.down = True
            elif step[1] == "up":
                world.store.down = False
            elif step[1] == "lose_outcome":
                world.store.lose_next_commit_outcome = True
            else:
                world.down_after_claim = True
        elif kind == "cancel":
            world.cancel(step[1])
        elif kind == "pause":
            world.pause(step[1])
        elif kind == "pause_racing_next_commit":
            index = step[1]
            world.store.before_next_commit = lambda index=index: world.pause(index)
        elif kind == "resume":
            world.resume(step[1], step[2])
        elif kind == "cancel_racing_next_commit":
            index = step[1]
            world.store.before_next_commit = lambda index=index: world.cancel(index)
        elif kind == "relay":
            world.relay_round(fail=step[1])
        elif kind == "start" and len(world.sagas) < 4:
            world.start_saga()


def broken_promises(world: World) -> dict[str, list[str]]:
    world.drain()
    found = {}
    for saga_id in world.sagas:
        problems = violations(world.record(saga_id))
        if problems:
            found[saga_id] = problems
    return found


def _world(kind: str, tmp_path_factory: pytest.TempPathFactory, sagas: int = 2) -> World:
    path = tmp_path_factory.mktemp("fault") if kind == "sqlite" else None
    world = World(kind, path)
    for _ in range(sagas):
        world.start_saga()
    return world


# A schedule runs in about a millisecond, so the harness takes eight times the profile's budget
# (2,000 schedules per store under `ci`, a few seconds).
_HARNESS = settings(
    max_examples=settings.default.max_examples * 8,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    deadline=None,
)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
@_HARNESS
@given(schedule=schedules)
def test_every_saga_keeps_its_promises_under_any_schedule_of_faults(
    kind: str, schedule: list[tuple[Any, ...]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """After any schedule of faults, once they stop, every saga ends and keeps every promise."""
    note(f"schedule: {schedule!r}")
    world = _world(kind, tmp_path_factory, sagas=1)
    play(world, schedule)
    found = broken_promises(world)
    if found:
        for saga_id in world.sagas:
            logs = world.store.inner.get_step_logs(saga_id)
            note(
                f"logs of {saga_id}: "
                + ", ".join(f"{g.step_name}/{g.action.value}/{g.status.value}" for g in logs)
            )
            note(f"calls: {world.participants.made.get(saga_id)}")
    assert found == {}


# ---------------------------------------------------------------- the review's defects, replayed


def _drive_to_first_call(world: World) -> None:
    world.claim(0)
    world.commit(0)  # STARTED -> RUNNING; the first step is called


REGRESSIONS: dict[str, tuple[Callable[[World], None], int]] = {}


def regression(sagas: int = 1) -> Callable[[Callable[[World], None]], Callable[[World], None]]:
    """Register a schedule replaying one defect, run on a world with `sagas` sagas started."""

    def register(fn: Callable[[World], None]) -> Callable[[World], None]:
        REGRESSIONS[fn.__name__] = (fn, sagas)
        return fn

    return register


@regression()
def cancel_after_a_crash_mid_step_compensates_that_step(world: World) -> None:
    """Defect 2: the executor dies with step 2 in flight (done at the participant); a cancel
    comes; the executor that takes over must compensate step 2 too, not only step 1."""
    _drive_to_first_call(world)
    world.participants.answer(0, "success")  # reserve done
    world.commit(0)  # reserve logged; charge called
    world.crash(0)
    world.cancel(0)
    world.clock.advance(LEASE_SECS + 1)


@regression()
def a_value_the_store_cannot_keep_fails_the_saga_cleanly(world: World) -> None:
    """Defect 3: a reply holding a NUL (which PostgreSQL cannot store) must end the saga FAILED
    with a clean message and its steps compensated, not retry the commit forever or drop it."""
    _drive_to_first_call(world)
    world.participants.answer(0, "success")
    world.commit(0)
    world.participants.answer(0, "success_poison")
    world.commit(0)


@regression()
def the_store_failing_right_after_a_claim_leaves_no_saga_behind(world: World) -> None:
    """Defect 4: the store stops answering between a claim and reading the workflow."""
    world.down_after_claim = True
    world.claim(0)
    world.store.down = False


@regression()
def a_cancel_racing_the_last_commit_is_never_lost(world: World) -> None:
    """Defect 5: the cancel is accepted after the executor decided to write COMPLETED."""
    _drive_to_first_call(world)
    for _ in range(3):
        world.participants.answer(0, "success")
        world.commit(0)
    world.cancel(0)
    world.commit(0)


@regression(sagas=2)
def an_outage_during_the_one_by_one_fallback_keeps_every_commit(world: World) -> None:
    """Defect 6: the store refuses one saga's data, then goes down while the batch is retried
    saga by saga: the healthy commits stay queued, none is dropped."""
    world.claim(0)  # both sagas claimed; both RUNNING commits queued
    world.commit(0)
    world.participants.answer(0, "success_poison")
    world.participants.answer(0, "success")
    world.store.lose_next_commit_outcome = True
    world.commit(0)


@regression()
def a_timed_out_last_attempt_is_compensated(world: World) -> None:
    """Defect 7: a step whose last attempt timed out after doing the work is compensated."""
    _drive_to_first_call(world)
    world.participants.answer(0, "success")
    world.commit(0)
    for _ in range(3):
        world.participants.answer(0, "timeout_applied")
        world.timers(0)
    world.commit(0)


@regression()
def an_unusable_reply_is_compensated(world: World) -> None:
    """Defect 7: a reply that cannot be used may still mean the work was done."""
    _drive_to_first_call(world)
    world.participants.answer(0, "unusable")
    world.commit(0)


@regression()
def a_relay_send_that_fails_keeps_the_order(world: World) -> None:
    """Defect 1's promise: a failed send is published again before the saga's newer events."""
    _drive_to_first_call(world)
    world.relay_round(fail=True)
    for _ in range(3):
        world.participants.answer(0, "success")
        world.commit(0)
    world.relay_round()


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
@pytest.mark.parametrize("name", sorted(REGRESSIONS))
def test_review_defect_replayed_through_the_harness(
    name: str, kind: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Each defect the review found, replayed as a schedule: every saga keeps its promises."""
    schedule, sagas = REGRESSIONS[name]
    world = _world(kind, tmp_path_factory, sagas=sagas)
    schedule(world)
    assert broken_promises(world) == {}


def test_a_value_the_store_cannot_keep_ends_failed_with_a_clean_message(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The saga whose reply could not be stored ends FAILED, naming the refusal, with reserve
    and charge (whose outcome is unknown) compensated."""
    world = _world("memory", tmp_path_factory, sagas=1)
    a_value_the_store_cannot_keep_fails_the_saga_cleanly(world)
    world.drain()
    state = world.store.inner.get_saga(world.sagas[0])
    assert state.status is SagaStatus.FAILED
    assert "the store refused" in state.error_message and "\x00" not in state.error_message
    undone = [
        g.step_name
        for g in world.store.inner.get_step_logs(state.saga_id)
        if g.action.value == "COMPENSATE"
    ]
    assert undone == ["charge", "reserve"]


def test_an_outage_keeps_healthy_commits_queued(tmp_path_factory: pytest.TempPathFactory) -> None:
    """While the store is down, queued commits stay queued and no saga is given up."""
    world = _world("memory", tmp_path_factory)
    world.claim(0)
    ex = world.executor(0)
    queued = ex.pending_commits()
    assert queued == 2
    world.store.down = True
    assert ex.commit_once() == "unavailable"
    assert ex.pending_commits() == queued and ex.held() == 2
    world.store.down = False
    assert ex.commit_once() == "committed"
    assert ex.pending_commits() == 0 and ex.held() == 2
