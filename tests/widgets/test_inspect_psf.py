"""PSF inspection: profiles, FWHM, star stamps, field maps, for PsfModel and CoaddPsf."""

from __future__ import annotations

import numpy as np
import pytest
from inspect_data import small_frame
from scipy.spatial import cKDTree

from stacklab.toolkit import CoaddPsf, SourceFlag, WarpedPsf
from stacklab.toolkit.inspect_psf import (
    fwhm_from_profile,
    inspect_psf,
    psf_field,
    radial_profile,
    size_magnitude,
    star_shapes,
    whiskers,
)


@pytest.fixture(scope="module")
def frame():
    return small_frame()


def test_profile_fwhm_of_a_gaussian():
    sigma = 2.0
    yy, xx = np.mgrid[0:41, 0:41]
    stamp = np.exp(-0.5 * ((xx - 20.3) ** 2 + (yy - 19.8) ** 2) / sigma**2)
    radius, profile = radial_profile(stamp, 20.3, 19.8, bin_px=0.25)
    assert fwhm_from_profile(radius, profile) == pytest.approx(2.3548 * sigma, rel=0.03)
    # masked pixels are left out, not counted as zeros
    valid = np.ones_like(stamp, dtype=bool)
    valid[:, :15] = False
    _, p2 = radial_profile(np.where(valid, stamp, 0.0), 20.3, 19.8, valid=valid, bin_px=0.25)
    np.testing.assert_allclose(p2[:10], profile[:10], rtol=1e-9)
    assert np.isnan(fwhm_from_profile(radius, np.ones_like(radius)))


def test_whiskers_length_and_angle():
    length, angle = whiskers(np.array([0.1, 0.0]), np.array([0.0, 0.2]))
    np.testing.assert_allclose(length, [0.1, 0.2])
    np.testing.assert_allclose(angle, [0.0, np.pi / 4])


def test_star_stamps_are_the_nearest_stars_with_model_and_residual(frame):
    stars = frame.psf_fit.stars
    found = inspect_psf(frame.exposure, 250.0, 260.0, stars, n_stars=3)
    assert found.model.stamp.sum() == pytest.approx(1.0)
    assert found.model.fwhm_px == pytest.approx(frame.psf.fwhm_px(250.0, 260.0), rel=0.08)
    distance = np.hypot(np.asarray(stars["x"]) - 250.0, np.asarray(stars["y"]) - 260.0)
    assert [s.index for s in found.stars] == np.argsort(distance)[:3].tolist()
    for star in found.stars:
        np.testing.assert_allclose(star.residual[star.valid], (star.data - star.model)[star.valid])
        # the fitted flux is the PSF fit's flux of that star
        assert star.flux == pytest.approx(float(stars["flux"][star.index]), rel=0.03)
        assert star.star_fwhm_px == pytest.approx(star.model_fwhm_px, rel=0.1)
        # one stretch for the three stamps: the data's range
        assert star.limits == (
            float(star.data[star.valid].min()),
            float(star.data[star.valid].max()),
        )
        half = star.data.shape[0] // 2
        ix, iy = int(np.floor(star.x + 0.5)), int(np.floor(star.y + 0.5))
        np.testing.assert_array_equal(
            star.data, frame.exposure.image[iy - half : iy + half + 1, ix - half : ix + half + 1]
        )


def test_positions_off_the_image_and_missing_psf_are_clear_errors(frame):
    with pytest.raises(ValueError, match=r"\(x, y\) = \(600, 10\) is off the image of 512 x 512"):
        inspect_psf(frame.exposure, 600, 10)
    with pytest.raises(ValueError, match="no PSF"):
        inspect_psf(frame.exposure.replace(psf=None), 10, 10)
    found = inspect_psf(frame.exposure, 10, 10)
    assert found.stars == [] and "no stars given" in found.messages[0]


