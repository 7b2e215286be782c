"""The batched model fits' compiled kernels and shortcuts against slow, obvious oracles."""

from __future__ import annotations

from pathlib import Path

import galsim
import numpy as np
import pytest
from scipy import optimize

from stacklab.toolkit import _model_fits as fits
from stacklab.toolkit import _psf_flux_fits as psf_flux_fits
from stacklab.toolkit._model_fit_kernels import (
    _psf_normal_equations,
    _psf_sums,
    _template_spectra,
)


def _random_batch(
    rng: np.random.Generator,
    n: int = 6,
    size: int = 45,
    fluxes: tuple[float, float] = (500, 2e4),
    neighbours: float = 0.0,
):
    """Galaxy-like stamps (exp + deV of random shapes, Gaussian PSF), noise, a few bad pixels.

    A fraction ``neighbours`` of the stamps also hold a brighter galaxy 12-18 px away.
    """
    ksize = 31
    stamps, weights, kernels, centres, shapes, psf_shapes = [], [], [], [], [], []
    for i in range(n):
        sigma = rng.uniform(1.3, 2.2)
        psf = galsim.Gaussian(sigma=sigma)
        kernel = psf.drawImage(nx=ksize, ny=ksize, scale=1.0, method="no_pixel").array
        kernel = kernel / kernel.sum()
        hlr = 0.0 if i == 0 else rng.uniform(0.5, 4.0)  # the first, a star
        dx, dy = rng.uniform(-0.5, 0.5, 2)
        shape = galsim.Shear(g1=rng.uniform(-0.3, 0.3), g2=rng.uniform(-0.3, 0.3))
        flux = rng.uniform(*fluxes)
        if hlr == 0:
            galaxy = psf.withFlux(flux)
        else:
            exp = galsim.Exponential(half_light_radius=hlr).shear(shape)
            dev = galsim.DeVaucouleurs(half_light_radius=hlr).shear(shape)
            galaxy = galsim.Convolve(0.7 * exp + 0.3 * dev, psf).withFlux(flux)
        image = galaxy.drawImage(
            nx=size, ny=size, scale=1.0, method="no_pixel", offset=(dx, dy)
        ).array.astype(np.float64)
        if rng.random() < neighbours:
            angle, distance = rng.uniform(0, 2 * np.pi), rng.uniform(12.0, 18.0)
            other = galsim.Convolve(galsim.Exponential(half_light_radius=2.0), psf)
            image += other.withFlux(3.0 * flux).drawImage(
                nx=size, ny=size, scale=1.0, method="no_pixel",
                offset=(distance * np.cos(angle), distance * np.sin(angle)),
            ).array  # fmt: skip
        variance = 25.0 + 0.2 * np.abs(image)
        image = image + rng.normal(0.0, np.sqrt(variance))
        weight = 1.0 / variance
        weight[rng.random((size, size)) < 0.01] = 0.0
        c = size // 2
        sigma2 = sigma**2
        moments = (c + dx, c + dy, sigma2 * (1 + 0.3 * i), sigma2 * (1 + 0.2 * i), 0.1 * i)
        stamps.append(image)
        weights.append(weight)
        kernels.append(kernel)
        centres.append((c + dx, c + dy))
        shapes.append(moments)
        psf_shapes.append((c, c, sigma2, sigma2, 0.0))
    return (
        np.array(stamps), np.array(weights), np.array(kernels), np.array(centres),
        shapes, psf_shapes,
    )  # fmt: skip


