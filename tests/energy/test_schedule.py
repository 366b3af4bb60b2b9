"""The scheduler against brute force on random traces; `mulfree schedule` end to end."""

import random
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from mulfree.cli import main
from mulfree.energy.carbon import Series
from mulfree.energy.schedule import best_start, interruptible_windows, parse_duration
from mulfree.errors import MulfreeError

T0 = datetime(2026, 1, 5, tzinfo=UTC)
STEP = timedelta(minutes=30)


def _series(rng, n):
    return Series([T0 + i * STEP for i in range(n)], [rng.uniform(20, 600) for _ in range(n)],
                  STEP, "random")  # fmt: skip


@pytest.mark.parametrize("seed", range(12))
def test_best_start_matches_a_fine_brute_force(seed):
    rng = random.Random(seed)
    s = _series(rng, rng.randint(6, 30))
    dur = timedelta(minutes=rng.choice([10, 30, 45, 70, 95, 120]))
    now = T0 + timedelta(minutes=rng.randint(0, 40))
    deadline = s.end - timedelta(minutes=rng.randint(0, 60))
    if deadline - now < dur:
        deadline = s.end
    plan = best_start(s, dur, now, deadline)
    # Every minute (and the last allowed start): the optimum is at a boundary-related point,
    # which for whole-minute durations and offsets is on this grid.
    t, brute = now, []
    while t + dur <= deadline:
        brute.append(s.mean(t, t + dur))
        t += timedelta(minutes=1)
    assert plan.mean == pytest.approx(min(brute), rel=1e-12)
    assert now <= plan.start and plan.start + dur <= deadline
    assert plan.now_mean == pytest.approx(brute[0])


@pytest.mark.parametrize("seed", range(12))
def test_interruptible_matches_brute_force_over_slot_subsets(seed):
    rng = random.Random(100 + seed)
    n = rng.randint(4, 11)
    s = _series(rng, n)
    k = rng.randint(1, n)
    dur = k * STEP  # whole slots: the optimum is the cheapest k-subset
    plan = interruptible_windows(s, dur, T0)
    assert plan.mean == pytest.approx(sum(sorted(s.values)[:k]) / k, rel=1e-12)
    assert sum(w.seconds for w in plan.windows) == pytest.approx(dur.total_seconds())
    assert all(a.end < b.start for a, b in zip(plan.windows, plan.windows[1:], strict=False))
    # Never worse than the best single block of the same length.
    assert plan.mean <= best_start(s, dur, T0).mean + 1e-9


def test_partial_slot_and_deadline():
    s = Series([T0 + i * STEP for i in range(4)], [100, 10, 300, 20], STEP, "t")
    plan = interruptible_windows(s, timedelta(minutes=45), T0)
    assert [(w.start, w.end) for w in plan.windows] == [
        (T0 + STEP, T0 + 2 * STEP), (T0 + 3 * STEP, T0 + 3 * STEP + timedelta(minutes=15))
    ]  # fmt: skip
    plan = interruptible_windows(s, timedelta(minutes=45), T0, deadline=T0 + 2 * STEP)
    assert plan.mean == pytest.approx((10 * 30 + 100 * 15) / 45)
    with pytest.raises(MulfreeError, match="cannot run"):
        best_start(s, timedelta(hours=3), T0)
    with pytest.raises(MulfreeError, match="before now"):
        best_start(s, timedelta(minutes=10), T0 + timedelta(days=1))


def test_durations():
    assert parse_duration("1h30m") == timedelta(minutes=90)
    assert parse_duration("90") == timedelta(minutes=90)  # minutes, as CATS takes them
    assert parse_duration("2d") == timedelta(days=2)
    for bad in ("soon", "3 hours", "-1h", "0"):
        with pytest.raises(MulfreeError):
            parse_duration(bad)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "mulfree.cli", *args], capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def test_schedule_cli(tmp_path, capsys):
    rows = ["timestamp,gco2_per_kwh"]
    vals = [300, 280, 90, 80, 250, 400]
    rows += [f"2026-01-05T{h:02d}:00:00+01:00,{v}" for h, v in enumerate(vals)]
    fc = tmp_path / "fc.csv"
    fc.write_text("\n".join(rows) + "\n")
    png = tmp_path / "plan.png"
    r = _cli("schedule", "--forecast", str(fc), "--duration", "2h",
             "--now", "2026-01-05T00:00+01:00", "--plot", str(png))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "2026-01-05T02:00:00+01:00"  # in the forecast's zone
    assert "saving 70.7 %" in r.stderr  # 1 - 85 / 290: (90+80)/2 against (300+280)/2
    assert png.stat().st_size > 0
    rc = main(["schedule", "--forecast", str(fc), "--duration", "2h", "--interruptible",
               "--now", "2026-01-05T00:00+01:00", "--format", "unix"])  # fmt: skip
    assert rc == 0 and len(capsys.readouterr().out.split()) == 2  # one window: start end
    for args, msg in [
        (["--duration", "2h", "--deadline", "tomorrow"], "--deadline 'tomorrow' is not an ISO"),
        (["--duration", "7h", "--now", "2026-01-05T00:00+01:00"], "cannot run"),
        (["--duration", "lots"], "duration 'lots'"),
    ]:
        rc = main(["schedule", "--forecast", str(fc), *args])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("mulfree: error: ") and msg in err
        assert len(err.strip().splitlines()) == 1
    fc.write_text("timestamp,gco2_per_kwh\n2026-01-05T00:00Z,1\nbad row\n")
    assert main(["schedule", "--forecast", str(fc), "--duration", "1h"]) == 2
    assert "line 3" in capsys.readouterr().err


def test_schedule_wait_sleeps_until_the_start(tmp_path, capsys):
    import time

    t0 = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
    slot = timedelta(seconds=3)
    rows = ["timestamp,gco2_per_kwh"]
    rows += [f"{(t0 + i * slot).isoformat()},{v}" for i, v in enumerate([9, 1, 9])]
    fc = tmp_path / "fc.csv"
    fc.write_text("\n".join(rows) + "\n")
    assert main(["schedule", "--forecast", str(fc), "--duration", "1s", "--wait"]) == 0
    best = datetime.fromisoformat(capsys.readouterr().out.strip())
    # The low slot's start, or a moment inside it if planning began late on a busy machine.
    assert t0 + slot <= best < t0 + 2 * slot
    assert time.time() >= best.timestamp() - 1.0  # printed with whole seconds
