"""Coadds: photometry and variance against truth, artifact rejection, CoaddPsf, bad input."""

from __future__ import annotations

import logging
from pathlib import Path

import galsim
import numpy as np
import pytest

from stacklab.toolkit.coadd import CoaddConfig, coadd
from stacklab.toolkit.simulate import SimulationConfig, make_sky, simulate_visit
from stacklab.toolkit.skymap import patch_covering

N_VISITS = 8


@pytest.fixture(scope="module")
def field():
    """Eight r visits, no artifacts of their own; a trail is injected in one."""
    config = SimulationConfig(
        size=320, bands=("r",), visits_per_band=N_VISITS, seed=7, star_density_arcmin2=60.0,
        galaxy_density_arcmin2=10.0, variable_star=True, sip_distortion_px=0.0,
        dither_arcsec=6.0,
    )  # fmt: skip
    sky = make_sky(config)
    sims = [simulate_visit(sky, config, visit=v) for v in range(N_VISITS)]
    exposures = [s.exposure.replace(image=s.exposure.image - s.sky) for s in sims]
    return sky, sims, exposures, patch_covering(exposures)


def _with_trail(exposures, sims, visit=3, peak_sigma=8.0):
    """Add a PSF-wide trail across one visit; return the inputs and its truth mask."""
    exp = exposures[visit]
    ny, nx = exp.shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    distance = np.abs((xx - 40) * np.sin(0.7) - (yy - 30) * np.cos(0.7))
    sigma_px = 1.8
    noise = float(np.sqrt(np.median(exp.variance)))
    trail = peak_sigma * noise * np.exp(-0.5 * (distance / sigma_px) ** 2)
    truth = trail > 0.1 * noise
    out = list(exposures)
    out[visit] = exp.replace(image=exp.image + trail.astype(np.float32))
    return out, truth


def _patch_position(wcs, patch, x, y):
    ra, dec = wcs.all_pix2world(x, y, 0)
    return patch.wcs.all_world2pix(ra, dec, 0)


def _warped_truth(mask, exposure, patch):
    from stacklab.toolkit.exposure import Exposure
    from stacklab.toolkit.warp import WarpConfig, warp_exposure

    carrier = Exposure(
        np.zeros(exposure.shape), variance=np.ones(exposure.shape),
        mask=np.where(mask, exposure.mask_planes.bitmask("STREAK"), 0), wcs=exposure.wcs,
    )  # fmt: skip
    warped = warp_exposure(carrier, patch.wcs, patch.shape, WarpConfig(bad_mask_planes=()))
    return warped.exposure.plane("STREAK") & ~warped.exposure.plane("NO_DATA")


def _isolated_bright_stars(sky, patch, mag_range=(17.5, 21.0), half=12):
    x, y = patch.wcs.all_world2pix(sky["ra"], sky["dec"], 0)
    ok = []
    for k in np.flatnonzero((sky["kind"] == "star") & ~sky["variable"] & ~sky["transient"]):
        if not mag_range[0] < sky["mag_r"][k] < mag_range[1]:
            continue
        if np.sum((x - x[k]) ** 2 + (y - y[k]) ** 2 < 15**2) > 1:
            continue
        if not (half + 40 <= x[k] < patch.shape[1] - half - 40):
            continue
        if not (half + 40 <= y[k] < patch.shape[0] - half - 40):
            continue
        ok.append((k, float(x[k]), float(y[k])))
    return ok


def test_mean_coadd_star_fluxes_match_truth(field) -> None:
    sky, _, exposures, patch = field
    result = coadd(exposures, patch, CoaddConfig(statistic="mean"))
    image = result.exposure.image
    zero_point = result.exposure.zero_point
    ratios = []
    for k, x, y in _isolated_bright_stars(sky, patch):
        ix, iy = round(x), round(y)
        if result.n_inputs[iy, ix] < N_VISITS:
            continue
        flux = image[iy - 15 : iy + 16, ix - 15 : ix + 16].sum()
        ratios.append(flux / 10 ** (-0.4 * (sky["mag_r"][k] - zero_point)))
    assert len(ratios) >= 5
    # Aperture of 31 px: a Kolmogorov PSF leaves ~1% outside; the scatter is noise.
    assert np.median(ratios) == pytest.approx(0.99, abs=0.01)
    assert np.all(np.isfinite(image))
    assert result.weights.shape == (N_VISITS,)
    noise = np.array([np.median(e.variance) for e in exposures]) * result.scales**2
    expected = 1 / (noise * result.covariance_factors)
    assert np.allclose(result.weights / result.weights.sum(), expected / expected.sum(), rtol=0.05)


