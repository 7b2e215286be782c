"""The compiled warp kernel against direct per-pixel sums, and its cache fallback."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from stacklab.toolkit._lanczos import _table_taps, _tap_table
from stacklab.toolkit._warp_kernel import _resample_block


def _direct(x, y, image, var, good, mask, order, threshold, edge_bit):
    """One output pixel by the formulas of the warp module, with explicit loops (float64)."""
    ny, nx = image.shape
    ix, iy = int(np.floor(x)), int(np.floor(y))
    wx = _table_taps(np.array([x - ix]), order)[0].astype(np.float64)
    wy = _table_taps(np.array([y - iy]), order)[0].astype(np.float64)
    total = {"i": 0.0, "v": 0.0, "w": 0.0}
    bits = 0
    for j, yy in enumerate(range(iy - order + 1, iy + order + 1)):
        for i, xx in enumerate(range(ix - order + 1, ix + order + 1)):
            w = wy[j] * wx[i]
            on = 0 <= yy < ny and 0 <= xx < nx
            if on and good[yy, xx]:
                total["i"] += w * image[yy, xx]
                total["v"] += w * w * var[yy, xx]
                total["w"] += w
            if abs(w) > threshold:
                bits |= int(mask[yy, xx]) if on else edge_bit
    return total["i"] / total["w"], total["v"] / total["w"] ** 2, total["w"], bits


def test_kernel_matches_direct_sums_with_bad_pixels_and_edges() -> None:
    rng = np.random.default_rng(4)
    ny, nx, order, pad = 20, 24, 3, 4
    image = rng.normal(100.0, 10.0, (ny, nx)).astype(np.float32)
    var = rng.uniform(50.0, 150.0, (ny, nx)).astype(np.float32)
    mask = np.where(rng.random((ny, nx)) < 0.05, 4, 0).astype(np.int32)
    good = mask == 0
    planes = []
    for values in (np.where(good, image, 0), np.where(good, var, 0), good, mask):
        out = np.zeros(
            (ny + 2 * pad, nx + 2 * pad), dtype=np.float32 if values is not mask else np.int32
        )
        out[pad:-pad, pad:-pad] = values
        planes.append(out)
    special = (planes[3] != 0) | (planes[2] == 0)
    taps = 2 * order
    reach = np.zeros((special.shape[0] - taps + 1, special.shape[1] - taps + 1), dtype=bool)
    for r in range(reach.shape[0]):
        for c in range(reach.shape[1]):
            reach[r, c] = special[r : r + taps, c : c + taps].any()
    # Positions all over the input, its edges and beyond.
    xin = rng.uniform(-2.0, nx + 1.0, (6, 9))
    yin = rng.uniform(-2.0, ny + 1.0, (6, 9))
    det = rng.uniform(0.9, 1.1, (6, 9))
    out_i = np.zeros((6, 9), np.float32)
    out_v = np.full((6, 9), np.inf, np.float32)
    out_m = np.full((6, 9), 256, np.int32)
    edge_bit, no_data_bit = 128, 256
    _resample_block(
        xin, yin, det, 0, 0, *planes, reach, _tap_table(order), (ny, nx), pad,
        np.float32(0.05), np.float32(0.5), np.int32(edge_bit), np.int32(no_data_bit),
        out_i, out_v, out_m,
    )  # fmt: skip
    for r in range(6):
        for c in range(9):
            x, y = xin[r, c], yin[r, c]
            if not (-0.5 <= x <= nx - 0.5 and -0.5 <= y <= ny - 0.5):
                assert out_m[r, c] == no_data_bit and out_i[r, c] == 0 and np.isinf(out_v[r, c])
                continue
            value, variance, weight, bits = _direct(
                x, y, image, var, good, mask, order, 0.05, edge_bit
            )
            if weight < 0.5:
                assert out_m[r, c] & no_data_bit
                continue
            d = det[r, c]
            assert out_m[r, c] == bits
            assert out_i[r, c] == pytest.approx(value * d, rel=1e-5)
            assert out_v[r, c] == pytest.approx(variance * d * d, rel=1e-5)


def test_uncacheable_kernel_is_compiled_anyway(monkeypatch, caplog) -> None:
    import numba

    from stacklab.toolkit import _jit

    real = numba.njit

    def refusing(*args, **kwargs):
        if kwargs.get("cache"):
            msg = "cannot cache function 'f': no locator available for file 'f.py'"
            raise RuntimeError(msg)
        return real(*args, **kwargs)

    monkeypatch.setattr(_jit.numba, "njit", refusing)

    def add_one(x):
        return x + 1

    with caplog.at_level(logging.WARNING, logger="stacklab.toolkit._jit"):
        compiled = _jit._compiled(add_one)
    assert compiled(2) == 3
    assert "NUMBA_CACHE_DIR" in caplog.text
