"""The compiled weighted-mean accumulation against the same sums written with NumPy."""

from __future__ import annotations

import numpy as np

from stacklab.toolkit._combine_kernel import _add_to_mean


def test_mean_sums_match_numpy_bit_for_bit() -> None:
    rng = np.random.default_rng(9)
    shape, n_inputs = (7, 11), 3
    no_data, bad, clipped, sat = 1, 2, 4, 8
    combine_bad = no_data | bad | clipped
    sums = {
        "wsum": np.zeros(shape), "wdata": np.zeros(shape), "w2var": np.zeros(shape),
        "wsum_data": np.zeros(shape), "wsum_planes": np.zeros((1, *shape)),
        "mask": np.zeros(shape, np.int32), "count": np.zeros(shape, np.int16),
        "bits": np.zeros(shape, np.int64), "clipped_here": np.zeros(shape, bool),
    }  # fmt: skip
    expected = {k: v.copy() for k, v in sums.items()}
    for i in range(n_inputs):
        data = rng.normal(0.0, 5.0, (5, 8)).astype(np.float32)
        data[0, 0] = np.nan
        var = rng.uniform(1.0, 2.0, (5, 8)).astype(np.float32)
        m = rng.choice([0, 0, 0, no_data, bad, clipped, sat, sat | 16], (5, 8)).astype(np.int32)
        w = float(rng.uniform(0.5, 2.0))
        at = (slice(1 + i % 2, 6 + i % 2), slice(2, 10))
        _add_to_mean(
            data, var, m, at[0].start, at[1].start, w, np.int64(1) << np.int64(i),
            np.int32(combine_bad), np.int32(no_data), np.int32(bad | clipped),
            np.array([sat], np.int32), *sums.values(),
        )  # fmt: skip
        # The sums as NumPy wrote them before the kernel.
        e = expected
        has_data = (m & no_data) == 0
        used = ((m & combine_bad) == 0) & np.isfinite(data) & np.isfinite(var)
        wf = np.float64(w)
        np.add(e["wsum"][at], wf, out=e["wsum"][at], where=used)
        np.add(e["wdata"][at], data * wf, out=e["wdata"][at], where=used)
        np.add(e["w2var"][at], var * (wf * wf), out=e["w2var"][at], where=used)
        np.bitwise_or(e["mask"][at], m, out=e["mask"][at], where=used)
        e["count"][at] += used
        np.bitwise_or(e["bits"][at], np.int64(1) << np.int64(i), out=e["bits"][at], where=used)
        np.add(e["wsum_data"][at], wf, out=e["wsum_data"][at], where=has_data)
        e["wsum_planes"][0][at] += (has_data & ((m & sat) != 0)) * wf
        e["clipped_here"][at] |= has_data & ~used & ((m & (bad | clipped)) == 0)
    for name, value in sums.items():
        assert np.array_equal(value, expected[name]), name