def _model_fluxes_oracle(stamps, weights, psf_stamps, centres, shapes, psf_shapes):
    """The model fits as first written: NumPy transforms in double precision, SciPy's NNLS."""
    n, size = stamps.shape[0], stamps.shape[1]
    psf_ft = np.fft.rfft2(psf_stamps)
    c = np.tile(np.eye(2) * 0.25, (n, 1, 1))
    for i, (shape, psf_shape) in enumerate(zip(shapes, psf_shapes, strict=True)):
        c[i] = [[shape[2] - psf_shape[2], shape[4] - psf_shape[4]],
                [shape[4] - psf_shape[4], shape[3] - psf_shape[3]]]  # fmt: skip
    evals, evecs = np.linalg.eigh(c)
    evals = np.maximum(evals, 0.05 * np.maximum(evals.max(axis=1), 0.25)[:, None])
    c = (evecs * evals[:, None, :]) @ np.swapaxes(evecs, 1, 2)
    det = np.linalg.det(c)
    unit = c / np.sqrt(det)[:, None, None]
    hlr0 = 1.2 * det**0.25
    ky = np.fft.fftfreq(size)[:, None] * 2 * np.pi
    kx = np.fft.rfftfreq(size)[None, :] * 2 * np.pi
    u00, u01, u11 = (unit[:, i, j, None, None] for i, j in ((0, 0), (0, 1), (1, 1)))
    kk = np.sqrt(u00 * kx * kx + 2 * u01 * kx * ky + u11 * ky * ky)
    offset = centres - size // 2
    phase = np.exp(-1j * (kx * offset[:, 0, None, None] + ky * offset[:, 1, None, None]))
    q = kk[:, None] * (hlr0[:, None] * fits._SIZE_FACTORS)[:, :, None, None]
    grid, values, _ = fits._dev_table()
    profiles = {
        "exp": (1.0 + (q / fits._EXP_HLR_PER_SCALE) ** 2) ** -1.5,
        "dev": np.interp(q, grid, values, right=0.0),
    }
    best = {}
    for kind, profile in profiles.items():
        models = np.fft.irfft2(profile * (psf_ft * phase)[:, None], s=(size, size))
        den = np.einsum("nsyx,nyx->ns", models**2, weights)
        num = np.einsum("nsyx,nyx->ns", models, weights * stamps)
        gain = np.where(den > 0, num * num / np.where(den > 0, den, 1.0), -np.inf)
        j = np.argmax(gain, axis=1)
        best[kind] = (models[np.arange(n), j], (num / den)[np.arange(n), j])
    out = []
    for i in range(n):
        a = np.stack([best["exp"][0][i].ravel(), best["dev"][0][i].ravel()], axis=1)
        sw = np.sqrt(weights[i].ravel())
        coeffs, _ = optimize.nnls(a * sw[:, None], stamps[i].ravel() * sw)
        combined = a @ coeffs
        den_i = np.sum(weights[i].ravel() * combined**2)
        flux = coeffs.sum()
        out.append((flux, flux / np.sqrt(den_i), coeffs[1] / flux, best["exp"][1][i]))
    return np.array(out)


