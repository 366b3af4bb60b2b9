"""Sampling policy (mulfree.engine.sampler's torch half) and the stop-string helpers (no server)."""

from __future__ import annotations

import pytest
import torch

from mulfree.engine.sampler import SamplingParams, make_generator, sample_batch
from mulfree.engine.sampler import sample_torch as sample
from mulfree.engine.stops import find_stop, holdback


def test_greedy_is_argmax():
    logits = torch.tensor([0.1, 3.0, 2.9, -1.0])
    assert sample(logits, SamplingParams(temperature=0), make_generator(0)) == 1


@pytest.mark.parametrize("params", [SamplingParams(top_k=1), SamplingParams(top_p=1e-6)])
def test_filters_that_keep_one_token_are_greedy(params):
    g = make_generator(0)
    logits = torch.randn(500, generator=torch.Generator().manual_seed(1))
    assert all(sample(logits, params, g) == int(logits.argmax()) for _ in range(20))


def test_top_k_and_top_p_restrict_the_support():
    logits = torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0])
    g = make_generator(0)
    seen_k = {sample(logits, SamplingParams(top_k=2), g) for _ in range(300)}
    assert seen_k == {0, 1}
    # softmax mass: 0.64, 0.24, 0.09, ...; top_p 0.8 keeps the first two (0.64 < 0.8 <= 0.88).
    seen_p = {sample(logits, SamplingParams(top_p=0.8), g) for _ in range(300)}
    assert seen_p == {0, 1}


def test_same_seed_same_tokens():
    logits = torch.randn(64, generator=torch.Generator().manual_seed(2))
    p = SamplingParams(temperature=1.3, top_p=0.9, top_k=20)
    a, b = make_generator(7), make_generator(7)
    assert [sample(logits, p, a) for _ in range(50)] == [sample(logits, p, b) for _ in range(50)]


def test_batched_sampling_equals_the_row_by_row_spec():
    g = torch.Generator().manual_seed(3)
    params = [
        SamplingParams(),
        SamplingParams(temperature=0),
        SamplingParams(temperature=0.7, top_p=0.9),
        SamplingParams(temperature=1.5, top_k=5),
        SamplingParams(temperature=0.3, top_p=0.5, top_k=50),
    ] * 3
    logits = torch.randn(len(params), 1000, generator=g) * 3
    seeds = list(range(len(params)))
    a = [make_generator(s) for s in seeds]
    b = [make_generator(s) for s in seeds]
    for _ in range(20):
        batched = sample_batch(logits, params, a)
        single = [sample(logits[i], p, b[i]) for i, p in enumerate(params)]
        assert batched == single
        logits = logits.roll(1, dims=1)


def test_zero_probability_tokens_are_never_drawn():
    logits = torch.full((50,), float("-inf"))
    logits[[0, 17, 49]] = torch.tensor([0.0, 1.0, 2.0])
    g = make_generator(1)
    drawn = {sample(logits, SamplingParams(), g) for _ in range(500)}
    assert drawn == {0, 17, 49}
    drawn = set(sample_batch(logits.expand(200, 50), [SamplingParams()] * 200, [g] * 200))
    assert drawn == {0, 17, 49}


@pytest.mark.parametrize(
    "text, stop, hold",
    [("hello wor", ("world",), 3), ("hello", ("xyz",), 0), ("ab\n", ("\n\n",), 1), ("", ("a",), 0)],
    ids=["partial-word", "no-prefix", "newline", "empty"],
)
def test_holdback_keeps_possible_stop_prefixes(text, stop, hold):
    assert holdback(text, stop) == hold


def test_find_stop_earliest():
    assert find_stop("one. two! three.", (".", "!"), 0) == 3
    assert find_stop("one. two! three.", (".", "!"), 4) == 8
    assert find_stop("none", ("x",), 0) is None


