"""Energy budgets, the power cap and carbon windows on a tiny model, with a driven clock and meter.

The fake meter reads a constant power over the clock's busy time (sleeping costs nothing), so
every step costs exactly the same energy and the stopping step is known in advance.
"""

from datetime import UTC, datetime, timedelta

import pytest
import torch
from safetensors.torch import load_file

from mulfree.cli import main
from mulfree.energy.carbon import load_series
from mulfree.energy.meter import Meter
from mulfree.errors import MulfreeError
from mulfree.train import TrainConfig, train

from .helpers import write_corpus, write_tiny_llama

STEPS = 24
T0 = datetime(2026, 3, 1, 0, 0, tzinfo=UTC)


class FakeClock:
    def __init__(self, tick_s: float = 1.0):
        self.t, self.tick, self.busy, self.slept = T0, timedelta(seconds=tick_s), 0.0, 0.0

    def now(self):  # every look at the clock is `tick` of work
        self.t += self.tick
        self.busy += self.tick.total_seconds()
        return self.t

    def sleep(self, s):
        if s > 0:
            self.t += timedelta(seconds=s)
            self.slept += s
            self.last_sleep = s


class FakeMeter(Meter):
    name = "fake"

    def __init__(self, clock, watts):
        self.clock, self.watts, self.seen = clock, watts, []

    def joules(self):
        self.seen.append(self.clock.t)
        return self.watts * self.clock.busy


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("energy")
    corpus = write_corpus(d / "corpus", n_docs=6, words_per_doc=300)
    model = write_tiny_llama(d / "llama")
    ref = _cfg(corpus, model, d / "ref")
    torch.set_num_threads(1)
    train(ref)
    return corpus, model, d


def _cfg(corpus, model, out, **kw):
    return TrainConfig(
        data=[str(corpus)], model=str(model), out_dir=str(out), vocab_size=300, seq_len=32,
        batch_size=4, max_steps=STEPS, warmup_steps=2, checkpoint_every=0, eval_every=0,
        eval_sequences=4, log_every=2, progress=False, **kw,
    )  # fmt: skip


