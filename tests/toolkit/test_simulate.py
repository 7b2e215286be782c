"""The simulator's physics, checked against its own truth with independent measurements."""

from __future__ import annotations

import galsim
import numpy as np
import pytest
import sep
from astropy.table import Table

from stacklab.toolkit import read_exposure, write_exposure
from stacklab.toolkit.simulate import (
    SimulatedVisit,
    SimulationConfig,
    make_sky,
    simulate_visit,
    visit_magnitudes,
)
from stacklab.toolkit.simulate.artifacts import apply_brighter_fatter, bleed_saturation


def _isolated_bright_stars(sim: SimulatedVisit, *, max_mag: float, min_sep_px: float) -> Table:
    truth = sim.truth
    ny, nx = sim.exposure.shape
    xy = np.column_stack([truth["x"], truth["y"]])
    keep = []
    for k, row in enumerate(truth):
        if not (row["is_star"] and row["in_image"]) or row["saturated"] or row["mag"] > max_mag:
            continue
        if not (40 < row["x"] < nx - 41 and 40 < row["y"] < ny - 41):
            continue
        distance = np.hypot(*(xy - xy[k]).T)
        distance[k] = np.inf
        if distance.min() < min_sep_px:
            continue
        # ... and no bright neighbour whose wings reach the star.
        bright = np.asarray(truth["flux"]) > min(row["flux"], 1e5)
        if np.any((distance < 60.0) & bright):
            continue
        ix, iy = round(row["x"]), round(row["y"])
        if sim.artifact_mask[iy - 20 : iy + 21, ix - 20 : ix + 21].any():
            continue
        keep.append(k)
    return truth[keep]


def test_noise_is_poisson_plus_read_noise_as_the_variance_plane_says(
    artifact_visit: SimulatedVisit,
) -> None:
    exp = artifact_visit.exposure
    clean = (artifact_visit.artifact_mask == 0) & (exp.mask == 0)
    chi = (exp.image - artifact_visit.noiseless)[clean] / np.sqrt(exp.variance[clean])
    print(f"normalized residual: mean {chi.mean():.4f}, std {chi.std():.4f}, n {chi.size}")
    assert abs(chi.std() - 1.0) < 0.02
    assert abs(chi.mean()) < 0.01


def test_star_aperture_fluxes_recover_truth(clean_visit: SimulatedVisit) -> None:
    exp = clean_visit.exposure
    stars = _isolated_bright_stars(clean_visit, max_mag=21.5, min_sep_px=25.0)
    assert len(stars) >= 20
    fwhm = float(np.median(stars["psf_fwhm_px"]))
    radius = 3.0 * fwhm
    data = (exp.image - clean_visit.sky).astype(np.float64)
    flux, err, _ = sep.sum_circle(
        data, stars["x"], stars["y"], radius, var=exp.variance.astype(np.float64)
    )
    # Enclosed fraction of the true PSF within the aperture, star by star.
    enclosed = []
    for x, y in zip(stars["x"], stars["y"], strict=True):
        stamp = exp.psf.compute_image(x, y, size=161)
        c = 80.0 + (x - round(x)), 80.0 + (y - round(y))
        enclosed.append(sep.sum_circle(stamp, [c[0]], [c[1]], radius)[0][0])
    expected = np.asarray(stars["flux"]) * np.asarray(enclosed)
    pulls = (flux - expected) / err
    ratio = flux / expected
    print(
        f"{len(stars)} stars: median flux ratio {np.median(ratio):.5f}, pull std {pulls.std():.3f}"
    )
    assert abs(np.median(ratio) - 1.0) < 0.003
    assert abs(np.mean(pulls)) < 4.0 / np.sqrt(len(stars))
    assert 0.7 < pulls.std() < 1.3


def test_flux2_drawn_is_the_sum_of_squares_of_the_noiseless_star(
    clean_visit: SimulatedVisit,
) -> None:
    # The bench's optimal S/N is sqrt(flux2_drawn / V): check it on isolated stars.
    stars = _isolated_bright_stars(clean_visit, max_mag=21.5, min_sep_px=25.0)
    assert len(stars) >= 20
    objects = clean_visit.noiseless - clean_visit.sky
    measured = []
    for x, y in zip(stars["x"], stars["y"], strict=True):
        ix, iy = round(x), round(y)
        measured.append(np.sum(objects[iy - 20 : iy + 21, ix - 20 : ix + 21] ** 2))
    ratio = np.asarray(measured) / np.asarray(stars["flux2_drawn"])
    assert np.median(ratio) == pytest.approx(1.0, abs=0.002)
    # Kolmogorov: about 1 / (38 px²) of flux² at 3.45 px FWHM, i.e. not a Gaussian's
    # 1 / (4 pi sigma²).
    fwhm = np.asarray(stars["psf_fwhm_px"])
    area = np.asarray(stars["flux_drawn"]) ** 2 / np.asarray(stars["flux2_drawn"])
    assert np.median(area / fwhm**2) == pytest.approx(38.0 / 3.45**2, rel=0.08)