def test_coadd_variance_is_the_propagated_weighted_mean(field) -> None:
    _, _, exposures, patch = field
    rng = np.random.default_rng(5)
    noise = [
        e.replace(
            image=rng.normal(0, 10.0, e.shape).astype(np.float32),
            variance=np.full(e.shape, 100.0, dtype=np.float32),
            mask=np.zeros(e.shape, dtype=np.int32),
        )
        for e in exposures
    ]
    result = coadd(noise, patch, CoaddConfig(statistic="mean", require_psf=False))
    full = result.n_inputs == N_VISITS
    full &= ~result.exposure.plane("SENSOR_EDGE")
    image, variance = result.exposure.image[full], result.exposure.variance[full]
    assert np.var(image) == pytest.approx(np.mean(variance), rel=0.05)


@pytest.mark.parametrize("statistic", ["compare_warp", "safe_clip"])
def test_trail_is_rejected_and_the_variable_star_kept(field, statistic) -> None:
    sky, sims, exposures, patch = field
    inputs, trail = _with_trail(exposures, sims)
    result = coadd(inputs, patch, CoaddConfig(statistic=statistic, keep_warps=True))
    truth = _warped_truth(trail, exposures[3], patch)
    clipped = result.warps[3].plane("CLIPPED")
    assert clipped[truth].mean() >= 0.99
    # Fewer than 0.1% of the other pixels are clipped where every warp has data
    # (SafeClip's overlap rules see too few warps near coverage edges).
    full = np.all([~w.plane("NO_DATA") for w in result.warps], axis=0)
    others = sum(
        int((w.plane("CLIPPED") & full).sum()) for i, w in enumerate(result.warps) if i != 3
    )
    assert others < 0.001 * full.sum() * N_VISITS
    # The trail's flux is gone: the coadd there is noise around the truth-free mean.
    reference = coadd(exposures, patch, CoaddConfig(statistic="mean"))
    residual = result.exposure.image[truth] - reference.exposure.image[truth]
    sky_noise = float(np.sqrt(np.median(reference.exposure.variance[reference.n_inputs > 0])))
    assert abs(np.mean(residual)) < 0.1 * sky_noise
    # The variable star is never clipped.
    vx, vy = patch.wcs.all_world2pix(sky["ra"][sky["variable"]], sky["dec"][sky["variable"]], 0)
    ix, iy = round(float(vx[0])), round(float(vy[0]))
    for w in result.warps:
        assert not w.plane("CLIPPED")[iy - 8 : iy + 9, ix - 8 : ix + 9].any()


@pytest.mark.parametrize("statistic", ["compare_warp", "safe_clip"])
def test_crossing_trails_of_two_visits_are_both_rejected(field, statistic) -> None:
    # Two trails that cross merge into one region of the mean - clipped difference that
    # neither warp covers by the overlap fractions; safe clip must split it by warp.
    _, sims, exposures, patch = field
    once, _ = _with_trail(exposures, sims, visit=3)
    exp = once[5]
    ny, nx = exp.shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    distance = np.abs((xx - 200) * np.sin(-0.9) - (yy - 40) * np.cos(-0.9))
    noise = float(np.sqrt(np.median(exp.variance)))
    trail = 8.0 * noise * np.exp(-0.5 * (distance / 1.8) ** 2)
    inputs = list(once)
    inputs[5] = exp.replace(image=exp.image + trail.astype(np.float32))
    result = coadd(inputs, patch, CoaddConfig(statistic=statistic, keep_warps=True))
    # Pieces follow each warp's detections: judged on the trail pixels above 1 sigma
    # (nearly all of its flux), not on its faint wings.
    core_a = _with_trail(exposures, sims, visit=3)[0][3].image - exposures[3].image > noise
    for visit, truth_mask in ((3, core_a), (5, trail > noise)):
        truth = _warped_truth(truth_mask, exposures[visit], patch)
        clipped = result.warps[visit].plane("CLIPPED")[truth].mean()
        # The overlap rules alone give the merged region to one warp (0% here for visit 3);
        # safe clip's split keeps the pixels where the trail crosses sources other warps
        # detect too (bench_coadd: 86% of trail pixels rejected), compare-warp gets them.
        assert clipped >= (0.8 if statistic == "safe_clip" else 0.95), (visit, statistic, clipped)