@pytest.mark.parametrize("seed", range(6))
def test_penalties_and_bias_are_the_twins_of_the_numpy_sampler(seed):
    """Greedy after penalties: the torch and NumPy samplers pick the same token (float32 both)."""
    import numpy as np

    from mulfree.engine.sampler import penalize

    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(200, generator=g) * 3
    history = torch.randint(0, 200, (90,), generator=g).tolist()
    p = SamplingParams(temperature=0, repeat_penalty=1.3, repeat_last_n=64,
                       presence_penalty=0.7, frequency_penalty=0.4)  # fmt: skip
    from mulfree.engine.sampler import _adjust

    want = penalize(logits.numpy(), history, p.sampler_config())
    assert np.array_equal(_adjust(logits, p, history).numpy(), want)
    assert sample(logits, p, make_generator(0), history) == int(np.argmax(want))
    biased = SamplingParams(temperature=0, logit_bias=((7, 100.0),))
    assert sample(logits, biased, make_generator(0)) == 7
    assert sample_batch(logits.expand(3, 200), [biased, p, SamplingParams(temperature=0)],
                        [make_generator(0)] * 3, [(), history, ()]) == [  # fmt: skip
        7, int(np.argmax(want)), int(logits.argmax())]


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams.defaults(),  # top-k 40, top-p 0.95, min-p 0.05
        SamplingParams(top_k=5, top_p=0.5),
        SamplingParams(top_k=3, top_p=0.999),
        SamplingParams(top_p=0.8),  # no top-k: the full sort
        SamplingParams(top_k=7),
        SamplingParams(min_p=0.2),
        SamplingParams(top_k=999, top_p=0.9),  # k >= V: off
    ],
    ids=["defaults", "k5-p0.5", "k3-p0.999", "p0.8", "k7", "minp0.2", "k-over-V"],
)
def test_row_filter_equals_the_spec_bit_for_bit(params):
    """sample_batch's fallback filters rows with the same params together (_filter_rows):
    every row equals the one-row spec _filter exactly, ties included (coarse
    logits make many ties at the k-th value and at the top-p boundary), with -inf logits."""
    from mulfree.engine.sampler import _filter, _filter_rows

    g = torch.Generator().manual_seed(11)
    smooth = torch.randn(6, 300, generator=g) * 2
    coarse = torch.randint(-4, 4, (6, 300), generator=g).float()  # ties everywhere
    coarse[1, :280] = float("-inf")  # fewer finite values than some k
    for x in (smooth, coarse):
        got = _filter_rows(x, params)
        want = torch.stack([_filter(x[r], params) for r in range(x.shape[0])])
        assert torch.equal(got, want)


def test_row_filter_with_nan_logits_follows_the_spec():
    """A NaN logit (a broken model): _filter_rows follows the spec there too."""
    from mulfree.engine.sampler import _filter, _filter_rows

    x = torch.randn(3, 100, generator=torch.Generator().manual_seed(5))
    x[1, 17] = float("nan")
    p = SamplingParams.defaults()
    got = _filter_rows(x, p)
    want = torch.stack([_filter(x[r], p) for r in range(3)])
    assert torch.equal(got.isnan(), want.isnan())
    assert torch.equal(got.nan_to_num(0.0), want.nan_to_num(0.0))


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams.defaults(temperature=1.0),  # top-k 40, top-p 0.95, min-p 0.05
        SamplingParams.defaults(temperature=0.7, min_p=0.0),
        SamplingParams(temperature=1.3, top_k=5),
        SamplingParams(temperature=0.9, top_k=12, min_p=0.1),
        SamplingParams(temperature=1.0, top_k=299, top_p=0.5),  # k = V - 1
    ],
    ids=["defaults", "k40-p0.95", "k5", "k12-minp", "k-V-1"],
)
def test_top_k_draw_equals_the_full_draw_at_every_cdf_boundary(params):
    """_draw_top_k (the work after top-k on the k candidates) against _draw_full (the spec's
    ops over the whole vocabulary) with the uniform numbers placed on the spec's own CDF
    steps and one float64 ulp either side: a CDF value that differs in its last bit from the
    spec's moves a token at one of these places, so equal tokens here mean equal CDFs."""
    import numpy as np

    from mulfree.engine.sampler import _draw_full, _draw_top_k, _filter_rows

    g = torch.Generator().manual_seed(4)
    x = torch.randn(8, 300, generator=g) * 3
    temps = torch.full((8,), params.temperature)
    spec_cdf = torch.cumsum(torch.softmax(_filter_rows(x / temps[:, None], params), -1), -1)
    taken = 0
    for r in range(8):
        total = float(spec_cdf[r, -1])
        steps = sorted({float(v) / total for v in spec_cdf[r].unique() if 0 < v})
        us = [np.nextafter(s, d) for s in steps for d in (0.0, 2.0)] + steps + [0.0]
        us = torch.tensor([min(u, np.nextafter(1.0, 0.0)) for u in us], dtype=torch.float64)
        rows = x[r].expand(len(us), -1)
        t = temps[:1].expand(len(us))
        fast = _draw_top_k(rows, t, params, us)
        assert fast is not None  # smooth logits: no tie at the k-th value, the shortcut runs
        assert torch.equal(fast, _draw_full(rows, t, params, us))
        taken += len(us)
    assert taken > 8 * 4