def _same_weights(a, b):
    wa = load_file(str(a / "model" / "model.safetensors"))
    wb = load_file(str(b / "model" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=0, atol=0, msg=k)


def test_energy_budget_stops_at_the_predicted_step_then_resumes_identically(setup, tmp_path):
    corpus, model, d = setup
    clock = FakeClock()
    meter = FakeMeter(clock, watts=10.0)  # 1 s of clock per step: 10 J a step
    out = tmp_path / "run"
    res = train(_cfg(corpus, model, out, energy_budget_wh=105 / 3600), meter=meter, clock=clock)
    # 10 steps spend 100 J; an 11th (10 J more) would pass 105 J.
    assert res.steps == 10 and res.stopped and "energy budget" in res.stopped
    assert res.next_start is None
    assert (out / "checkpoints" / "step_00000010" / "trainer_state.json").is_file()
    assert not (out / "model").exists()
    assert res.energy["joules"] == pytest.approx(100.0)
    res = train(
        _cfg(corpus, model, out, resume=True, energy_budget_wh=1.0),
        meter=FakeMeter(clock, 10.0), clock=clock,
    )  # fmt: skip
    assert res.stopped is None and res.steps == STEPS
    assert res.energy["joules"] == pytest.approx(10.0 * STEPS)  # totals carried across resume
    _same_weights(d / "ref", out)
    import json

    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    wh = [r["energy_wh"] for r in recs if "loss" in r]
    assert wh == sorted(wh) and wh[-1] == pytest.approx(10.0 * STEPS / 3600)
    assert all(r["meter"] == "fake" for r in recs if "loss" in r)
    assert (out / "loss.png").stat().st_size > 0


def test_carbon_budget_with_a_constant_intensity(setup, tmp_path):
    corpus, model, _ = setup
    clock = FakeClock()
    # 360000 gCO2e/kWh = 0.1 g per J: 1 g per 10 J step; 5.5 g allows 5 steps.
    cfg = _cfg(corpus, model, tmp_path / "c", carbon_budget_g=5.5, grid_intensity="360000")
    res = train(cfg, meter=FakeMeter(clock, 10.0), clock=clock)
    assert res.steps == 5 and "carbon budget" in res.stopped
    assert res.energy["gco2e"] == pytest.approx(5.0)


def test_power_cap_duty_cycles_to_the_cap(setup, tmp_path):
    corpus, model, d = setup
    clock = FakeClock()
    cfg = _cfg(corpus, model, tmp_path / "p", power_cap_w=4.0)
    res = train(cfg, meter=FakeMeter(clock, 10.0), clock=clock)
    assert res.stopped is None
    # Each step's 10 J is followed by a sleep bringing the mean back to the cap (the totals
    # were read before the last sleep).
    e = res.energy
    assert e["joules"] / (e["seconds"] + clock.last_sleep) == pytest.approx(4.0, rel=1e-9)
    assert clock.slept == pytest.approx(e["joules"] / 4.0 - STEPS, rel=1e-9)
    _same_weights(d / "ref", tmp_path / "p")


def test_budget_without_a_meter_is_one_clear_error(setup, tmp_path):
    corpus, model, _ = setup
    cfg = _cfg(corpus, model, tmp_path / "n", energy_budget_wh=1.0, powercap_root=str(tmp_path))
    with pytest.raises(MulfreeError, match="need.*energy meter"):
        train(cfg)  # no RAPL tree, no GPU, no TDP for this CPU (unless it is in the table)


def _forecast(path, slots):
    lines = ["timestamp,gco2_per_kwh"]
    lines += [f"{(T0 + timedelta(minutes=10 * i)).isoformat()},{v}" for i, v in enumerate(slots)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("exit_between", [True, False], ids=["exit-and-resume", "sleep-in-process"])
def test_carbon_windows_pause_and_end_bit_identical(setup, tmp_path, exit_between):
    corpus, model, d = setup
    # 10-minute slots: high at the start, low ones scattered; each step takes 1 min of clock
    # (2 looks at 30 s), so the 24 steps need ~2.5 low slots of the 4.
    slots = [500, 500, 60, 500, 500, 50, 500, 40, 500, 500, 55, 500, 500, 500]
    fc = _forecast(tmp_path / "fc.csv", slots)
    clock = FakeClock(tick_s=30.0)
    meter = FakeMeter(clock, 10.0)
    out = tmp_path / "w"
    kw = dict(carbon_forecast=str(fc), deadline=(T0 + timedelta(hours=2, minutes=20)).isoformat())
    res = train(_cfg(corpus, model, out, exit_between_windows=exit_between, **kw),
                meter=meter, clock=clock)  # fmt: skip
    pauses = 0
    while res.stopped is not None:
        assert exit_between and res.next_start is not None and "paused" in res.stopped
        pauses += 1
        clock.t = res.next_start  # what cron / systemd / sbatch --begin would do
        res = train(_cfg(corpus, model, out, resume=True, exit_between_windows=True, **kw),
                    meter=meter, clock=clock)  # fmt: skip
    assert res.steps == STEPS
    _same_weights(d / "ref", out)
    if exit_between:
        assert pauses >= 2
    else:
        assert clock.slept > 0
    # The mean intensity the run saw: one calibrating step at 500, the rest in the <= 60 slots
    # (a step that straddles a window's end is charged its share of the next slot).
    e = res.energy
    mean = e["gco2e"] / (e["joules"] / 3.6e6)
    assert e["steps"] == STEPS and mean < 100, mean
    unscheduled = load_series(fc).mean(T0, T0 + timedelta(minutes=STEPS))
    assert mean < unscheduled / 4  # starting at once and running through: 427 g/kWh


def _cli_args(corpus, model, out, *extra):
    return ["train", "--data", str(corpus), "--model", str(model), "--out", str(out),
            "--vocab-size", "300", "--seq-len", "32", "--batch-size", "4", "--max-steps", "30",
            "--warmup-steps", "2", "--checkpoint-every", "0", "--eval-every", "0",
            "--eval-sequences", "4", "--no-progress", *extra]  # fmt: skip


def test_cli_budget_stop_exit_75_and_resume(setup, tmp_path, capsys):
    from .helpers import run_cli  # one real process: the exit status a scheduler sees

    corpus, model, _ = setup
    out = tmp_path / "cli"
    # The TDP estimate (a stated 200 W): the only meter on a machine without RAPL or a GPU.
    meter = ["--meter", "tdp", "--cpu-tdp", "200", "--grid-intensity", "300"]
    r = run_cli(*_cli_args(corpus, model, out, *meter, "--energy-budget", "0.0005"))
    assert r.returncode == 75, r.stderr
    lines = r.stdout.strip().splitlines()
    assert (
        "energy budget of 0.0005 Wh reached at step" in lines[-2] and "Wh (tdp-estimate, estimate)" in lines[-2]
    )
    assert "gCO2e" in lines[-2]
    assert lines[-1].startswith(f"continue with: mulfree train --out {out} --resume")
    assert list((out / "checkpoints").glob("step_*")) and not (out / "model").exists()
    rc = main(["train", "--out", str(out), "--resume", "--no-progress", "--energy-budget", "10"])
    assert rc == 0 and "energy: " in capsys.readouterr().out and (out / "model").is_dir()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--grid-intensity", "-5"], ">= 0"),
        (["--grid-intensity", "XYZ"], "unknown region 'XYZ'"),
        (
            ["--energy-budget", "1", "--powercap-root", "/nonexistent", "--meter", "rapl"],
            "--meter rapl: no powercap tree",
        ),
        (["--carbon-forecast", "/nonexistent.csv"], "no such forecast file"),
        (["--deadline", "2026-01-01T00:00Z"], "--deadline needs --carbon-forecast"),
        (["--energy-budget", "-1"], "energy_budget_wh must be a positive number"),
    ],
    ids=[
        "negative-intensity",
        "unknown-region",
        "no-rapl",
        "no-forecast",
        "deadline-alone",
        "negative-budget",
    ],  # fmt: skip
)
def test_cli_bad_energy_options_are_one_line(setup, tmp_path, capsys, extra, message):
    corpus, model, _ = setup
    if "XYZ" in extra:
        import importlib.util

        if importlib.util.find_spec("codecarbon") is None:
            pytest.skip("region codes need codecarbon (mulfree[energy])")
    rc = main(_cli_args(corpus, model, tmp_path / "bad", *extra))
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("mulfree: error: "), err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()  # failed before writing anything
