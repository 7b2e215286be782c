"""The compiled detection and deblending paths against their oracles: scipy and the full deblend."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from stacklab.toolkit import (
    Exposure,
    deblend_sources,
    detect_sources,
    estimate_background,
    subtract_background,
)
from stacklab.toolkit._footprint_spans import (
    _grow,
    _grown_runs,
    _label_compact,
    _label_runs,
    _label_spans,
    _runs,
)
from stacklab.toolkit._peaks import _FWHM_PER_SIGMA, _saturated_stars
from stacklab.toolkit.process_frame import ProcessFrameConfig, _first_pass_psf, _gaussian_psf
from stacklab.toolkit.psf import fit_psf
from stacklab.toolkit.simulate import SimulationConfig, make_sky, simulate_visit


@pytest.mark.parametrize("seed", range(20))
def test_run_labelling_numbers_regions_as_ndimage_label(seed: int) -> None:
    rng = np.random.default_rng(seed)
    ny, nx = rng.integers(1, 150, 2)
    image = rng.random((ny, nx)) < rng.uniform(0.02, 0.7)
    if seed % 2:
        image = ndimage.binary_dilation(image)
    labels, n = _label_compact(image, np.ones((3, 3), dtype=bool))
    spans, m = _label_runs(image)
    assert m == n
    np.testing.assert_array_equal(spans, _label_spans(labels))


@pytest.mark.parametrize("seed", range(40))
def test_grown_runs_are_the_runs_of_the_grown_image(seed: int) -> None:
    rng = np.random.default_rng(seed)
    ny, nx = rng.integers(1, 90, 2)
    image = rng.random((ny, nx)) < rng.uniform(0.0, 0.3)
    if seed % 3 == 0:
        image = ndimage.binary_dilation(image)
    radius = rng.uniform(0.0, 9.0)
    want = _runs(np.ascontiguousarray(_grow(image, radius)))
    np.testing.assert_array_equal(_grown_runs(image, radius), want)


def _saturated_oracle(mask: np.ndarray, bit: int, sigma_px: float):
    # The whole-image computation: grow the SAT pixels, label, spans sorted by (y, x).
    saturated = (mask & bit) != 0
    labels, n = _label_compact(
        _grow(saturated, 2.0 * _FWHM_PER_SIGMA * sigma_px), np.ones((3, 3), bool)
    )
    centres = np.zeros((n + 1, 2), dtype=np.int64)
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        ys, xs = np.nonzero(saturated[sl] & (labels[sl] == k))
        centres[k] = (
            round((ys.min() + ys.max()) / 2) + sl[0].start,
            round((xs.min() + xs.max()) / 2) + sl[1].start,
        )
    spans = _label_spans(labels)
    return spans[np.lexsort((spans[:, 2], spans[:, 1]))], centres


@pytest.mark.parametrize("seed", range(30))
def test_saturated_stars_in_boxes_match_the_whole_image(seed: int) -> None:
    rng = np.random.default_rng(seed)
    ny, nx = rng.integers(20, 300, 2)
    exposure = Exposure(np.zeros((ny, nx)), variance=np.ones((ny, nx)))
    sat = np.zeros((ny, nx), dtype=bool)
    for _ in range(rng.integers(1, 30)):
        y, x = rng.integers(0, ny), rng.integers(0, nx)
        sat[y : y + rng.integers(1, 5), x : x + rng.integers(1, 4)] = True
        if rng.random() < 0.3:  # a bleed trail
            sat[y : y + rng.integers(1, 30), x] = True
    exposure.set_plane("SAT", sat)
    sigma = rng.uniform(0.3, 4.0)
    spans, centres = _saturated_stars(exposure, sigma)
    want_spans, want_centres = _saturated_oracle(
        exposure.mask, exposure.mask_planes.bitmask("SAT"), sigma
    )
    np.testing.assert_array_equal(spans, want_spans)
    np.testing.assert_array_equal(centres, want_centres)


@pytest.fixture(scope="module")
def crowded():
    config = SimulationConfig(size=512, seed=5, bands=("r",), star_density_arcmin2=80.0)
    sim = simulate_visit(make_sky(config), config, visit=0)
    return subtract_background(sim.exposure, estimate_background(sim.exposure))


def test_deblending_some_footprints_gives_their_rows_of_the_full_deblend(crowded) -> None:
    det = detect_sources(crowded)
    full = deblend_sources(crowded, det)
    chosen = np.flatnonzero(np.asarray(det.footprints["n_peaks"]) > 1)[::2] + 1
    part = deblend_sources(crowded, det, footprint_ids=chosen)
    rows = np.isin(full.sources["footprint"], chosen)
    assert len(part) == int(rows.sum()) > 0
    np.testing.assert_array_equal(part.sources["id"], np.arange(1, len(part) + 1))
    for name in ("footprint", "n_children", "peak_x", "peak_y", "flux_footprint", "template_x"):
        np.testing.assert_array_equal(part.sources[name], full.sources[name][rows])
    for got, want in zip(
        part.heavy_footprints, np.array(full.heavy_footprints, dtype=object)[rows], strict=True
    ):
        assert (got.x0, got.y0) == (want.x0, want.y0)
        np.testing.assert_array_equal(got.weights, want.weights)
    with pytest.raises(ValueError, match="footprint_ids"):
        deblend_sources(crowded, det, footprint_ids=[0])


def test_first_pass_psf_fit_is_the_fit_on_the_full_deblend(crowded) -> None:
    config = ProcessFrameConfig()
    guess = _gaussian_psf(config.initial_fwhm_px)
    fit = _first_pass_psf(crowded, guess, config, lambda name: None)
    first = detect_sources(crowded.replace(psf=guess), config.detection)
    want = fit_psf(
        crowded, deblend_sources(crowded, first, config.deblend), config.psf, labels=first.labels
    )
    assert not fit.fallback and len(fit.stars) > 10
    np.testing.assert_array_equal(fit.model.draw(100.0, 200.0), want.model.draw(100.0, 200.0))
    for name in ("x", "y", "flux", "chi2", "used", "reserved"):
        np.testing.assert_array_equal(fit.stars[name], want.stars[name])


def test_unmarked_detection_leaves_the_mask_and_finds_the_same_sources(crowded) -> None:
    mask = crowded.mask.copy()
    marked = detect_sources(crowded, keep_significance=True)
    unmarked = detect_sources(crowded, keep_significance=True, mark_detected=False)
    assert unmarked.exposure is crowded
    np.testing.assert_array_equal(crowded.mask, mask)
    assert (marked.exposure.plane("DETECTED") == (marked.labels > 0)).all()
    np.testing.assert_array_equal(unmarked.footprint_spans, marked.footprint_spans)
    np.testing.assert_array_equal(unmarked.significance, marked.significance)
    for name in marked.peaks.colnames:
        np.testing.assert_array_equal(unmarked.peaks[name], marked.peaks[name])
    for name in marked.footprints.colnames:
        np.testing.assert_array_equal(unmarked.footprints[name], marked.footprints[name])


def _candidates_oracle(significance, labels, searched, excluded, floor, owner, cy, cx, error2,
                       reach, threshold, tolerance, separation):  # fmt: skip
    # Every searched pixel against every peak of its footprint, one pixel at a time.
    ny, nx = significance.shape
    s = significance.astype(np.float64)
    found = []
    searchable = (significance >= floor) & searched[labels] & (labels > 0)
    for y, x in zip(*np.nonzero(searchable), strict=True):
        peaks = np.flatnonzero(
            (owner == labels[y, x]) & ((cy - y) ** 2 + (cx - x) ** 2 <= reach**2)
        )
        if len(peaks) == 0 or np.any((cy[peaks] - y) ** 2 + (cx[peaks] - x) ** 2 < separation**2):
            continue
        my, mx = 2.0 * cy[peaks] - y, 2.0 * cx[peaks] - x
        if np.any((my < 0) | (my > ny - 1) | (mx < 0) | (mx > nx - 1)):
            continue
        if np.any(excluded[np.rint(my).astype(int), np.rint(mx).astype(int)]):
            continue
        y0 = np.minimum(np.floor(my).astype(int), ny - 2)
        x0 = np.minimum(np.floor(mx).astype(int), nx - 2)
        fy, fx = my - y0, mx - x0
        top = s[y0, x0] * (1 - fx) + s[y0, x0 + 1] * fx
        bottom = s[y0 + 1, x0] * (1 - fx) + s[y0 + 1, x0 + 1] * fx
        mirrored = top * (1 - fy) + bottom * fy
        gx = (s[y0, x0 + 1] - s[y0, x0]) * (1 - fy) + (s[y0 + 1, x0 + 1] - s[y0 + 1, x0]) * fy
        used = mirrored >= 1.0
        explained = np.sum(np.minimum(s[y, x], mirrored[used]))
        shift = np.sum((2.0 * np.hypot(gx, bottom - top)[used]) ** 2 * error2[peaks][used])
        noise = np.sqrt(1.0 + used.sum() + shift + (tolerance * explained) ** 2)
        if s[y, x] - explained >= threshold * noise:
            found.append((y, x, s[y, x] - explained))
    return found


@pytest.mark.parametrize("seed", range(6))
def test_symmetry_candidates_match_the_pixel_by_pixel_oracle(seed: int) -> None:
    from stacklab.toolkit._symmetry_peaks import _candidates

    rng = np.random.default_rng(seed)
    ny, nx = rng.integers(40, 120, 2)
    # Pairs of overlapping Gaussian blobs (one faint on the other's slope), plus noise.
    yy, xx = np.mgrid[:ny, :nx]
    significance = rng.normal(0.0, 1.0, (ny, nx))
    py, px = [], []
    for _ in range(rng.integers(2, 8)):
        y, x = rng.uniform(0, ny), rng.uniform(0, nx)
        significance += rng.uniform(20, 300) * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 8.0)
        y2, x2 = y + rng.uniform(-6, 6), x + rng.uniform(-6, 6)
        significance += rng.uniform(5, 60) * np.exp(-((yy - y2) ** 2 + (xx - x2) ** 2) / 8.0)
        py.append(int(np.clip(round(y), 0, ny - 1)))
        px.append(int(np.clip(round(x), 0, nx - 1)))
    significance = significance.astype(np.float32)
    labels, n = ndimage.label(significance >= 5.0, np.ones((3, 3), dtype=bool))
    owner = labels[py, px]
    searched = rng.random(n + 1) < 0.8
    searched[0] = False
    excluded = rng.random((ny, nx)) < 0.002
    cy = np.array(py, float) + rng.uniform(-0.5, 0.5, len(py))
    cx = np.array(px, float) + rng.uniform(-0.5, 0.5, len(px))
    cy, cx = np.clip(cy, 0, ny - 1), np.clip(cx, 0, nx - 1)
    error2 = rng.uniform(0.01, 0.05, len(py))
    args = (float(np.float32(7.07)), owner, cy, cx, error2, 18.0, 5.0, 0.05, 3.0)
    ys, xs, z = _candidates(significance, labels, searched, excluded, *args)
    want = _candidates_oracle(significance, labels, searched, excluded, *args)
    assert [(int(y), int(x)) for y, x, _ in want] == list(
        zip(ys.tolist(), xs.tolist(), strict=True)
    )
    np.testing.assert_allclose(z, [w[2] for w in want], rtol=1e-12, atol=1e-9)


def test_block_sum_rounds_as_numpy_sums_a_row() -> None:
    from stacklab.toolkit._jit import _block_sum

    rng = np.random.default_rng(3)
    for n in range(129):
        values = rng.random(n) * np.exp(rng.normal(0.0, 8.0, n))
        assert _block_sum(values, n) == np.sum(values)


def test_centroid_iterations_match_the_numpy_loop() -> None:
    from stacklab.toolkit._deblend_kernels import _centroid_iterations

    rng = np.random.default_rng(4)
    n, half, weight = 40, 5, 1.0 / (2 * 1.5**2)
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
    start = rng.integers(0, 60, (n, 2)).astype(float)
    gx = (start[:, :1] + xx.ravel()).astype(float)
    gy = (start[:, 1:] + yy.ravel()).astype(float)
    true = start + rng.uniform(-2.0, 2.0, (n, 2))
    light = 100.0 * np.exp(-((gx - true[:, :1]) ** 2 + (gy - true[:, 1:]) ** 2) / 4.0)
    light[::7] = 0.0  # no light: the centre stays
    cx, cy = start[:, 0] + 0.5, start[:, 1] - 0.5
    for _ in range(6):
        w = light * np.exp(-((gx - cx[:, None]) ** 2 + (gy - cy[:, None]) ** 2) * weight)
        total = w.sum(axis=1)
        ok = total > 0
        safe = np.where(ok, total, 1.0)
        cx = np.where(ok, (w * gx).sum(axis=1) / safe, cx)
        cy = np.where(ok, (w * gy).sum(axis=1) / safe, cy)
    got_x, got_y = start[:, 0] + 0.5, start[:, 1] - 0.5
    _centroid_iterations(light, gx, gy, got_x, got_y, 6, weight)
    # Equal up to the last bits of the exponential (NumPy's SIMD exp vs libm's).
    np.testing.assert_allclose(got_x, cx, rtol=1e-13, atol=1e-12)
    np.testing.assert_allclose(got_y, cy, rtol=1e-13, atol=1e-12)
    np.testing.assert_array_equal(got_x[::7], start[::7, 0] + 0.5)


def test_pairwise_sum_rounds_as_numpy_sums() -> None:
    from stacklab.toolkit._matched_filter import _pairwise_sum

    rng = np.random.default_rng(5)
    for n in (*range(300), 1000, 4099, 70001):
        values = rng.random(n) * np.exp(rng.normal(0.0, 8.0, n))
        assert _pairwise_sum(values, n) == np.sum(values)


@pytest.mark.parametrize("size", [5, 13, 17])
def test_smoothed_at_is_the_numpy_window_sum(size: int) -> None:
    from stacklab.toolkit._matched_filter import _smoothed_at

    rng = np.random.default_rng(size)
    image = (rng.normal(0.0, 10.0, (60, 80)) ** 3).astype(np.float32)
    no_signal = rng.random(image.shape) < 0.05
    image[no_signal & (rng.random(image.shape) < 0.3)] = np.nan
    kernel = rng.random((size, size))
    ys, xs = rng.integers(0, 60, 500), rng.integers(0, 80, 500)
    # The window of every pixel, zero outside the image and on no_signal, summed by NumPy.
    h = size // 2
    dy = (h - np.arange(size))[None, :, None]
    dx = (h - np.arange(size))[None, None, :]
    y, x = ys[:, None, None] + dy, xs[:, None, None] + dx
    inside = (y >= 0) & (y < 60) & (x >= 0) & (x < 80)
    y, x = np.clip(y, 0, 59), np.clip(x, 0, 79)
    value = np.where(inside & ~no_signal[y, x], image[y, x].astype(np.float64), 0.0)
    want = np.sum(value * kernel[None], axis=(1, 2))
    np.testing.assert_array_equal(_smoothed_at(image, no_signal, kernel, ys, xs), want)


def test_nearest_centres_match_the_kd_tree_where_untied() -> None:
    from scipy.spatial import cKDTree

    from stacklab.toolkit._deblend_kernels import _nearest_centres

    rng = np.random.default_rng(6)
    n_tied = 0
    for _ in range(300):
        n = int(rng.integers(1, 12))
        k = min(n, int(rng.choice([1, 4])))
        nx, ny = (int(v) for v in rng.integers(5, 60, 2))
        centres = rng.integers(0, 2 * nx, (n, 2)) / 2.0  # the half-pixel grid
        pixels = np.sort(rng.choice(nx * ny, size=min(200, nx * ny), replace=False))
        dist, near, tied = _nearest_centres(pixels.astype(np.int64), nx, centres, k)
        y, x = np.divmod(pixels, nx)
        tree_dist, tree_near = cKDTree(centres).query(np.column_stack([x, y]), k=k)
        tree_dist, tree_near = tree_dist.reshape(-1, k), tree_near.reshape(-1, k)
        n_tied += int(tied.sum())
        # Where no left-out centre ties the k-th, the same centres at the same distances
        # (in the tree's order up to equal distances, which get equal stray weights).
        np.testing.assert_array_equal(dist[~tied], tree_dist[~tied])
        np.testing.assert_array_equal(np.sort(near[~tied]), np.sort(tree_near[~tied]))
        assert np.all(tree_dist[tied, -1] == dist[tied, -1])
    assert n_tied > 0


def _gaussian_kernel(sigma: float, half: int) -> np.ndarray:
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
    kernel = np.exp(-0.5 * (xx * xx + yy * yy) / sigma**2)
    return kernel / kernel.sum()


def _reference_significance(data, var, kernel, zero_data, fill_var):
    """``(data * K) / sqrt(var * K²)`` in float64 by ndimage (zero outside the image)."""
    data = np.where(zero_data, 0.0, data.astype(np.float64))
    var = np.where(fill_var[0], fill_var[1], var.astype(np.float64))
    smoothed = ndimage.convolve(data, kernel, mode="constant")
    noise2 = ndimage.convolve(var, kernel * kernel, mode="constant")
    return smoothed / np.sqrt(np.maximum(noise2, 1e-30))


@pytest.mark.parametrize("shape", [(150, 230), (5, 7), (1, 40)])
def test_separable_matched_filter_is_the_convolution(shape, monkeypatch) -> None:
    from stacklab.toolkit import _matched_filter as mf

    rng = np.random.default_rng(shape[0])
    var = (50.0 + 30.0 * rng.random(shape)).astype(np.float32)
    data = rng.normal(0.0, np.sqrt(var)).astype(np.float32)
    data[rng.random(shape) < 0.01] += 5e4  # bright pixels: FFT rounding spreads from them
    zero_data = rng.random(shape) < 0.03
    data[zero_data & (rng.random(shape) < 0.5)] = np.nan  # zeroed pixels may be NaN
    fill_var = (rng.random(shape) < 0.03, 60.0)
    # Off-centre and of different widths along x and y (separable, not symmetric), so
    # that a flipped or transposed pass shows.
    column = np.exp(-0.5 * ((np.arange(13) - 6.8) / 1.3) ** 2)
    row = np.exp(-0.5 * ((np.arange(11) - 4.6) / 1.9) ** 2)
    kernel = np.outer(column, row) / (column.sum() * row.sum())
    assert mf._separable_factors(kernel) is not None
    want = _reference_significance(data, var, kernel, zero_data, fill_var)
    got = mf._matched_filter(data, var, kernel, zero_data=zero_data, fill_var=fill_var)
    assert got.dtype == np.float32 and got.shape == shape
    scale = np.maximum(np.abs(want), 1.0)
    # Direct float32 sums: a few float32 roundings of each pixel's own terms.
    assert np.max(np.abs(got - want) / scale) < 2e-6
    # The FFT path (forced) gives the same image to its own, larger, rounding.
    monkeypatch.setattr(mf, "_separable_factors", lambda kernel: None)
    fft_path = mf._matched_filter(data, var, kernel, zero_data=zero_data, fill_var=fill_var)
    assert np.max(np.abs(fft_path - want) / scale) < 1e-3
    np.testing.assert_allclose(got, fft_path, rtol=0, atol=1e-3 * float(scale.max()))


def test_separable_factors_only_for_rank_one_kernels() -> None:
    from stacklab.toolkit._matched_filter import _separable_factors

    gaussian = _gaussian_kernel(2.0, 8)
    column, row = _separable_factors(gaussian)
    assert column.dtype == np.float32 and column.sum() > 0 and row.sum() > 0
    np.testing.assert_allclose(np.outer(column, row), gaussian, rtol=0, atol=1e-7 * gaussian.max())
    yy, xx = np.mgrid[-8:9, -8:9]
    sheared = np.exp(-0.5 * (xx * xx + 0.6 * xx * yy + yy * yy) / 4.0)
    assert _separable_factors(sheared / sheared.sum()) is None
    noise = 1e-6 * np.random.default_rng(1).random(gaussian.shape)
    assert _separable_factors(gaussian + noise) is None
    assert _separable_factors(np.zeros((5, 5))) is None
    assert _separable_factors(np.full((5, 5), np.nan)) is None