def test_top_k_draw_declines_wide_ties_and_non_finite_logits():
    """Ties with the k-th value past the window, a NaN or an infinite logit: _draw_top_k leaves
    the row to _draw_full (the spec's ops), and sample_batch still equals the spec row by row."""
    from mulfree.engine.sampler import _draw_top_k

    p = SamplingParams.defaults(temperature=1.0)
    u = torch.full((1,), 0.5, dtype=torch.float64)
    tie = torch.randn(1, 100, generator=torch.Generator().manual_seed(1))
    tie[0, :90] = 5.0  # 90 values tied at the top: past the window of 2k + 8 = 88
    nan = torch.randn(1, 100, generator=torch.Generator().manual_seed(2))
    nan[0, 3] = float("nan")
    inf = torch.randn(1, 100, generator=torch.Generator().manual_seed(3))
    inf[0, 9] = float("inf")
    few = torch.full((1, 100), float("-inf"))
    few[0, :10] = torch.arange(10.0)  # fewer finite values than k
    for x in (tie, nan, inf, few):
        assert _draw_top_k(x, torch.ones(1), p, u) is None
    x = torch.cat((tie, few, torch.randn(2, 100, generator=torch.Generator().manual_seed(4))))
    a = [make_generator(s) for s in range(4)]
    b = [make_generator(s) for s in range(4)]
    for _ in range(10):
        assert sample_batch(x, [p] * 4, a) == [sample(x[i], p, b[i]) for i in range(4)]


def test_a_generator_shared_by_rows_is_drawn_in_row_order():
    """Rows with different filters are drawn in groups, but each row's uniform number comes
    from its generator in row order, as when the rows are sampled one by one."""
    x = torch.randn(6, 200, generator=torch.Generator().manual_seed(8)) * 2
    params = [SamplingParams.defaults(temperature=1.0), SamplingParams(temperature=0.8),
              SamplingParams(temperature=1.1, top_k=7), SamplingParams.defaults(temperature=1.0),
              SamplingParams(temperature=0), SamplingParams(temperature=0.8)]  # fmt: skip
    ga, gb = make_generator(5), make_generator(5)
    for _ in range(10):
        got = sample_batch(x, params, [ga] * 6)
        assert got == [sample(x[i], p, gb) for i, p in enumerate(params)]
        x = x.roll(3, dims=1)


@pytest.mark.parametrize("k", [1, 5, 40])
def test_top_k_draw_keeps_the_ties_of_the_k_th_value(k):
    """Quantized logits (a packed model's: integer sums times a scale) tie often at the k-th
    value; the spec keeps every tied value, and so does the window, at every CDF boundary."""
    import numpy as np

    from mulfree.engine.sampler import _draw_full, _draw_top_k, _filter_rows

    g = torch.Generator().manual_seed(k)
    x = torch.randint(-80, 80, (6, 500), generator=g).float() * 0.25  # many ties
    for params in (SamplingParams.defaults(temperature=1.0, top_k=k),
                   SamplingParams(temperature=0.8, top_k=k, min_p=0.2)):  # fmt: skip
        temps = torch.full((6,), params.temperature)
        filt = _filter_rows(x / temps[:, None], params)
        top_k_only = _filter_rows(x / temps[:, None], SamplingParams(top_k=k))
        assert int(torch.isfinite(top_k_only).sum(-1).max()) > k  # ties survive the top-k
        spec_cdf = torch.cumsum(torch.softmax(filt, -1), -1)
        for r in range(6):
            total = float(spec_cdf[r, -1])
            steps = sorted({float(v) / total for v in spec_cdf[r].unique() if 0 < v})
            us = [np.nextafter(s, d) for s in steps for d in (0.0, 2.0)] + steps
            us = torch.tensor([min(u, np.nextafter(1.0, 0.0)) for u in us], dtype=torch.float64)
            rows, t = x[r].expand(len(us), -1), temps[:1].expand(len(us))
            fast = _draw_top_k(rows, t, params, us)
            assert fast is not None
            assert torch.equal(fast, _draw_full(rows, t, params, us))
