"""Multi-band catalogs: detection coadds, forced photometry in every band, colours vs truth."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from stacklab.toolkit.coadd import CoaddConfig
from stacklab.toolkit.detection import detect_sources
from stacklab.toolkit.flags import SourceFlag
from stacklab.toolkit.multiband import (
    MultibandConfig,
    coadd_bands,
    detection_coadd,
    measure_multiband,
)
from stacklab.toolkit.psf_match import PsfMatchConfig, TargetPsf
from stacklab.toolkit.simulate import SimulationConfig, make_sky, simulate_visit
from stacklab.toolkit.skymap import patch_covering

BANDS = ("g", "r", "i")
# Flags that do not spoil a forced flux: being (part of) a blend.
_HARMLESS = int(SourceFlag.BLENDED | SourceFlag.PARENT)


@pytest.fixture(scope="module")
def field():
    """Three bands x three visits of 512², sky subtracted; direct and PSF-matched coadds."""
    config = SimulationConfig(
        size=512, bands=BANDS, visits_per_band=3, seed=3, star_density_arcmin2=40.0,
        galaxy_density_arcmin2=20.0, sip_distortion_px=0.0, dither_arcsec=6.0,
    )  # fmt: skip
    sky = make_sky(config)
    sims = [simulate_visit(sky, config, visit=v) for v in range(config.n_visits)]
    by_band = {
        b: [
            s.exposure.replace(image=s.exposure.image - s.sky) for s in sims if s.exposure.band == b
        ]
        for b in BANDS
    }
    patch = patch_covering([e for exposures in by_band.values() for e in exposures])
    direct = coadd_bands(by_band, patch, CoaddConfig(statistic="mean"))
    matched = coadd_bands(by_band, patch, CoaddConfig(statistic="mean", psf_match=PsfMatchConfig()))
    return sky, patch, direct, matched


@pytest.fixture(scope="module")
def matched_catalog(field):
    _, _, direct, matched = field
    return measure_multiband(matched, detect_on=direct)


@pytest.fixture(scope="module")
def direct_catalog(field):
    _, _, direct, _ = field
    return measure_multiband(direct)


def _bright_isolated_stars(sky, patch, catalog, mag_range=(16.5, 22.0)):
    """(truth rows, catalog rows) of isolated unflagged stars matched within 1.5 px."""
    x, y = patch.wcs.all_world2pix(sky["ra"], sky["dec"], 0)
    primary = np.flatnonzero(catalog["is_primary"])
    cx, cy = np.asarray(catalog["x"])[primary], np.asarray(catalog["y"])[primary]
    truth_rows, rows = [], []
    for k in np.flatnonzero(sky["kind"] == "star"):
        if not mag_range[0] < sky["mag_r"][k] < mag_range[1]:
            continue
        if np.sum((x - x[k]) ** 2 + (y - y[k]) ** 2 < 12**2) > 1:
            continue
        d2 = (cx - x[k]) ** 2 + (cy - y[k]) ** 2
        if not len(d2) or d2.min() > 1.5**2:
            continue
        j = primary[int(np.argmin(d2))]
        if any(int(catalog[f"{b}_flags"][j]) & ~_HARMLESS for b in BANDS):
            continue
        truth_rows.append(k)
        rows.append(j)
    return np.asarray(truth_rows), np.asarray(rows)


def test_coadd_bands_share_one_grid_and_one_target_psf(field) -> None:
    _, patch, direct, matched = field
    targets = {b: c.exposure.psf for b, c in matched.items()}
    assert all(isinstance(t, TargetPsf) for t in targets.values())
    assert len({t.fwhm_px for t in targets.values()}) == 1
    for coadds in (direct, matched):
        assert {c.exposure.shape for c in coadds.values()} == {patch.shape}
        assert [c.exposure.band for c in coadds.values()] == list(BANDS)


def test_same_objects_measured_in_every_band(field, matched_catalog) -> None:
    sky, patch, _, _ = field
    catalog = matched_catalog.catalog
    assert matched_catalog.bands == BANDS
    assert len(catalog) == len(matched_catalog.sources) > 50
    assert len(np.unique(catalog["id"])) == len(catalog)
    for band in BANDS:
        for column in ("psf_flux", "psf_flux_err", "psf_mag", "aper_flux_6", "flags"):
            assert f"{band}_{column}" in catalog.colnames
    for column in ("colour_g_r_psf", "colour_r_i_psf", "colour_g_r_aper_err"):
        assert column in catalog.colnames
    # Every clean primary source has a forced flux in every band, at one position.
    clean = catalog["is_primary"] & np.all(
        [(np.asarray(catalog[f"{b}_flags"]) & ~_HARMLESS) == 0 for b in BANDS], axis=0
    )
    assert clean.sum() > 0.5 * catalog["is_primary"].sum()
    for band in BANDS:
        assert np.all(np.isfinite(catalog[f"{band}_psf_flux"][clean]))
        assert np.all(catalog[f"{band}_psf_flux_err"][clean] > 0)
    # The bright stars of the truth are all there.
    truth, _ = _bright_isolated_stars(sky, patch, catalog)
    assert len(truth) >= 15


@pytest.mark.parametrize("which", ["matched", "direct"])
def test_star_psf_colours_match_truth(field, matched_catalog, direct_catalog, which) -> None:
    sky, patch, _, _ = field
    catalog = (matched_catalog if which == "matched" else direct_catalog).catalog
    truth, rows = _bright_isolated_stars(sky, patch, catalog)
    assert len(rows) >= 15
    for blue, red in (("g", "r"), ("r", "i")):
        measured = np.asarray(catalog[f"colour_{blue}_{red}_psf"])[rows]
        error = np.asarray(catalog[f"colour_{blue}_{red}_psf_err"])[rows]
        true = np.asarray(sky[f"mag_{blue}"] - sky[f"mag_{red}"])[truth]
        delta = measured - true
        # Stars of 16.5-22 mag on three-visit coadds: a few mmag of noise each.
        assert abs(np.median(delta)) < 0.01, (blue, red, np.median(delta))
        assert np.percentile(np.abs(delta), 68) < 0.03
        # Errors, calibrated on sky objects, describe the scatter.
        assert 0.6 < np.std(delta / error) < 1.6, np.std(delta / error)
    if which == "matched":
        # PSF matching correlates the noise: sums scatter more than the variance plane says.
        assert all(catalog.meta[f"ESCALE_{b}"] > 2 for b in BANDS)


def test_matched_apertures_give_star_colours_direct_apertures_do_not(
    field, matched_catalog, direct_catalog
) -> None:
    sky, patch, _, _ = field
    bias = {}
    for name, result in (("matched", matched_catalog), ("direct", direct_catalog)):
        catalog = result.catalog
        truth, rows = _bright_isolated_stars(sky, patch, catalog)
        measured = np.asarray(catalog["colour_g_r_aper"])[rows]
        true = np.asarray(sky["mag_g"] - sky["mag_r"])[truth]
        bias[name] = float(np.median(measured - true))
    # A 6 px aperture holds a different fraction of the light of each band's PSF
    # unless the bands are matched to one PSF.
    assert abs(bias["matched"]) < 0.01
    assert abs(bias["direct"]) > 2 * abs(bias["matched"])


def test_chi2_and_snr_detection_images(field) -> None:
    _, _, direct, _ = field
    chi2 = detection_coadd(direct, method="chi2")
    snr = detection_coadd(direct, method="snr")
    assert chi2.shape == snr.shape == direct["g"].exposure.shape
    assert chi2.meta["DETMETH"] == "chi2" and chi2.band == "gri"
    # Blank sky (far from every detection) is N(0, 1) in the chi2 significance.
    detected = detect_sources(snr).exposure.plane("DETECTED")
    blank = ~ndimage.binary_dilation(detected, iterations=8) & ~chi2.plane("NO_DATA")
    z = chi2.image[blank]
    assert abs(np.median(z)) < 0.05
    assert 0.9 < np.subtract(*np.percentile(z, [84, 16])) / 2 < 1.1
    # The snr sum's variance plane matches its blank-sky scatter (per pixel).
    pull = snr.image[blank] / np.sqrt(snr.variance[blank])
    assert 0.9 < np.subtract(*np.percentile(pull, [84, 16])) / 2 < 1.15


def test_chi2_detection_finds_the_same_bright_stars(field, direct_catalog) -> None:
    sky, patch, direct, _ = field
    result = measure_multiband(direct, MultibandConfig(detection_method="chi2"))
    assert result.detection.meta["DETMETH"] == "chi2"
    truth_chi2, _ = _bright_isolated_stars(sky, patch, result.catalog)
    truth_snr, _ = _bright_isolated_stars(sky, patch, direct_catalog.catalog)
    assert len(set(truth_snr) & set(truth_chi2)) >= 0.9 * len(truth_snr)


def test_bad_input_is_refused_with_clear_errors(field) -> None:
    _, _, direct, _ = field
    with pytest.raises(ValueError, match="at least two"):
        measure_multiband({})
    with pytest.raises(ValueError, match="at least two"):
        detection_coadd({"r": direct["r"]})
    with pytest.raises(TypeError, match="mapping"):
        measure_multiband([direct["g"], direct["r"]])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"\['r'\]"):
        detection_coadd({"g": direct["g"], "r": np.zeros((4, 4))})  # type: ignore[dict-item]
    no_psf = direct["r"].exposure.replace(psf=None)
    with pytest.raises(ValueError, match="band 'r' has no PSF"):
        measure_multiband({"g": direct["g"], "r": no_psf})
    shifted_wcs = direct["i"].exposure.wcs.deepcopy()
    shifted_wcs.wcs.crpix = shifted_wcs.wcs.crpix + np.array([3.0, 0.0])
    shifted = direct["i"].exposure.replace(wcs=shifted_wcs)
    with pytest.raises(ValueError, match="band 'i' is on another grid"):
        detection_coadd({"g": direct["g"], "i": shifted})
    cropped = direct["i"].exposure[0:100, 0:100]
    with pytest.raises(ValueError, match="band 'i' has shape"):
        measure_multiband({"g": direct["g"], "i": cropped})
    with pytest.raises(ValueError, match="holds a coadd of band 'r'"):
        measure_multiband({"g": direct["g"], "i": direct["r"]})
    with pytest.raises(ValueError, match="detect_on is on another grid"):
        measure_multiband(
            {"g": direct["g"], "r": direct["r"]},
            detect_on={
                "g": direct["g"].exposure[0:100, 0:100],
                "r": direct["r"].exposure[0:100, 0:100],
            },
        )
    with pytest.raises(ValueError, match="method"):
        detection_coadd(direct, method="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="colour_aperture_px"):
        MultibandConfig(colour_aperture_px=5.0)
    with pytest.raises(ValueError, match="band 'g' has no exposures"):
        coadd_bands({"g": [], "r": []})