@pytest.mark.parametrize("tolerance", [fits._SCAN_TOLERANCE, 1.0])
def test_model_fluxes_match_double_precision_oracle(
    tolerance: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A tolerance of 1 sends every source's size scan to the double-precision rescan.
    monkeypatch.setattr(fits, "_SCAN_TOLERANCE", tolerance)
    rng = np.random.default_rng(11)
    stamps, weights, kernels, centres, shapes, psf_shapes = _random_batch(rng)
    _assert_model_fluxes_match_the_oracle(stamps, weights, kernels, centres, shapes, psf_shapes)


@pytest.mark.parametrize("seed", [21, 25, 34])
def test_size_search_picks_the_full_scans_size(seed: int) -> None:
    # Faint and bright sources of all sizes, some with a neighbour: noisy gain curves,
    # some with two maxima. (With seeds 25 and 34 a search that drew only the grid's
    # ends, or never fell back to the full scan, would choose other sizes.)
    rng = np.random.default_rng(seed)
    stamps, weights, kernels, centres, shapes, psf_shapes = _random_batch(
        rng, n=40, fluxes=(150.0, 5e4), neighbours=0.3
    )
    _assert_model_fluxes_match_the_oracle(stamps, weights, kernels, centres, shapes, psf_shapes)


def _assert_model_fluxes_match_the_oracle(stamps, weights, kernels, centres, shapes, psf_shapes):
    size = stamps.shape[1]
    middle = np.full(len(stamps), float(size // 2))
    psf_stamps = psf_flux_fits._place_all(kernels, size, middle, middle)
    got = np.array(fits._model_fluxes(stamps, weights, psf_stamps, centres, shapes, psf_shapes))
    expected = _model_fluxes_oracle(stamps, weights, psf_stamps, centres, shapes, psf_shapes)
    # flux, flux_err, flux_exp to double-precision rounding; frac_dev absolutely.
    np.testing.assert_allclose(got[:, [0, 1, 3]], expected[:, [0, 1, 3]], rtol=1e-9)
    np.testing.assert_allclose(got[:, 2], expected[:, 2], atol=1e-8)


def _search_curves(curves: np.ndarray, start: np.ndarray):
    """Run the size search on gain curves (n, sizes): chosen sizes, what it drew, ambiguous."""
    drawn = np.zeros(curves.shape, dtype=bool)

    def draw(sources, sizes):
        assert not drawn[sources, sizes].any(), "a size drawn twice"
        drawn[sources, sizes] = True
        # Unit templates: the gain num² / den is the curve.
        return np.ones(len(sources)), np.sqrt(curves[sources, sizes])

    best, _, _, ambiguous = fits._search_sizes(draw, start, np.full(len(curves), 1e4))
    return best, drawn, ambiguous


def test_size_search_finds_the_maximum_of_unimodal_curves() -> None:
    rng = np.random.default_rng(4)
    n, m = 2000, len(fits._SIZE_FACTORS)
    peak = rng.integers(0, m, n)
    # Strictly rising to the peak, strictly falling after it, steps of random size.
    steps = rng.uniform(0.01, 5.0, (n, m))
    signs = np.where(np.arange(m) <= peak[:, None], 1.0, -1.0)
    curves = np.cumsum(steps * signs, axis=1)
    curves += 1.0 - curves.min(axis=1, keepdims=True)
    best, drawn, ambiguous = _search_curves(curves, rng.integers(0, m, n))
    np.testing.assert_array_equal(best, peak)
    assert not ambiguous.any()
    # Started at the peak, the search draws only the sizes it always draws, the peak
    # and its neighbours.
    best, drawn, _ = _search_curves(curves, peak)
    np.testing.assert_array_equal(best, peak)
    expected = np.zeros((n, m), dtype=bool)
    expected[:, fits._ALWAYS_DRAWN] = True
    for step in (-1, 0, 1):
        expected[np.arange(n), np.clip(peak + step, 0, m - 1)] = True
    np.testing.assert_array_equal(drawn, expected)


def test_size_search_finds_a_second_maximum_at_the_ends() -> None:
    # An interior maximum near the start, another at size 0 or at the largest size
    # (a point source; a large template reaching a neighbour), either one the higher.
    rng = np.random.default_rng(9)
    n, m = 2000, len(fits._SIZE_FACTORS)
    x = np.arange(m)
    centre = rng.integers(2, m - 2, n)
    curves = 10.0 - rng.uniform(0.5, 3.0, (n, 1)) * np.abs(x - centre[:, None])
    end = np.where(rng.random(n) < 0.5, 0, m - 1)
    curves[np.arange(n), end] = 10.0 + rng.uniform(-2.0, 2.0, n)
    curves += 30.0
    start = np.clip(centre + rng.integers(-1, 2, n), 0, m - 1)
    best, drawn, ambiguous = _search_curves(curves, start)
    np.testing.assert_array_equal(best, np.argmax(curves, axis=1))
    assert not ambiguous.any()
    # A dip in the drawn gains sends the source to the full scan.
    assert drawn.all(axis=1).any()


def test_size_search_draws_every_size_of_curves_not_clearly_unimodal() -> None:
    m = len(fits._SIZE_FACTORS)
    # Two interior maxima, the start on the lower one's: a dip between the drawn sizes.
    curves = np.array([[1.0, 2.0, 3.0, 2.5, 1.0, 2.0, 5.0, 4.0, 2.8]])
    best, drawn, ambiguous = _search_curves(curves, np.array([2]))
    assert best[0] == 6 and drawn.all() and not ambiguous[0]
    # Equal gains everywhere (no strict maximum): the full scan, its first size, and
    # flagged for the double-precision search (the order of equal gains is rounding's).
    best, drawn, ambiguous = _search_curves(np.full((1, m), 7.0), np.array([4]))
    assert best[0] == 0 and drawn.all() and ambiguous[0]


def test_psf_kernels_match_numpy_sums() -> None:
    rng = np.random.default_rng(3)
    stamps, weights, kernels, centres, _, _ = _random_batch(rng, n=4)
    size = stamps.shape[1]
    model = psf_flux_fits._place_all(kernels, size, centres[:, 0], centres[:, 1])
    normal, rhs = np.empty((4, 3, 3)), np.empty((4, 3))
    _psf_normal_equations(model, weights, stamps, np.arange(4), normal, rhs)
    gy, gx = np.gradient(model, axis=(1, 2))
    design = np.stack([model, -gx, -gy], axis=-1).reshape(4, -1, 3)
    w = np.where(model != 0, weights, 0.0).reshape(4, -1, 1)
    expected = np.swapaxes(design * w, 1, 2) @ design
    # Off-diagonal terms of a symmetric PSF cancel: rounding relative to the matrix.
    np.testing.assert_allclose(normal, expected, rtol=0, atol=1e-12 * np.abs(expected).max())
    expected_rhs = np.einsum("npk,np->nk", design * w, stamps.reshape(4, -1))
    np.testing.assert_allclose(rhs, expected_rhs, rtol=0, atol=1e-12 * np.abs(expected_rhs).max())
    broad = np.roll(model, 1, axis=2) * 0.3 + model * 0.7
    sums = np.empty((4, 5))
    _psf_sums(model, broad, weights, stamps, sums)
    pwx = np.einsum("nyx,nyx,nyx->n", weights, model, stamps)
    gwx = np.einsum("nyx,nyx,nyx->n", weights, broad, stamps)
    ratio = gwx / pwx
    expected_sums = np.column_stack([
        np.einsum("nyx,nyx,nyx->n", weights, model, model), pwx, gwx,
        np.einsum("nyx,nyx,nyx->n", weights, broad, model),
        np.sum(weights * (broad - ratio[:, None, None] * model) ** 2, axis=(1, 2)),
    ])  # fmt: skip
    np.testing.assert_allclose(sums, expected_sums, rtol=1e-11)


@pytest.mark.parametrize("dev", [False, True])
def test_template_spectra_match_numpy_profiles(dev: bool) -> None:
    rng = np.random.default_rng(5)
    n, size = 3, 45
    psf = rng.normal(size=(n, size, size // 2 + 1)) + 1j * rng.normal(size=(n, size, size // 2 + 1))
    u01 = rng.uniform(-0.3, 0.3, n)
    u00 = rng.uniform(0.7, 1.4, n)
    u11 = (1.0 + u01**2) / u00
    ky = np.fft.fftfreq(size) * 2 * np.pi
    kx = np.fft.rfftfreq(size) * 2 * np.pi
    grid, values, slopes = fits._dev_table()
    # Sizes 0, tiny (below the first node), ordinary, and so large that q passes the table's end;
    # radii that put q exactly on nodes of the table.
    kk0 = np.sqrt(u00[0] * kx[3] ** 2 + 2 * u01[0] * kx[3] * ky[2] + u11[0] * ky[2] ** 2)
    radii = np.array([0.0, 1e-4, 0.37, 2.5, 4000.0, grid[200] / kk0, grid[1] / kk0])
    radii = np.tile(radii, (n, 1))
    kk = np.sqrt(
        u00[:, None, None] * kx * kx
        + 2 * u01[:, None, None] * kx * ky[:, None]
        + u11[:, None, None] * ky[:, None] * ky[:, None]
    )
    with np.errstate(divide="ignore"):
        position = (np.log(kk) - np.log(grid[1])) * fits._dev_steps_per_log()
    out = np.empty((n, radii.shape[1], size, size // 2 + 1), dtype=np.complex128)
    work = np.empty(size // 2 + 1)
    _template_spectra(
        psf, kk, position, np.arange(n), radii, dev, grid, values, slopes,
        fits._dev_steps_per_log(), work, out,
    )  # fmt: skip
    q = kk[:, None] * radii[:, :, None, None]
    if dev:
        profile = np.interp(q, grid, values, right=0.0)
    else:
        profile = (1.0 + (q / fits._EXP_HLR_PER_SCALE) ** 2) ** -1.5
    np.testing.assert_allclose(out, profile * psf[:, None], rtol=1e-13, atol=1e-300)


def test_combine_is_nnls() -> None:
    rng = np.random.default_rng(8)
    n, size = 40, 15
    yy, xx = np.indices((size, size)) - size // 2
    r = np.hypot(xx, yy)
    e = np.exp(-r / 2.0)[None] * rng.uniform(0.5, 1.5, (n, 1, 1))
    d = np.exp(-((r + 0.1) ** 0.25) * 3.0)[None] * rng.uniform(0.5, 1.5, (n, 1, 1))
    # Collinear pairs: identical templates (a point source's exp and deV), and scaled copies.
    d[:5] = e[:5]
    d[5:8] = 2.0 * e[5:8]
    mix = rng.uniform(-1.0, 2.0, (n, 2)) * 100.0
    weights = rng.uniform(0.5, 2.0, (n, size, size))
    stamps = mix[:, 0, None, None] * e + mix[:, 1, None, None] * d
    stamps += rng.normal(0.0, 3.0, stamps.shape) / np.sqrt(weights)
    valid = np.ones(n, dtype=bool)
    got = fits._combine((valid, e, np.zeros(n)), (valid, d, np.zeros(n)), weights, stamps)
    for i in range(n):
        a = np.stack([e[i].ravel(), d[i].ravel()], axis=1)
        sw = np.sqrt(weights[i].ravel())
        coeffs, _ = optimize.nnls(a * sw[:, None], stamps[i].ravel() * sw)
        if not np.any(coeffs > 0):
            assert got[i] is None
            continue
        result = got[i]
        assert result is not None
        flux = coeffs.sum()
        combined = a @ coeffs
        err = flux / np.sqrt(np.sum(weights[i].ravel() * combined**2))
        np.testing.assert_allclose(result[:2], (flux, err), rtol=1e-9)
        assert result[2] == pytest.approx(coeffs[1] / flux, abs=1e-9)


def test_an_even_sized_psf_stamp_is_placed_and_shifted():
    # The Psf protocol asks for odd stamps, but even ones worked before the padding
    # became FFT-friendly: the padded grid must keep the kernel's centre.
    yy, xx = np.mgrid[0:20, 0:20] - 10.0
    kernel = np.exp(-0.5 * (xx * xx + yy * yy) / 2.0**2)
    kernel /= kernel.sum()
    whole = psf_flux_fits._place(kernel, 31, 15.0, 15.0)
    np.testing.assert_array_equal(whole[5:25, 5:25], kernel)
    moved = psf_flux_fits._place(kernel, 31, 15.3, 15.0)
    yy, xx = np.mgrid[0:31, 0:31]
    assert moved.sum() == pytest.approx(1.0, abs=1e-6)
    assert (moved * xx).sum() / moved.sum() == pytest.approx(15.3, abs=1e-3)
    assert (moved * yy).sum() / moved.sum() == pytest.approx(15.0, abs=1e-3)


def test_good_size_is_the_smallest_odd_length_of_small_prime_factors() -> None:
    from stacklab.toolkit._stamps import good_size

    def smooth(m: int) -> bool:
        for p in (3, 5, 7, 11, 13):
            while m % p == 0:
                m //= p
        return m == 1

    for n in range(1, 400):
        m = good_size(n)
        assert m >= n and m % 2 == 1 and smooth(m)
        assert not any(smooth(k) for k in range(n + (1 - n % 2), m, 2))
    assert good_size(51) == 55 and good_size(41) == 45 and good_size(47) == 49


def test_psf_flux_of_a_source_off_the_centre_of_a_stamp_no_larger_than_the_kernel() -> None:
    # The measurement stamp is only as large as the PSF kernel: a source 1.6 px off
    # centre has the kernel's outer columns off the stamp. The fit uses the pixels
    # that remain, whose model values are exact: no bias.
    sigma, ksize = 2.4, 31
    yy, xx = np.mgrid[0:ksize, 0:ksize] - ksize // 2
    kernel = np.exp(-0.5 * (xx * xx + yy * yy) / sigma**2)
    kernel /= kernel.sum()
    kernel = 0.97 * kernel + 0.03 / kernel.size  # a wing reaching the stamp's edge
    true_x, true_y, flux = 15.0 + 1.6, 15.0 - 0.7, 5.0e4
    data = flux * psf_flux_fits._place(kernel, ksize, true_x, true_y)
    assert data.sum() < 0.998 * flux  # part of the source is off the stamp
    stamps, weights = data[None], np.ones((1, ksize, ksize))
    got, _, x, y, *_ = psf_flux_fits._psf_fluxes(
        stamps, weights, kernel[None], np.array([[true_x - 0.2, true_y + 0.15]])
    )
    assert got[0] == pytest.approx(flux, rel=1e-5)
    assert (x[0], y[0]) == pytest.approx((true_x, true_y), abs=1e-3)


def test_dev_table_is_galsims_transform() -> None:
    from stacklab.toolkit import _dev_transform

    grid, values, slopes = fits._dev_table()
    np.testing.assert_array_equal(grid, fits._dev_nodes())
    # The shipped values where GalSim is the version that made them, else computed:
    # either way GalSim's own numbers, bit for bit.
    np.testing.assert_array_equal(values, fits._galsim_dev_values(grid))
    np.testing.assert_array_equal(slopes, np.diff(values) / np.diff(grid))
    if galsim.__version__ != _dev_transform.GALSIM_VERSION:
        pytest.skip(
            f"_dev_transform was made with GalSim {_dev_transform.GALSIM_VERSION}, this is "
            f"{galsim.__version__}: rewrite it with python -m stacklab.toolkit._model_fits"
        )
    assert len(_dev_transform.VALUES) == len(grid)


def test_dev_transform_file_is_rewritten_unchanged(tmp_path) -> None:
    from stacklab.toolkit import _dev_transform

    copy = tmp_path / "_dev_transform.py"
    original = Path(_dev_transform.__file__).read_text()
    copy.write_text(original)
    fits._write_dev_transform(copy)
    if galsim.__version__ == _dev_transform.GALSIM_VERSION:
        assert copy.read_text() == original
    namespace: dict = {}
    exec(copy.read_text(), namespace)  # the rewritten module is valid Python
    np.testing.assert_array_equal(namespace["VALUES"], fits._galsim_dev_values(fits._dev_nodes()))
