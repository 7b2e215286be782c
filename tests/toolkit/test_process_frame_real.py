"""process_frame on the real images of ../shared/data/real: no crash, and what can be checked."""

from __future__ import annotations

import warnings
from pathlib import Path

import galsim
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.table import Table
from astropy.utils.exceptions import AstropyWarning
from scipy.spatial import cKDTree

from stacklab.toolkit import (
    BackgroundConfig,
    ProcessFrameConfig,
    PsfConfig,
    SourceFlag,
    process_frame,
    read_exposure,
)

DECAM = "legacypipe-decam/c4d_171113_060340_oo{}_r_ls9.N6.fits"


def _read(path: Path, **kwargs):
    with warnings.catch_warnings():
        # Real headers carry non-standard cards and old DSS/SIP keywords.
        warnings.simplefilter("ignore", AstropyWarning)
        return read_exposure(path, **kwargs)


def _run(exposure, config=None):
    # Small real cut-outs have few stars: lowered PSF orders and fallbacks warn.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return process_frame(exposure, config)


def _psfex_fwhm(path: Path) -> float:
    with fits.open(path) as hdul:
        basis = np.asarray(hdul[1].data["psf_mask"][0], dtype=float)
    # Terms of the polynomial at its origin: only the constant one is non-zero.
    stamp = basis[0] / basis[0].sum()
    moments = galsim.hsm.FindAdaptiveMom(galsim.ImageD(stamp, scale=1.0))
    return float(moments.moments_sigma * 2.3548200450309493)


def test_decam_psf_matches_psfex(real_data: Path) -> None:
    image = real_data / DECAM.format("i")
    if not image.is_file():
        pytest.skip(f"{image} is absent")
    exposure = _read(image, weight=real_data / DECAM.format("w"))
    result = _run(exposure, ProcessFrameConfig(psf=PsfConfig(min_snr=20.0, spatial_order=0)))
    psfex = _psfex_fwhm(real_data / "legacypipe-decam/c4d_171113_060340_ooi_r_ls9-psfex.fits")
    ours = result.psf.fwhm_px(140.0, 187.0)
    # Same estimator (HSM Gaussian-equivalent FWHM) on both models.
    assert ours == pytest.approx(psfex, rel=0.05)
    assert len(result.catalog) > 10


def test_spitzer_catalogued_sources_recovered(real_data: Path) -> None:
    folder = real_data / "photutils-datasets"
    if not (folder / "spitzer_example_image.fits").is_file():
        pytest.skip(f"{folder} lacks the Spitzer example")
    exposure = _read(folder / "spitzer_example_image.fits")
    catalog = Table.read(folder / "spitzer_example_catalog.xml")
    # Nebulous Galactic-plane field with an undersampled IRAC PSF: a fine
    # background mesh and a narrow first-pass kernel. GLIMPSE mosaics are
    # already free of cosmic rays (and undersampled cores look sharp).
    config = ProcessFrameConfig(
        background=BackgroundConfig(mesh_size_px=16), initial_fwhm_px=2.0, do_cosmic_rays=False
    )
    result = _run(exposure, config)
    coords = SkyCoord(catalog["l"], catalog["b"], frame="galactic", unit="deg")
    x, y = exposure.wcs.celestial.world_to_pixel(coords)
    primary = result.catalog[result.catalog["n_children"] == 0]
    dist, _ = cKDTree(np.c_[primary["x"], primary["y"]]).query(np.c_[x, y])
    recovered = float(np.mean(dist < 1.0))
    assert recovered > 0.95


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        "photutils-datasets/M6707HH.fits",
        "astropy-data/reprojected_sdss_g.fits.bz2",
        "astropy-data/reprojected_sdss_r.fits.bz2",
        "astropy-data/reprojected_sdss_i.fits.bz2",
    ],
)
def test_real_images_do_not_crash(real_data: Path, name: str) -> None:
    path = real_data / name
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    exposure = _read(path)
    result = _run(exposure)
    assert len(result.catalog) > 50
    assert np.isfinite(result.catalog["ra"]).all()
    if result.psf_fit is not None and result.psf_fit.fallback:
        assert np.all(result.catalog["flags"] & int(SourceFlag.PSF_FALLBACK))