def test_clipped_mean_and_median_reduce_the_trail(field) -> None:
    _, sims, exposures, patch = field
    inputs, trail = _with_trail(exposures, sims, peak_sigma=30.0)
    truth = _warped_truth(trail, exposures[3], patch)
    reference = coadd(exposures, patch, CoaddConfig(statistic="mean")).exposure.image
    left = {}
    for statistic in ("mean", "clipped_mean", "median"):
        image = coadd(inputs, patch, CoaddConfig(statistic=statistic)).exposure.image
        left[statistic] = float(np.sum(image[truth] - reference[truth]))
    assert left["clipped_mean"] < 0.3 * left["mean"], left
    assert left["median"] < 0.3 * left["mean"], left


def test_coadd_psf_matches_stars_on_the_coadd(field) -> None:
    sky, sims, exposures, patch = field
    noiseless = [
        e.replace(image=(s.noiseless - s.sky).astype(np.float32))
        for e, s in zip(exposures, sims, strict=True)
    ]
    result = coadd(noiseless, patch, CoaddConfig(statistic="mean"))
    psf = result.exposure.psf
    d_t, d_e1, d_e2 = [], [], []
    half = 12
    for _, x, y in _isolated_bright_stars(sky, patch):
        ix, iy = round(x), round(y)
        if result.n_inputs[iy - half : iy + half + 1, ix - half : ix + half + 1].min() < N_VISITS:
            continue
        x_used, y_used = x, y
        cut = result.exposure.image[iy - half : iy + half + 1, ix - half : ix + half + 1]
        star = galsim.hsm.FindAdaptiveMom(galsim.ImageD(cut.astype(float), scale=1.0))
        # Adaptive moments are taken about the centroid: no need to shift the model.
        stamp = psf.compute_image(x, y, size=2 * half + 1)
        fit = galsim.hsm.FindAdaptiveMom(galsim.ImageD(stamp, scale=1.0))
        d_t.append(star.moments_sigma**2 / fit.moments_sigma**2 - 1)
        d_e1.append(star.observed_shape.e1 - fit.observed_shape.e1)
        d_e2.append(star.observed_shape.e2 - fit.observed_shape.e2)
    assert len(d_t) >= 5
    assert abs(np.mean(d_t)) < 0.001
    assert abs(np.mean(d_e1)) < 0.002
    assert abs(np.mean(d_e2)) < 0.002
    # Every star above had all inputs: the model there sums all of them.
    assert len(psf.inputs_at(x_used, y_used)) == N_VISITS


def test_a_small_coadd_psf_stamp_is_the_centre_of_the_full_mixture(field) -> None:
    # Each input PSF is normalized over the full PSF stamp before mixing: a smaller
    # stamp must not re-weight the inputs (broad PSFs lose more light outside it).
    _, _, exposures, patch = field
    psf = coadd(exposures, patch, CoaddConfig(statistic="mean")).exposure.psf
    x, y = patch.shape[1] / 2, patch.shape[0] / 2
    full = psf.compute_image(x, y, size=psf.stamp_size)
    for size in (11, 25):
        cut = (psf.stamp_size - size) // 2
        centre = full[cut : cut + size, cut : cut + size]
        np.testing.assert_allclose(
            psf.compute_image(x, y, size=size), centre / centre.sum(), rtol=1e-12, atol=1e-15
        )


