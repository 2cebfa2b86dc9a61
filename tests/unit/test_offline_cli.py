"""`saga validate` and `saga simulate`, run as a user runs them."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "workflows" / "order-fulfillment.yaml"


def saga(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "saga_cli.main", *args], capture_output=True, text=True, cwd=ROOT
    )


def test_validate_accepts_the_sample_and_names_the_problem_in_a_bad_file(tmp_path: Path) -> None:
    """validate exits 0 on good files, 1 with `FILE: field: problem` for each bad one."""
    ok = saga("validate", str(SAMPLE))
    assert ok.returncode == 0, ok.stderr
    assert "OK (order-fulfillment, 3 steps)" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: w\nsteps:\n  - name: a\n    service: s\n    method: S.A\n    timeout_secs: 0\n"
    )
    missing = tmp_path / "missing.yaml"
    result = saga("validate", str(SAMPLE), str(bad), str(missing))
    assert result.returncode == 1
    assert f"{bad}: steps[0].timeout_secs: must be > 0" in result.stderr
    assert f"{missing}: file not found" in result.stderr


def test_simulate_a_failing_payment_compensates_the_inventory() -> None:
    """--fail process-payment: inventory executed, payment failed after 3 attempts, inventory compensated, FAILED."""
    result = saga("simulate", str(SAMPLE), "--fail", "process-payment")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    text = result.stdout

    def index(fragment: str) -> int:
        return next(i for i, line in enumerate(lines) if fragment in " ".join(line.split()))

    executed = index("EXECUTE reserve-inventory SUCCESS")
    failed = index("EXECUTE process-payment FAILED")
    compensated = index("COMPENSATE reserve-inventory SUCCESS")
    assert executed < failed < compensated
    assert "(attempt 3 of 3)" in lines[failed]
    assert text.count("attempt 1 failed") == 1 and text.count("attempt 2 failed") == 1
    assert "process-payment" not in " ".join(line for line in lines if "COMPENSATE" in line)
    assert "final status: FAILED" in text


def test_simulate_cancel_and_timeout_options() -> None:
    """--timeout logs TIMEOUT; --cancel-after ends CANCELLED after compensating what ran."""
    timed = saga("simulate", str(SAMPLE), "--timeout", "arrange-shipping")
    assert "EXECUTE    arrange-shipping         TIMEOUT" in timed.stdout
    assert "final status: FAILED" in timed.stdout
    cancelled = saga("simulate", str(SAMPLE), "--cancel-after", "process-payment")
    assert "COMPENSATE process-payment" in cancelled.stdout
    assert "arrange-shipping" not in cancelled.stdout
    assert "final status: CANCELLED" in cancelled.stdout


def test_simulate_rejects_an_unknown_step_name() -> None:
    """Naming a step the workflow lacks is a usage error, not a silent no-op."""
    result = saga("simulate", str(SAMPLE), "--fail", "nope")
    assert result.returncode == 2
    assert "no step named 'nope'" in result.stderr


ANCHORED = """\
name: anchored
steps:
  - &defaults
    name: reserve
    service: inventory-service
    method: InventoryService.Reserve
    compensate: InventoryService.Release
    retry: &retry {max_attempts: 5, initial_interval_ms: 200}
  - <<: *defaults
    name: charge
    method: PaymentService.Charge
    compensate: PaymentService.Refund
    retry: *retry
"""


def test_validate_takes_anchors_and_merge_keys_and_refuses_a_laugh_bomb_fast(
    tmp_path: Path,
) -> None:
    """validate accepts a file with anchors, aliases and a merge key, and refuses a
    billion-laughs file with a one-line reason, the whole command in under a second."""
    good = tmp_path / "anchored.yaml"
    good.write_text(ANCHORED, encoding="utf-8")
    ok = saga("validate", str(good))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == f"{good}: OK (anchored, 2 steps)"
    bomb = tmp_path / "bomb.yaml"
    levels = [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 10)]
    bomb.write_text(
        "name: bomb\nsteps: []\nl0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
        + "\n".join(levels)
        + "\n",
        encoding="utf-8",
    )
    started = time.monotonic()
    refused = saga("validate", str(bomb))
    elapsed = time.monotonic() - started
    assert refused.returncode == 1
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, refused.stderr
    assert lines[0].startswith(f"{bomb}: workflow_yaml: aliases expand to ")
    assert lines[0].endswith("over the limit of 10000")
    # The whole command, interpreter start-up included (about 0.2 s; the parse takes ms).
    assert elapsed < 1.0, elapsed


def test_simulate_feeds_responses_and_shows_every_request(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`saga simulate --respond process-payment='{"charge_id": "ch_1"}' --fail arrange-shipping`
    prints the refund's request with the charge id the payment answered."""
    from saga_cli.main import main

    code = main(
        [
            "simulate",
            str(ROOT / "workflows" / "order-fulfillment.yaml"),
            "--fail",
            "arrange-shipping",
            "--respond",
            'process-payment={"charge_id": "ch_1"}',
            "--payload",
            '{"order_id": "A-1", "amount": 5, "card": "ok"}',
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    refund = next(line for line in out.splitlines() if "call PaymentService.Refund" in line)
    assert '{"order_id":"A-1","charge_id":"ch_1"}' in refund
    charge = next(line for line in out.splitlines() if "call PaymentService.Charge" in line)
    assert '{"order_id":"A-1","amount":5,"card":"ok"}' in charge


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("nope={}", "--respond: expected STEP=JSON"),
        ("process-payment={", "--respond process-payment: not valid JSON"),
        ("process-payment=[1]", "--respond process-payment: must be a JSON object"),
    ],
)
def test_simulate_refuses_a_bad_response_naming_it(
    flag: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad --respond exits 2 with a line naming the flag."""
    from saga_cli.main import main

    code = main(["simulate", str(ROOT / "workflows" / "order-fulfillment.yaml"), "--respond", flag])
    assert code == 2
    assert message in capsys.readouterr().err