def test_psf_size_and_ellipticity_on_bright_stars_match_visit_truth(
    clean_visit: SimulatedVisit,
) -> None:
    exp = clean_visit.exposure
    stars = _isolated_bright_stars(clean_visit, max_mag=21.0, min_sep_px=25.0)
    data = exp.image - clean_visit.sky
    d_size, d_e1, d_e2, d_fwhm = [], [], [], []
    for x, y in zip(stars["x"], stars["y"], strict=True):
        ix, iy = round(x), round(y)
        stamp = galsim.ImageD(
            np.asarray(data[iy - 20 : iy + 21, ix - 20 : ix + 21], float), scale=1.0
        )
        measured = galsim.hsm.FindAdaptiveMom(stamp)
        truth = exp.psf.moments(x, y)
        d_size.append(2 * measured.moments_sigma**2 / truth.T - 1.0)
        d_e1.append(measured.observed_shape.e1 - truth.e1)
        d_e2.append(measured.observed_shape.e2 - truth.e2)
        # FWHM: the star's radial profile against the true pixelized PSF at the same phase.
        model = exp.psf.profile(x, y).drawImage(nx=41, ny=41, scale=1.0, offset=(x - ix, y - iy))
        d_fwhm.append(
            stamp.calculateFWHM(center=galsim.PositionD(21 + x - ix, 21 + y - iy))
            / model.calculateFWHM(center=galsim.PositionD(21 + x - ix, 21 + y - iy))
            - 1.0
        )
    print(
        f"{len(stars)} stars: dT/T {np.median(d_size):.4f}, de1 {np.median(d_e1):.4f}, "
        f"de2 {np.median(d_e2):.4f}, dFWHM/FWHM {np.median(d_fwhm):.4f}"
    )
    assert len(stars) >= 15
    assert abs(np.median(d_size)) < 0.01
    assert abs(np.median(d_e1)) < 0.003
    assert abs(np.median(d_e2)) < 0.003
    assert abs(np.median(d_fwhm)) < 0.02
    # The PSF really varies over the field and the truth follows it.
    sizes = np.array([exp.psf.moments(x, y).T for x, y in zip(stars["x"], stars["y"], strict=True)])
    assert sizes.std() / sizes.mean() > 0.002


def test_visit_psf_seeing_in_the_requested_range() -> None:
    config = SimulationConfig(size=64, visits_per_band=10, bands=("r",))
    from stacklab.toolkit.simulate import visit_conditions

    seeing = [visit_conditions(config, v).seeing_fwhm_arcsec for v in range(10)]
    assert min(seeing) >= 0.6 and max(seeing) <= 1.1
    assert np.ptp(seeing) > 0.1  # visits differ


def test_wcs_round_trips_through_the_file(artifact_visit: SimulatedVisit, tmp_path) -> None:
    path = write_exposure(artifact_visit.exposure, tmp_path / "visit.fits")
    wcs = read_exposure(path).wcs
    assert wcs is not None and wcs.has_distortion  # TAN-SIP
    grid = np.linspace(-0.5, 1023.5, 17)
    x, y = (a.ravel() for a in np.meshgrid(grid, grid))
    x2, y2 = wcs.world_to_pixel(wcs.pixel_to_world(x, y))
    worst = float(np.max(np.hypot(x2 - x, y2 - y)))
    print(f"worst WCS round trip: {worst:.2e} px")
    assert worst < 1e-3