def test_field_map_is_the_model_moments_and_star_residuals(frame):
    stars = frame.psf_fit.stars
    field = psf_field(frame.exposure.shape, frame.psf, stars, n_grid=4)
    assert field.grid_T.shape == (4, 4)
    for j, i in ((0, 0), (3, 1), (2, 3)):
        T, e1, _ = frame.psf.moments(field.grid_x[j, i], field.grid_y[j, i])
        assert field.grid_T[j, i] == pytest.approx(T, rel=1e-6)
        assert field.grid_e1[j, i] == pytest.approx(e1, abs=1e-6)
    finite = np.isfinite(stars["T"]) & np.isfinite(stars["model_T"])
    assert len(field.stars) == int(finite.sum())
    np.testing.assert_allclose(
        field.stars["dT_over_T"],
        (stars["T"][finite] - stars["model_T"][finite]) / stars["T"][finite],
    )
    np.testing.assert_allclose(field.stars["de1"], stars["e1"][finite] - stars["model_e1"][finite])


def test_star_shapes_agree_with_the_psf_fit(frame):
    stars = frame.psf_fit.stars
    shapes = star_shapes(frame.exposure, stars["x"], stars["y"], psf=frame.psf)
    ok = np.isfinite(stars["T"])
    np.testing.assert_allclose(shapes["model_T"][ok], stars["model_T"][ok], rtol=1e-6)
    ratio = np.asarray(shapes["T"][ok] / stars["T"][ok])
    assert np.median(np.abs(ratio - 1)) < 1e-4
    # The fit also masks the pixels of neighbouring sources (other footprints, and a
    # deblended star's siblings), which star_shapes does not know: every star whose
    # size differs has a catalogued neighbour within 20 px (a sibling 2 FWHM away
    # changed T by 7%), and none differs grossly.
    catalog = frame.catalog
    distance, _ = cKDTree(np.c_[catalog["x"], catalog["y"]]).query(
        np.c_[stars["x"][ok], stars["y"][ok]], k=2
    )
    differs = np.abs(ratio - 1) > 1e-3
    assert np.all(distance[differs, 1] < 20.0)
    assert np.max(np.abs(ratio - 1)) < 0.1


def test_coadd_psf_is_inspected_with_the_same_tools(frame):
    ny, nx = frame.exposure.shape
    contributors = np.full((ny, nx), 0b11, dtype=np.int64)
    contributors[:, : nx // 2] = 0b01
    contributors[:50, :50] = 0  # no input: NO_DATA
    wcs = frame.exposure.wcs
    warped = [WarpedPsf(frame.psf, wcs, wcs), WarpedPsf(frame.psf, wcs, wcs)]
    coadd_psf = CoaddPsf(warped, [1.0, 3.0], contributors, stamp_size=25)
    exposure = frame.exposure.replace(psf=coadd_psf)
    found = inspect_psf(exposure, 300.0, 300.0, frame.psf_fit.stars, n_stars=2)
    assert found.model.stamp.shape == (25, 25)
    assert found.model.fwhm_px == pytest.approx(frame.psf.fwhm_px(300.0, 300.0), rel=0.05)
    assert len(found.stars) == 2
    shapes = star_shapes(exposure, frame.psf_fit.stars["x"], frame.psf_fit.stars["y"])
    field = psf_field(exposure.shape, coadd_psf, shapes, n_grid=3)
    assert np.isnan(field.grid_T[0, 0])  # the corner no input covers
    assert np.isfinite(field.grid_T[1:, 1:]).all()


def test_size_magnitude_marks_the_psf_stars(frame):
    data = size_magnitude(frame.catalog, zero_point=27.0)
    flags = np.asarray(frame.catalog["flags"])
    np.testing.assert_array_equal(data["psf_star"], (flags & int(SourceFlag.PSF_STAR)) != 0)
    row = int(np.flatnonzero(data["psf_star"])[0])
    flux = float(frame.catalog["flux_psf"][row])
    assert data["mag"][row] == pytest.approx(27.0 - 2.5 * np.log10(flux))
    assert data["T"][row] == pytest.approx(
        float(frame.catalog["ixx"][row] + frame.catalog["iyy"][row])
    )
