"""Section 6: what carbon-aware scheduling and multiplication-free arithmetic save, for one job.

The job is stated, not measured: generating `JOB_TOKENS` tokens with the bundled MatMul-free
model in a `JOB_HOURS`-hour batch run that must end within a day. Its energy is the op-count
estimate of `mulfree energy` (per token, Horowitz 45 nm table) for dense fp32 multiplies and
for the multiplication-free kernels; its emissions are that energy times the mean intensity of
each schedule on a synthetic diurnal trace (no real trace ships in a package we could use).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from mulfree.report.common import Context, Section

BUNDLED = "src/mulfree/assets/mmfree-shakespeare-tiny"
JOB_TOKENS = 1_000_000  # the stated job: one million generated tokens
JOB_HOURS = 3  # run as one batch job of this length
TRACE_START = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday; the trace spans two days
NOW = TRACE_START + timedelta(hours=12)  # the job is submitted at noon
DEADLINE = NOW + timedelta(hours=24)  # and must be done by noon the next day
VARIANTS = ("fp32", "mulfree")


def section(ctx: Context) -> Section:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mulfree.energy.cli import load_model
    from mulfree.energy.report import energy_report
    from mulfree.energy.savings import compare_schedules, synthetic_diurnal_trace
    from mulfree.energy.schedule import draw_plan

    bundled = ctx.repo / BUNDLED if ctx.repo else None
    if bundled is None or not bundled.is_dir():
        from importlib import resources

        bundled = resources.files("mulfree").joinpath("assets/mmfree-shakespeare-tiny")
    model, name = load_model(str(bundled))
    rep = energy_report(model, model_name=name, variants=VARIANTS, context=ctx.energy_context)
    per_token_pj = {r.name: r.energy["total_pJ"] for r in rep.rows}
    job_j = {v: JOB_TOKENS * pj * 1e-12 for v, pj in per_token_pj.items()}
    series = synthetic_diurnal_trace(TRACE_START)
    cmp = compare_schedules(series, timedelta(hours=JOB_HOURS), NOW, DEADLINE, job_j)
    rows = cmp.rows()

    png = "carbon_schedule.png"
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.2), dpi=110,
                                 gridspec_kw={"width_ratios": [2.2, 1]})  # fmt: skip
    draw_plan(ax, series, cmp.plans)
    ax.axvline(DEADLINE, color="k", ls="--", lw=1)
    ax.set_title(f"{JOB_HOURS} h job submitted {NOW:%a %H:%M}, deadline {DEADLINE:%a %H:%M} UTC")
    fig.autofmt_xdate()
    width = 0.38
    for i, v in enumerate(VARIANTS):
        xs = [k + (i - 0.5) * width for k in range(len(rows))]
        bx.bar(xs, [r[f"gco2e_{v}"] * 1e3 for r in rows], width, label=v)
    bx.set_xticks(range(len(rows)), [r["strategy"] for r in rows])
    bx.set_ylabel("mgCO2e of the job (op-count estimate)")
    bx.legend(fontsize=8)
    bx.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(ctx.out / png)
    plt.close(fig)

    lines = [
        f"The job: generate {JOB_TOKENS:,} tokens with the bundled model ({name}) as a "
        f"{JOB_HOURS} h batch run submitted at {NOW:%Y-%m-%d %H:%M} UTC, due 24 h later. "
        f"Energy per token is the op-count **estimate** of `mulfree energy` (context "
        f"{ctx.energy_context}): "
        + ", ".join(f"{v} {per_token_pj[v] / 1e9:.3g} mJ" for v in VARIANTS)
        + " — so the job's arithmetic and memory traffic cost "
        + ", ".join(f"{v} {job_j[v]:.4g} J" for v in VARIANTS)
        + " (a model of the work, not wall power: a real machine adds its idle and "
        "uncounted power; the schedule savings below apply to that energy too).",
        "",
        f"Intensity: a **{series.label}** ({series.step} steps, mean "
        f"{sum(series.values) / len(series.values):.0f} gCO2e/kWh, evening peak, midday solar "
        "dip; see `mulfree.energy.savings.synthetic_diurnal_trace`).",
        "",
        "| schedule | start (UTC) | windows | mean gCO2e/kWh | vs start now | "
        + " | ".join(f"job gCO2e, {v}" for v in VARIANTS)
        + " |",
        "|---|---|---:|---:|---:|" + "---:|" * len(VARIANTS),
    ]
    for r in rows:
        lines.append(
            f"| {r['strategy']} | {r['start']:%a %H:%M} | {r['windows']} | "
            f"{r['mean_g_per_kwh']:.1f} | {0.0 - r['saving_percent']:+.1f} % | "
            + " | ".join(f"{r[f'gco2e_{v}']:.3g}" for v in VARIANTS)
            + " |"
        )
    best = rows[-1]
    lines += [
        "",
        f"Scheduling the interruptible job cuts its emissions by {best['saving_percent']:.1f} % "
        "against starting at once; the multiplication-free kernels cut the counted energy by "
        f"{100 * (1 - job_j['mulfree'] / job_j['fp32']):.1f} % against dense fp32 multiplies; "
        "the two multiply: "
        f"{best['gco2e_mulfree'] / rows[0]['gco2e_fp32'] * 100:.1f} % of the fp32 start-now "
        "emissions remain.",
        "",
        f"![intensity, windows and emissions]({png})",
        "",
        "With your own forecast (CSV `timestamp,gco2_per_kwh` or a service's JSON): "
        "`mulfree schedule --forecast FILE --duration 3h --deadline T --plot plan.png` "
        "(add `--interruptible` for the windows), and for training "
        "`mulfree train ... --carbon-forecast FILE --deadline T`.",
    ]
    return Section(
        key="carbon",
        title="Carbon-aware scheduling and multiplication-free arithmetic, for one job",
        body="\n".join(lines),
        files=[png],
    )
