"""Exposure: construction checks, cutouts, mask planes, calibration and CCDData interop."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.nddata import CCDData, InverseVariance, StdDevUncertainty
from astropy.wcs import WCS

from stacklab.toolkit import DEFAULT_MASK_PLANES, Exposure, MaskPlanes, ShiftedPsf
from stacklab.toolkit.simulate import SimulatedVisit


def _tan_wcs(shape: tuple[int, int]) -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [10.0, -5.0]
    wcs.wcs.crpix = [shape[1] / 2, shape[0] / 2]
    wcs.wcs.cd = [[-5.6e-5, 0.0], [0.0, 5.6e-5]]
    return wcs


def test_planes_are_coerced_to_float32_int32_native_order() -> None:
    image = np.arange(12, dtype=">i2").reshape(3, 4)
    exp = Exposure(image, variance=np.ones((3, 4), ">f8"), mask=np.zeros((3, 4), np.uint8))
    assert exp.image.dtype == np.float32 and exp.image.dtype.byteorder in "=|"
    assert exp.variance.dtype == np.float32 and exp.mask.dtype == np.int32
    np.testing.assert_array_equal(exp.image, np.arange(12).reshape(3, 4))


def test_missing_variance_is_estimated_from_the_noise_and_labelled() -> None:
    rng = np.random.default_rng(1)
    exp = Exposure(rng.normal(100.0, 3.0, (200, 200)))
    assert np.sqrt(exp.variance[0, 0]) == pytest.approx(3.0, rel=0.03)
    assert "estimated" in exp.meta["VARSRC"]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"image": np.zeros(5)}, ValueError, "image must be 2-D"),
        ({"image": np.zeros((2, 3, 4))}, ValueError, "one plane of a cube"),
        ({"image": np.array([["a"]])}, TypeError, "numeric"),
        (
            {"image": np.zeros((4, 4)), "variance": np.ones((4, 5))},
            ValueError,
            "variance has shape",
        ),
        ({"image": np.zeros((4, 4)), "mask": np.ones((3, 4))}, ValueError, "mask has shape"),
        ({"image": np.zeros((4, 4)), "mask": np.full((4, 4), 0.5)}, TypeError, "integer bit"),
        ({"image": np.zeros((4, 4)), "wcs": "RA---TAN"}, TypeError, "astropy.wcs.WCS"),
        ({"image": np.zeros((4, 4)), "psf": object()}, TypeError, "compute_image"),
        ({"image": np.zeros((4, 4)), "zero_point": float("nan")}, ValueError, "zero_point"),
    ],
)
def test_bad_planes_are_refused_with_a_clear_message(kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        Exposure(**kwargs)


def test_cutout_keeps_wcs_planes_psf_and_parent_position(artifact_visit: SimulatedVisit) -> None:
    exp = artifact_visit.exposure
    cut = exp[100:300, 250:420]
    assert cut.shape == (200, 170) and (cut.x0, cut.y0) == (250, 100)
    np.testing.assert_array_equal(cut.mask, exp.mask[100:300, 250:420])
    np.testing.assert_array_equal(cut.variance, exp.variance[100:300, 250:420])
    sky_cut = cut.wcs.pixel_to_world(10.0, 20.0)
    sky_parent = exp.wcs.pixel_to_world(260.0, 120.0)
    assert sky_cut.separation(sky_parent).arcsec < 1e-6
    assert isinstance(cut.psf, ShiftedPsf)
    np.testing.assert_allclose(
        cut.psf.compute_image(30.0, 40.0), exp.psf.compute_image(280.0, 140.0)
    )
    nested = cut[10:20, 5:15]
    assert (nested.x0, nested.y0) == (255, 110)
    np.testing.assert_allclose(
        nested.psf.compute_image(1.0, 2.0), exp.psf.compute_image(256.0, 112.0)
    )


@pytest.mark.parametrize("key", [np.s_[5], np.s_[1:5, 1:5:2], np.s_[..., 1:3], np.s_[4:4, :]])
def test_bad_cutouts_are_refused(key) -> None:
    exp = Exposure(np.zeros((10, 10)), variance=np.ones((10, 10)))
    with pytest.raises((TypeError, ValueError), match="cut"):
        exp[key]


def test_mask_planes_by_name() -> None:
    exp = Exposure(np.zeros((6, 6)), variance=np.ones((6, 6)))
    for name in ("BAD", "SAT", "CR", "EDGE", "DETECTED", "INTRP", "SUSPECT", "CLIPPED", "NO_DATA"):
        assert name in exp.mask_planes and name in DEFAULT_MASK_PLANES
    where = np.zeros((6, 6), bool)
    where[2, 3] = True
    exp.set_plane("CR", where)
    exp.set_plane("SAT", where)
    assert exp.plane("CR")[2, 3] and exp.plane("CR").sum() == 1
    assert exp.mask_planes.names_of(int(exp.mask[2, 3])) == ["SAT", "CR"]
    with pytest.raises(KeyError, match=r"unknown mask plane 'GHOST'.*with_plane"):
        exp.plane("GHOST")
    ghost = exp.with_plane("GHOST")
    ghost.set_plane("GHOST", where)
    assert ghost.plane("GHOST")[2, 3] and exp.mask is ghost.mask


def test_mask_plane_registry_round_trips_through_a_header() -> None:
    planes = MaskPlanes.default().with_plane("DETECTED_NEGATIVE").with_plane("MY_PLANE")
    header = fits.Header()
    planes.to_header(header)
    assert MaskPlanes.from_header(header) == planes
    with pytest.raises(ValueError, match="share a bit"):
        MaskPlanes({"A": 1, "B": 1})
    with pytest.raises(ValueError, match=r"bits must be integers in 0\.\.30"):
        MaskPlanes({"A": 31})


def test_remap_moves_bits_between_registries() -> None:
    source = MaskPlanes({"SAT": 0, "CR": 5})
    target = MaskPlanes.default()
    mask = np.array([[1, 32, 33]], dtype=np.int32)
    out = source.remap(mask, target)
    assert out[0, 0] == target.bitmask("SAT") and out[0, 1] == target.bitmask("CR")
    assert out[0, 2] == target.bitmask("SAT", "CR")


def test_magnitudes_use_the_zero_point() -> None:
    exp = Exposure(np.zeros((4, 4)), variance=np.ones((4, 4)), zero_point=27.0)
    assert exp.flux_to_mag(1000.0) == pytest.approx(19.5)
    assert exp.mag_to_flux(19.5) == pytest.approx(1000.0)
    assert np.isnan(exp.flux_to_mag(-5.0))
    with pytest.raises(ValueError, match="no zero_point"):
        Exposure(np.zeros((4, 4)), variance=np.ones((4, 4))).flux_to_mag(1.0)


def test_ccddata_round_trip_keeps_planes_wcs_and_ids() -> None:
    rng = np.random.default_rng(3)
    image = rng.normal(size=(20, 30)).astype(np.float32)
    mask = np.zeros((20, 30), np.int32)
    mask[3, 4] = 5
    exp = Exposure(
        image,
        variance=np.full((20, 30), 2.0),
        mask=mask,
        wcs=_tan_wcs((20, 30)),
        band="i",
        visit=7,
        zero_point=30.0,
    )
    ccd = exp.to_ccddata()
    assert isinstance(ccd, CCDData) and ccd.unit == "adu"
    assert ccd.mask.dtype == bool and ccd.mask.sum() == 1  # bits 0 and 2: BAD and INTRP
    back = Exposure.from_ccddata(ccd)
    np.testing.assert_array_equal(back.image, exp.image)
    np.testing.assert_array_equal(back.variance, exp.variance)
    np.testing.assert_array_equal(back.mask, exp.mask)
    assert (back.band, back.visit, back.zero_point) == ("i", 7, 30.0)
    assert back.wcs.pixel_to_world(3, 4).separation(exp.wcs.pixel_to_world(3, 4)).arcsec < 1e-9


def test_from_ccddata_understands_other_uncertainties_and_boolean_masks() -> None:
    data = np.ones((5, 5))
    ccd = CCDData(data, unit="adu", uncertainty=StdDevUncertainty(np.full((5, 5), 3.0)))
    assert Exposure.from_ccddata(ccd).variance[0, 0] == pytest.approx(9.0)
    ccd = CCDData(data, unit="adu", uncertainty=InverseVariance(np.full((5, 5), 0.25)))
    assert Exposure.from_ccddata(ccd, band="z").variance[0, 0] == pytest.approx(4.0)
    ccd = CCDData(data, unit="adu", mask=np.eye(5, dtype=bool))
    exp = Exposure.from_ccddata(ccd)
    assert exp.plane("BAD").sum() == 5