def test_objects_are_drawn_where_the_wcs_puts_them(clean_visit: SimulatedVisit) -> None:
    exp = clean_visit.exposure
    stars = _isolated_bright_stars(clean_visit, max_mag=21.0, min_sep_px=25.0)
    data = (exp.image - clean_visit.sky).astype(np.float64)
    sigma = np.asarray(stars["psf_fwhm_px"]) / 2.3548
    xw, yw, flag = sep.winpos(data, stars["x"], stars["y"], sigma)
    assert not flag.any()
    dx, dy = xw - stars["x"], yw - stars["y"]
    print(f"centroid offsets: median dx {np.median(dx):.4f}, dy {np.median(dy):.4f} px")
    assert abs(np.median(dx)) < 0.01 and abs(np.median(dy)) < 0.01
    assert np.percentile(np.hypot(dx, dy), 90) < 0.05


def test_artifacts_land_only_where_their_truth_masks_say(artifact_visit: SimulatedVisit) -> None:
    exp, planes = artifact_visit.exposure, artifact_visit.artifact_planes
    truth = artifact_visit.artifact_mask
    chi = (exp.image - artifact_visit.noiseless) / np.sqrt(exp.variance)
    outside = truth == 0
    # Gaussian-like noise beyond 6 sigma is essentially impossible in 1e6 pixels.
    assert np.count_nonzero(np.abs(chi[outside]) > 6.0) == 0
    for name in ("CR", "STREAK", "BAD", "SAT"):
        assert (truth & (1 << planes[name])).any(), f"no {name} artifact was simulated"
    cr = (truth & (1 << planes["CR"])) != 0
    cr_only = cr & (truth == (1 << planes["CR"]))
    assert np.median(chi[cr_only]) > 2.0
    streak = truth == (1 << planes["STREAK"])
    assert np.mean(chi[streak]) > 0.5
    # ISR-like mask planes: defects and saturation flagged; cosmic rays left to the pipeline.
    bad_truth = (truth & (1 << planes["BAD"])) != 0
    assert np.array_equal(exp.plane("BAD"), bad_truth)
    assert not np.any(exp.plane("SAT") & ~((truth & (1 << planes["SAT"])) != 0))
    assert exp.plane("SAT").any()
    assert not exp.plane("CR").any()


def test_saturation_bleeds_along_columns_conserving_charge() -> None:
    charge = np.full((60, 7), 100.0)
    charge[28:32, 3] = [150_000.0, 400_000.0, 380_000.0, 120_000.0]
    total = charge.sum()
    changed = bleed_saturation(charge, 90_000.0)
    assert charge.max() <= 90_000.0
    assert charge.sum() == pytest.approx(total, rel=1e-12)
    assert changed[:, 3].sum() > 4 and not changed[:, [0, 1, 2, 4, 5, 6]].any()


def test_brighter_fatter_broadens_bright_stars_and_conserves_charge() -> None:
    yy, xx = np.mgrid[0:65, 0:65] - 32
    star = np.exp(-0.5 * (xx**2 + yy**2) / 2.0**2)

    def size(image: np.ndarray) -> float:
        return float(np.sum(image * (xx**2 + yy**2)) / np.sum(image))

    growth = []
    for peak in (1e3, 5e4, 1e5):
        image = star * peak
        after = apply_brighter_fatter(image, 0.02)
        assert after.sum() == pytest.approx(image.sum(), rel=1e-10)
        growth.append(size(after) / size(image) - 1.0)
    assert growth[0] < 0.001
    assert growth[2] == pytest.approx(0.02, rel=0.1)
    assert growth[1] == pytest.approx(0.01, rel=0.15)


def _psf_aperture_flux(sim: SimulatedVisit, x: float, y: float) -> float:
    """Flux in a 3-FWHM aperture divided by the true PSF's enclosed fraction there."""
    psf = sim.exposure.psf
    radius = 3.0 * float(psf.parameters_at(x, y)[0])
    data = (sim.exposure.image - sim.sky).astype(np.float64)
    flux = sep.sum_circle(data, [x], [y], radius)[0][0]
    stamp = psf.compute_image(x, y, size=161)
    centre = 80.0 + (x - round(x)), 80.0 + (y - round(y))
    return float(flux / sep.sum_circle(stamp, [centre[0]], [centre[1]], radius)[0][0])