def test_saved_coadd_psf_reads_back_as_its_samples(field, tmp_path) -> None:
    from stacklab.toolkit.coadd_psf import SampledPsf
    from stacklab.toolkit.io import read_exposure, write_exposure

    _, _, exposures, patch = field
    result = coadd(exposures, patch, CoaddConfig(statistic="mean"))
    write_exposure(result.exposure, tmp_path / "coadd.fits")
    saved = read_exposure(tmp_path / "coadd.fits").psf
    assert isinstance(saved, SampledPsf)
    live = result.exposure.psf
    # Exactly the model at a sample point; close in size and shape in between.
    x0, y0 = float(saved.x[len(saved.x) // 2]), float(saved.y[len(saved.y) // 2])
    np.testing.assert_allclose(saved.compute_image(x0, y0), live.compute_image(x0, y0), atol=1e-12)
    # Between samples where every input contributes (the sampled model cannot follow
    # the abrupt changes at the edges of the dithered inputs; see coadd_psf).
    full = set(range(N_VISITS))
    inside = [
        (x, y) for x, y in zip(saved.x, saved.y, strict=True) if set(live.inputs_at(x, y)) == full
    ]
    checked = 0
    for x, y in [(x + 17.5, y + 11.0) for x, y in inside]:
        d2 = (saved.x - x) ** 2 + (saved.y - y) ** 2
        neighbours = np.argsort(d2)[:4]
        if set(live.inputs_at(x, y)) != full or any(
            set(live.inputs_at(saved.x[k], saved.y[k])) != full for k in neighbours
        ):
            continue
        checked += 1
        t_saved, e1_saved, e2_saved = saved.moments(x, y)
        t_live, e1_live, e2_live = live.moments(x, y)
        assert abs(t_saved / t_live - 1) < 0.01
        assert abs(e1_saved - e1_live) < 0.01 and abs(e2_saved - e2_live) < 0.01
    assert checked >= 2
    assert saved.compute_image(x0, y0, size=41).shape == (41, 41)


def test_mixed_bands_missing_psf_and_no_overlap(field) -> None:
    _, _, exposures, patch = field
    with pytest.raises(ValueError, match="mix bands"):
        coadd([exposures[0], exposures[1].replace(band="g")], patch)
    with pytest.raises(ValueError, match="has no PSF model"):
        coadd([exposures[0], exposures[1].replace(psf=None)], patch)
    far_wcs = exposures[1].wcs.deepcopy()
    far_wcs.wcs.crval = [far_wcs.wcs.crval[0] + 2.0, far_wcs.wcs.crval[1]]
    far_wcs.wcs.set()
    far = exposures[1].replace(wcs=far_wcs)
    result = coadd([exposures[0], far, exposures[2]], patch, CoaddConfig(statistic="mean"))
    assert result.visits == (exposures[0].visit, exposures[2].visit)
    assert "no overlap" in result.skipped[0]
    with pytest.raises(ValueError, match="no input overlaps"):
        coadd([far], patch)
    with pytest.raises(ValueError, match="statistic"):
        CoaddConfig(statistic="average")  # type: ignore[arg-type]


def test_single_input_warns_and_equals_its_warp(field) -> None:
    _, _, exposures, patch = field
    with pytest.warns(UserWarning, match="single input"):
        result = coadd(exposures[:1], patch, CoaddConfig(statistic="safe_clip"))
    from stacklab.toolkit.warp import warp_exposure

    warp = warp_exposure(exposures[0], patch.wcs, patch.shape).exposure
    good = result.n_inputs == 1
    assert np.allclose(result.exposure.image[good], warp.image[good], rtol=1e-5, atol=1e-3)


def test_pixels_without_any_usable_input_are_no_data(field, caplog) -> None:
    _, _, exposures, patch = field
    ra, dec = exposures[0].wcs.all_pix2world(160, 160, 0)
    inputs = []
    for e in exposures[:3]:
        e = e.copy()
        x0, y0 = (round(float(v)) for v in e.wcs.all_world2pix(ra, dec, 0))
        box = np.zeros(e.shape, dtype=bool)
        box[y0 - 10 : y0 + 10, x0 - 10 : x0 + 10] = True
        e.set_plane("BAD", box)
        inputs.append(e)
    with caplog.at_level(logging.WARNING):
        result = coadd(inputs, patch, CoaddConfig(statistic="clipped_mean"))
    x, y = (round(float(v)) for v in _patch_position(exposures[0].wcs, patch, 160, 160))
    assert result.exposure.plane("NO_DATA")[y, x]
    assert result.n_inputs[y, x] == 0
    assert np.all(np.isfinite(result.exposure.image))
    assert result.exposure.image[y, x] == 0


def test_cli_coadd_writes_one_coadd_per_band(tmp_path, capsys) -> None:
    from stacklab.toolkit.cli import main
    from stacklab.toolkit.io import read_exposure, write_exposure
    from stacklab.toolkit.simulate import simulate_dataset

    config = SimulationConfig(
        size=128, bands=("g", "r"), visits_per_band=2, seed=3, galaxy_density_arcmin2=2.0
    )
    simulate_dataset(config, tmp_path / "data")
    assert main(["coadd", str(tmp_path / "data"), "--out", str(tmp_path / "out")]) == 0
    for band in ("g", "r"):
        written = read_exposure(tmp_path / "out" / f"coadd-{band}.fits")
        assert written.band == band
        assert (tmp_path / "out" / f"coadd-{band}-psf.fits").is_file()
    assert "2 inputs" in capsys.readouterr().out
    assert main(["coadd", str(tmp_path / "missing")]) == 2
    # An input without a PSF model is the user's to fix: an error, not a skipped band.
    exposure = read_exposure(next((tmp_path / "data" / "exposures").glob("*.fits")))
    write_exposure(exposure.replace(psf=None), tmp_path / "nopsf.fits")
    assert main(["coadd", str(tmp_path / "nopsf.fits"), "--out", str(tmp_path / "o2")]) == 2
    assert "no PSF model" in capsys.readouterr().err
    assert not list((tmp_path / "o2").glob("coadd-*.fits"))


NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "02_coadd.ipynb"


def test_coadd_notebook_parameters_map_to_real_options() -> None:
    import ast

    import nbformat

    from stacklab.toolkit.batch import read_parameters

    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata["tags"]
    declared = read_parameters(nb)
    CoaddConfig(statistic=declared["statistic"].default)
    SimulationConfig(
        size=declared["sim_size"].default,
        visits_per_band=declared["sim_visits"].default,
        seed=declared["sim_seed"].default,
    )
    for cell in code:
        tree = ast.parse(cell.source)
        assert not any(
            isinstance(n, ast.FunctionDef | ast.ClassDef | ast.Lambda) for n in ast.walk(tree)
        )


@pytest.mark.slow
def test_coadd_notebook_runs_with_defaults(tmp_path) -> None:
    import json

    import papermill

    papermill.execute_notebook(
        str(NOTEBOOK), str(tmp_path / "out.ipynb"), kernel_name="python3",
        progress_bar=False, cwd=str(tmp_path),
    )  # fmt: skip
    summary = json.loads((tmp_path / "coadd_summary.json").read_text())
    assert summary["n_inputs"] == 8
    assert abs(summary["artifact_flux_left"]) < 0.2 < summary["artifact_flux_left_mean"]
    assert (tmp_path / "coadd.fits").is_file()


def test_psf_matched_coadd_has_the_target_psf(field, tmp_path) -> None:
    from stacklab.toolkit.io import read_exposure, write_exposure
    from stacklab.toolkit.psf_match import PsfMatchConfig, TargetPsf

    sky, sims, exposures, patch = field
    noiseless = [
        e.replace(image=(s.noiseless - s.sky).astype(np.float32))
        for e, s in zip(exposures, sims, strict=True)
    ][:4]
    result = coadd(noiseless, patch, CoaddConfig(statistic="mean", psf_match=PsfMatchConfig()))
    target = result.exposure.psf
    assert isinstance(target, TargetPsf)
    t_target = target.moments(0.0, 0.0)[0]
    sizes, e1, e2 = [], [], []
    for _, x, y in _isolated_bright_stars(sky, patch):
        ix, iy = round(x), round(y)
        if result.n_inputs[iy - 15 : iy + 16, ix - 15 : ix + 16].min() < 4:
            continue
        cut = result.exposure.image[iy - 15 : iy + 16, ix - 15 : ix + 16].astype(float)
        star = galsim.hsm.FindAdaptiveMom(galsim.ImageD(cut, scale=1.0))
        sizes.append(2 * star.moments_sigma**2 / t_target - 1)
        e1.append(star.observed_shape.e1)
        e2.append(star.observed_shape.e2)
    assert len(sizes) >= 5
    # Every input had its own size and ellipticity; the matched coadd has the target's.
    assert abs(np.median(sizes)) < 0.005
    assert abs(np.median(e1)) < 0.003
    assert abs(np.median(e2)) < 0.003
    # The target is saved with the coadd and read back as itself.
    write_exposure(result.exposure, tmp_path / "matched.fits")
    assert read_exposure(tmp_path / "matched.fits").psf == target


def _source_pixels(sims, exposures, patch, visits):
    """Warped pixels of real sources above 2 sigma of each visit's noise, per visit."""
    from stacklab.toolkit.exposure import Exposure
    from stacklab.toolkit.warp import WarpConfig, warp_exposure

    out = []
    for v in visits:
        sim, exp = sims[v], exposures[v]
        noiseless = Exposure(sim.noiseless - sim.sky, variance=np.ones(exp.shape), wcs=exp.wcs)
        warped = warp_exposure(noiseless, patch.wcs, patch.shape, WarpConfig()).exposure
        noise = float(np.sqrt(np.median(exp.variance)))
        out.append((warped.image > 2.0 * noise) & ~warped.plane("NO_DATA"))
    return out


def test_compare_warp_keeps_every_source_pixel_despite_seeing_differences(field) -> None:
    # No artifacts: the warps differ only by their PSFs (seeing 0.6-1.1") and noise, so
    # nothing of the real sources may be clipped, bright stars included.
    _, sims, exposures, patch = field
    seeing = [s.conditions.seeing_fwhm_arcsec for s in sims]
    assert max(seeing) - min(seeing) > 0.25
    result = coadd(exposures, patch, CoaddConfig(statistic="compare_warp", keep_warps=True))
    sources = _source_pixels(sims, exposures, patch, range(N_VISITS))
    clipped = sum(
        int((w.plane("CLIPPED") & s).sum()) for w, s in zip(result.warps, sources, strict=True)
    )
    assert clipped < 0.001 * sum(int(s.sum()) for s in sources)


@pytest.mark.parametrize("statistic", ["compare_warp", "safe_clip"])
def test_cosmic_rays_on_sources_are_rejected(field, statistic) -> None:
    # Sharp hits on top of real sources in one visit: an epoch comparison takes them for
    # the source varying, so the coadd masks cosmic rays of unprocessed inputs first.
    sky, sims, exposures, patch = field
    visit = 2
    exp = exposures[visit]
    noise = float(np.sqrt(np.median(exp.variance)))
    x, y = exp.wcs.all_world2pix(sky["ra"], sky["dec"], 0)
    ny, nx = exp.shape
    # On the wings of sources (a hit on a bright star's core is lost in it for the
    # sharpness test as well as for the comparison).
    bright = (sky["mag_r"] > 19.0) & (sky["mag_r"] < 22.0)
    bright &= (x > 20) & (x < nx - 20) & (y > 20) & (y < ny - 20)
    image = exp.image.copy()
    hits = np.zeros(exp.shape, dtype=bool)
    for xc, yc in zip(x[bright][:12], y[bright][:12], strict=False):
        ix, iy = round(float(xc)) + 3, round(float(yc)) + 2
        image[iy, ix : ix + 2] += np.float32(40.0 * noise)
        hits[iy, ix : ix + 2] = True
    assert hits.sum() >= 16
    inputs = list(exposures)
    inputs[visit] = exp.replace(image=image)
    result = coadd(inputs, patch, CoaddConfig(statistic=statistic, keep_warps=True))
    truth = _warped_truth(hits, exp, patch)
    used = (result.contributors & (np.int64(1) << np.int64(visit))) != 0
    assert not used[truth].any()
    # The cosmic rays' light is gone: the coadd there matches the clean coadd.
    clean = coadd(exposures, patch, CoaddConfig(statistic=statistic))
    excess = result.exposure.image[truth] - clean.exposure.image[truth]
    assert np.mean(excess) < 0.5 * noise
    if statistic == "safe_clip":
        return  # its regions clip some source pixels of other visits (bench_coadd: 0.26%)
    # The other visits keep their source pixels.
    others = [v for v in range(N_VISITS) if v != visit]
    sources = _source_pixels(sims, exposures, patch, others)
    lost = sum(
        int(
            ((result.warps[v].mask & result.warps[v].mask_planes.bitmask("CLIPPED", "CR")) != 0)[
                s
            ].sum()
        )
        for v, s in zip(others, sources, strict=True)
    )
    assert lost < 0.001 * sum(int(s.sum()) for s in sources)


def test_cosmic_rays_are_found_on_inputs_that_still_have_their_sky(field) -> None:
    # The coadd's cosmic-ray pass must not depend on the sky level left in an input, and
    # the user is told that artifact rejection wants background-subtracted inputs.
    from stacklab.toolkit.coadd import _mask_cosmic_rays

    _, sims, exposures, _ = field
    exp = exposures[1]
    rng = np.random.default_rng(3)
    image = exp.image.copy()
    ys, xs = rng.integers(10, exp.shape[0] - 10, 40), rng.integers(10, exp.shape[1] - 10, 40)
    image[ys, xs] += np.float32(50.0 * np.sqrt(np.median(exp.variance)))
    subtracted = exp.replace(image=image)
    with_sky = exp.replace(image=image + np.float32(np.median(sims[1].sky)))
    config = CoaddConfig(statistic="compare_warp")
    found = _mask_cosmic_rays(subtracted, config).plane("CR")
    with pytest.warns(UserWarning, match="background-subtracted"):
        masked_with_sky = _mask_cosmic_rays(with_sky, config)
    assert found[ys, xs].mean() > 0.9
    np.testing.assert_array_equal(masked_with_sky.plane("CR"), found)
    np.testing.assert_array_equal(masked_with_sky.image, with_sky.image)  # only the mask


class _MoffatPsf:
    """A PSF model that, like fitted models, returns stamps normalized over the stamp."""

    def __init__(self, fwhm: float) -> None:
        self.profile = galsim.Moffat(beta=2.5, fwhm=fwhm)

    def compute_image(self, x: float, y: float, size: int = 31) -> np.ndarray:
        stamp = self.profile.drawImage(nx=size, ny=size, scale=1.0).array.astype(float)
        return stamp / stamp.sum()


def test_coadd_psf_mixes_inputs_of_different_seeing_in_true_proportions() -> None:
    # Broad PSFs put more light outside any stamp: a mixture of stamp-normalized models
    # would over-weight them. The mixture must be that of unit-total-light profiles.
    from stacklab.toolkit.coadd_psf import CoaddPsf

    sharp, broad = _MoffatPsf(2.5), _MoffatPsf(6.0)
    psf = CoaddPsf([sharp, broad], [1.0, 3.0], np.full((8, 8), 3, dtype=np.int64), 31)
    truth = galsim.Add([0.25 * sharp.profile, 0.75 * broad.profile])
    for size in (25, 31):
        expected = truth.drawImage(nx=size, ny=size, scale=1.0).array
        np.testing.assert_allclose(
            psf.compute_image(4, 4, size=size), expected / expected.sum(), rtol=2e-3, atol=1e-7
        )