def test_variable_star_and_transient_follow_their_light_curves() -> None:
    config = SimulationConfig(
        seed=12, size=512, visits_per_band=3, bands=("r",), variable_star=True, transient=True
    )
    sky = make_sky(config)
    variable_id = int(sky["id"][sky["variable"]][0])
    transient_id = int(sky["id"][sky["transient"]][0])
    sims = [simulate_visit(sky, config, visit=v) for v in range(3)]
    # The transient shines only in the middle epoch.
    assert [transient_id in set(s.truth["id"]) for s in sims] == [False, True, False]
    row = sims[1].truth[sims[1].truth["id"] == transient_id][0]
    assert _psf_aperture_flux(sims[1], row["x"], row["y"]) == pytest.approx(row["flux"], rel=0.02)
    # The variable star changes by more than its noise and the pixels follow the truth.
    fluxes, truths = [], []
    for sim in sims:
        vrow = sim.truth[sim.truth["id"] == variable_id][0]
        fluxes.append(_psf_aperture_flux(sim, vrow["x"], vrow["y"]))
        truths.append(float(vrow["flux"]))
    assert np.ptp(truths) / np.mean(truths) > 0.1
    np.testing.assert_allclose(fluxes, truths, rtol=0.02)
    expected = visit_magnitudes(sky, config, "r", 0)[sky["variable"]][0]
    assert sims[0].exposure.flux_to_mag(truths[0]) == pytest.approx(expected, abs=1e-9)


def test_same_seed_same_pixels_other_seed_other_pixels() -> None:
    config = SimulationConfig(size=96, seed=3, galaxy_density_arcmin2=40.0)
    sky = make_sky(config)
    a = simulate_visit(sky, config, visit=2).exposure.image
    b = simulate_visit(make_sky(config), config, visit=2).exposure.image
    assert np.array_equal(a, b)
    other = SimulationConfig(size=96, seed=4, galaxy_density_arcmin2=40.0)
    c = simulate_visit(make_sky(other), other, visit=2).exposure.image
    assert not np.array_equal(a, c)


def test_sky_catalog_has_realistic_populations() -> None:
    config = SimulationConfig(size=2048, seed=7)
    sky = make_sky(config)
    stars, galaxies = sky[sky["kind"] == "star"], sky[sky["kind"] != "star"]
    assert len(galaxies) > 2 * len(stars) > 0
    # Counts rise towards faint magnitudes with the configured slope (within noise).
    counts, _ = np.histogram(np.asarray(galaxies["mag_r"]), bins=[19, 21, 23, 25])
    assert counts[0] < counts[1] < counts[2]
    slope = np.log10(counts[2] / counts[1]) / 2.0
    assert slope == pytest.approx(config.galaxy_count_slope, abs=0.05)
    # Colours: star locus and red bulges / blue disks give g-r in realistic ranges.
    g_r = np.asarray(stars["mag_g"] - stars["mag_r"])
    assert g_r.min() > 0.1 and g_r.max() < 1.6
    gal_gr = np.asarray(galaxies["mag_g"] - galaxies["mag_r"])
    assert 0.3 < np.median(gal_gr) < 0.9
    # Shapes: shear rms per component near 0.25, sizes shrink with magnitude.
    assert np.std(galaxies["g1"]) == pytest.approx(0.25, abs=0.04)
    bright = galaxies["mag_r"] < 21
    assert np.median(galaxies["hlr_arcsec"][bright]) > np.median(galaxies["hlr_arcsec"][~bright])


def test_a_few_stars_saturate_in_a_full_detector() -> None:
    config = SimulationConfig(size=2048, seed=1, galaxy_density_arcmin2=0.0, bands=("r",))
    sim = simulate_visit(make_sky(config), config, visit=0)
    n_saturated = int(np.sum(sim.truth["saturated"]))
    print(f"saturated stars in 2048x2048: {n_saturated}")
    assert 1 <= n_saturated <= 30


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"bands": ("q",)}, "bands must be"),
        ({"size": 8}, "size must be an integer >= 32"),
        ({"n_detectors": 3}, "square number"),
        ({"gain": -1.0}, "gain must be > 0"),
        ({"satellite_trail_probability": 2.0}, "probability"),
        ({"seeing_fwhm_range_arcsec": (1.0, 0.5)}, "seeing_fwhm_range_arcsec"),
        ({"sky_adu": {"g": 1.0}}, "no value for band"),
    ],
)
def test_bad_configuration_is_refused_with_a_clear_message(changes, match) -> None:
    with pytest.raises(ValueError, match=match):
        SimulationConfig(**changes)


def test_visit_rejects_a_band_outside_the_configuration(clean_config) -> None:
    with pytest.raises(ValueError, match="not among the configured bands"):
        simulate_visit(make_sky(clean_config), clean_config, visit=0, band="g")
    with pytest.raises(ValueError, match="visit must be a non-negative integer"):
        simulate_visit(make_sky(clean_config), clean_config, visit=-1)
