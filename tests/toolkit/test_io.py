"""FITS input and output: stacklab's own layout, plain files as users have them, and bad input."""

from __future__ import annotations

import bz2
from pathlib import Path

import numpy as np
import pytest
import sep
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS

from stacklab.toolkit import Exposure, read_exposure, write_exposure
from stacklab.toolkit.io import atomic_path
from stacklab.toolkit.simulate import SimulatedPsf, SimulatedVisit


def _assert_same_exposure(a: Exposure, b: Exposure) -> None:
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.variance, b.variance)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert dict(a.mask_planes) == dict(b.mask_planes)
    assert (a.band, a.visit, a.detector, a.zero_point) == (
        b.band,
        b.visit,
        b.detector,
        b.zero_point,
    )
    assert (a.x0, a.y0) == (b.x0, b.y0)


def test_round_trip_keeps_planes_wcs_psf_ids_and_metadata(
    artifact_visit: SimulatedVisit, tmp_path: Path
) -> None:
    exp = artifact_visit.exposure
    path = write_exposure(exp, tmp_path / "calexp.fits")
    with fits.open(path) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "IMAGE", "MASK", "VARIANCE", "PSF"]
        assert hdul["MASK"].header["MP_SAT"] == exp.mask_planes["SAT"]
        for name in ("IMAGE", "MASK", "VARIANCE"):
            assert WCS(hdul[name].header).has_celestial
    back = read_exposure(path)
    _assert_same_exposure(exp, back)
    assert isinstance(back.psf, SimulatedPsf) and back.psf == exp.psf
    assert back.meta["EXPTIME"] == 30.0 and back.meta["MJD-OBS"] == exp.meta["MJD-OBS"]
    x, y = np.array([0.0, 511.3, 1023.0]), np.array([0.0, 700.2, 1023.0])
    np.testing.assert_allclose(
        back.wcs.pixel_to_world_values(x, y), exp.wcs.pixel_to_world_values(x, y)
    )


def test_cutouts_and_compressed_files_round_trip(
    artifact_visit: SimulatedVisit, tmp_path: Path
) -> None:
    cut = artifact_visit.exposure[200:400, 300:650]
    back = read_exposure(write_exposure(cut, tmp_path / "cut.fits.fz"))
    _assert_same_exposure(cut, back)  # lossless tile compression
    np.testing.assert_allclose(back.psf.compute_image(5.0, 6.0), cut.psf.compute_image(5.0, 6.0))
    assert back.wcs.pixel_to_world(0, 0).separation(cut.wcs.pixel_to_world(0, 0)).arcsec < 1e-6


def test_a_failed_write_leaves_nothing_behind(tmp_path: Path) -> None:
    target = tmp_path / "out.fits"
    target.write_text("previous good content")
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("disk full")
    assert target.read_text() == "previous good content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.fits"]
    with pytest.raises(FileNotFoundError, match="does not exist; create it first"):
        write_exposure(Exposure(np.zeros((4, 4))), tmp_path / "missing" / "x.fits")
    with pytest.raises(TypeError, match="needs an Exposure"):
        write_exposure(np.zeros((4, 4)), tmp_path / "x.fits")  # type: ignore[arg-type]


# ---- plain files --------------------------------------------------------------------
def _write_plain(path: Path, data: np.ndarray, **header: object) -> Path:
    hdu = fits.PrimaryHDU(data)
    hdu.header.update(header)
    hdu.writeto(path)
    return path


def test_scaled_integers_are_read_as_physical_values(tmp_path: Path) -> None:
    raw = np.arange(-50, 50, dtype=np.int16).reshape(10, 10)
    path = _write_plain(tmp_path / "scaled.fits", raw)
    with fits.open(path, mode="update", do_not_scale_image_data=True) as hdul:
        hdul[0].header["BSCALE"] = 2.0
        hdul[0].header["BZERO"] = 100.0
    exp = read_exposure(path)
    np.testing.assert_array_equal(exp.image, raw * 2.0 + 100.0)
    unsigned = np.array([[0, 1, 40000], [65535, 2, 3]], dtype=np.uint16)
    exp = read_exposure(_write_plain(tmp_path / "u16.fits", unsigned))
    np.testing.assert_array_equal(exp.image, unsigned.astype(np.float32))


def test_big_endian_float64_is_made_native_for_sep(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = rng.normal(10.0, 1.0, (64, 64)).astype(">f8")
    path = _write_plain(tmp_path / "be.fits", data)
    with fits.open(path) as hdul:
        assert hdul[0].data.dtype.byteorder == ">"
    exp = read_exposure(path)
    assert exp.image.dtype == np.float32 and exp.image.dtype.isnative
    assert sep.Background(exp.image).globalback == pytest.approx(10.0, abs=0.1)


def test_nan_pixels_become_no_data(tmp_path: Path) -> None:
    data = np.ones((8, 8), np.float32)
    data[2, 3] = np.nan
    data[5, :] = np.inf
    exp = read_exposure(_write_plain(tmp_path / "nan.fits", data))
    assert exp.plane("NO_DATA").sum() == 9 and exp.plane("NO_DATA")[2, 3]
    assert np.all(np.isfinite(exp.image)) and exp.image[2, 3] == 0.0
    assert np.isinf(exp.variance[2, 3])


@pytest.mark.parametrize("suffix", [".fits.gz", ".fits.bz2", ".fits.fz"])
def test_compressed_plain_files(tmp_path: Path, suffix: str) -> None:
    rng = np.random.default_rng(2)
    data = rng.integers(0, 1000, (40, 50)).astype(np.float32)
    path = tmp_path / f"img{suffix}"
    if suffix == ".fits.fz":
        fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, quantize_level=0.0)]).writeto(path)
    elif suffix == ".fits.bz2":
        plain = _write_plain(tmp_path / "tmp.fits", data)
        path.write_bytes(bz2.compress(plain.read_bytes()))
    else:
        _write_plain(path, data)
    np.testing.assert_array_equal(read_exposure(path).image, data)


def test_variance_and_weight_maps(tmp_path: Path) -> None:
    data = np.full((10, 12), 5.0, np.float32)
    image = _write_plain(tmp_path / "img.fits", data)
    weight = np.full((10, 12), 0.25, np.float32)
    weight[0, 0] = 0.0
    exp = read_exposure(image, weight=_write_plain(tmp_path / "w.fits", weight))
    assert exp.variance[1, 1] == pytest.approx(4.0)
    assert exp.plane("NO_DATA")[0, 0] and exp.plane("NO_DATA").sum() == 1
    exp = read_exposure(image, variance=np.full((10, 12), 9.0), band="r")
    assert exp.variance[3, 3] == 9.0 and exp.band == "r"
    with pytest.raises(ValueError, match=r"has shape \(3, 3\) but the image has \(10, 12\)"):
        read_exposure(image, variance=np.ones((3, 3)))
    with pytest.raises(ValueError, match="either variance= or weight="):
        read_exposure(image, variance=np.ones((10, 12)), weight=np.ones((10, 12)))
    with pytest.raises(ValueError, match="negative"):
        read_exposure(image, weight=-np.ones((10, 12)))


def test_gain_adds_a_poisson_term_to_the_estimated_variance(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    data = rng.normal(100.0, 5.0, (100, 100)).astype(np.float32)
    data[50, 50] = 10_100.0
    exp = read_exposure(_write_plain(tmp_path / "g.fits", data, GAIN=2.0))
    assert exp.variance[0, 0] == pytest.approx(25.0, rel=0.05)
    assert exp.variance[50, 50] == pytest.approx(25.0 + 10_000.0 / 2.0, rel=0.01)


# ---- bad input ----------------------------------------------------------------------
def test_bad_files_get_errors_that_name_the_file_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such FITS file"):
        read_exposure(tmp_path / "nope.fits")
    text = tmp_path / "notes.fits"
    text.write_text("this is not FITS")
    with pytest.raises(ValueError, match="not a readable FITS file"):
        read_exposure(text)
    cube = _write_plain(tmp_path / "cube.fits", np.zeros((3, 4, 5), np.float32))
    with pytest.raises(ValueError, match=r"3-D data of shape \(3, 4, 5\).*take one plane"):
        read_exposure(cube)
    line = _write_plain(tmp_path / "line.fits", np.zeros(7, np.float32))
    with pytest.raises(ValueError, match=r"1-D data .*2-D images"):
        read_exposure(line)
    table = tmp_path / "table.fits"
    fits.HDUList(
        [
            fits.PrimaryHDU(),
            fits.BinTableHDU.from_columns([fits.Column("a", "E", array=np.ones(3))]),
        ]
    ).writeto(table)
    with pytest.raises(ValueError, match=r"no image HDU with data.*BinTableHDU"):
        read_exposure(table)
    with pytest.raises(ValueError, match="is a BinTableHDU, not an image"):
        read_exposure(table, hdu=1)
    with pytest.raises(ValueError, match=r"has no HDU 'SCI'; it has 0:PRIMARY, 1:"):
        read_exposure(table, hdu="SCI")


def test_damaged_stacklab_layout_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "damaged.fits"
    fits.HDUList(
        [
            fits.PrimaryHDU(),
            fits.ImageHDU(np.zeros((5, 5), np.float32), name="IMAGE"),
            fits.ImageHDU(np.zeros((5, 4), np.int32), name="MASK"),
            fits.ImageHDU(np.ones((5, 5), np.float32), name="VARIANCE"),
        ]
    ).writeto(path)
    with pytest.raises(ValueError, match=r"damaged.fits\[MASK\] has shape \(5, 4\) but IMAGE"):
        read_exposure(path)
    with pytest.raises(ValueError, match="already has a VARIANCE HDU"):
        read_exposure(path, variance=np.ones((5, 5)))


def test_a_wcs_that_does_not_parse_is_reported(tmp_path: Path) -> None:
    path = _write_plain(
        tmp_path / "badwcs.fits",
        np.zeros((5, 5), np.float32),
        CTYPE1="RA---TAN",
        CTYPE2="DEC--TAN",
        CRVAL1=10.0,
        CRVAL2=20.0,
        CD1_1=0.0,
        CD1_2=0.0,
        CD2_1=0.0,
        CD2_2=0.0,
        CDELT1=1.0,
        PV1_5="not a number",
    )
    with pytest.raises(ValueError, match=r"WCS in .*badwcs.fits.* does not parse"):
        read_exposure(path)


# ---- real files ---------------------------------------------------------------------
_EXPECTED = {
    "HorseHead.fits": ((893, 891), True),
    "allsky_rosat.fits": ((240, 480), True),
    "gc_2mass_k.fits": ((720, 721), True),
    "gc_msx_e.fits": ((149, 149), True),
    "reprojected_sdss_g.fits.bz2": ((496, 682), True),
    "reprojected_sdss_r.fits.bz2": ((496, 682), True),
    "reprojected_sdss_i.fits.bz2": ((496, 682), True),
    "c4d_171113_060340_ooi_r_ls9.N6.fits": ((375, 280), True),
    "c4d_171113_060340_oow_r_ls9.N6.fits": ((375, 280), True),
    "c4d_171113_060340_ood_r_ls9.N6.fits": ((375, 280), True),
    "M51.fits": ((512, 512), False),
    "M6707HH.fits": ((1059, 1059), True),
    "spitzer_example_image.fits": ((513, 1025), True),
    "pspc_skyview.fits": ((300, 300), True),
    "image.fits": ((256, 256), False),
    "back.fits": ((256, 256), False),
    "rms.fits": ((256, 256), False),
    **{f"irac_ch{k}_flight.fits": ((81, 81), False) for k in range(1, 5)},
}
_TABLES_ONLY = {"c4d_171113_060340_ooi_r_ls9-psfex.fits", "regions_wcs.fits", "regions_nowcs.fits"}


def test_every_real_fits_file_reads_or_is_refused_clearly(real_data: Path) -> None:
    files = sorted(
        p
        for p in real_data.rglob("*")
        if p.name.endswith((".fits", ".fits.bz2", ".fits.gz", ".fz"))
    )
    assert len(files) >= 20
    seen = set()
    for path in files:
        if path.name in _TABLES_ONLY:
            with pytest.raises(ValueError, match="no image HDU with data"):
                read_exposure(path)
            seen.add(path.name)
            continue
        exp = read_exposure(path)
        shape, has_wcs = _EXPECTED[path.name]
        assert exp.shape == shape, path.name
        assert (exp.wcs is not None) == has_wcs, path.name
        assert exp.image.dtype == np.float32 and exp.image.dtype.isnative
        assert np.all(np.isfinite(exp.image)) and np.all(exp.variance > 0)
        seen.add(path.name)
    assert seen == set(_EXPECTED) | _TABLES_ONLY


def test_dss_plate_solution_points_at_m67(real_data: Path) -> None:
    exp = read_exposure(real_data / "photutils-datasets" / "M6707HH.fits")
    centre = exp.wcs.pixel_to_world((exp.width - 1) / 2, (exp.height - 1) / 2)
    m67 = SkyCoord("08h51m20s", "+11d48m43s")
    assert centre.separation(m67) < 2 * u.arcmin


def test_decam_tpv_image_with_its_weight_map(real_data: Path) -> None:
    folder = real_data / "legacypipe-decam"
    exp = read_exposure(
        folder / "c4d_171113_060340_ooi_r_ls9.N6.fits",
        weight=folder / "c4d_171113_060340_oow_r_ls9.N6.fits",
    )
    # wcslib turns TPV into TAN plus a distortion: the PV terms must not be lost.
    with fits.open(folder / "c4d_171113_060340_ooi_r_ls9.N6.fits") as hdul:
        header = hdul[1].header.copy()
    assert header["CTYPE1"] == "RA---TPV"
    without_pv = header.copy()
    for key in [k for k in header if k.startswith("PV")]:
        del without_pv[key]
    corner = exp.wcs.pixel_to_world(0, 0)
    assert corner.separation(WCS(header).pixel_to_world(0, 0)).arcsec < 1e-6
    assert corner.separation(WCS(without_pv).pixel_to_world(0, 0)).arcsec > 1.0
    assert exp.meta["EXPTIME"] == 45.0 and exp.band == "r"
    assert np.median(exp.image) == pytest.approx(174.0, rel=0.05)
    # The weight map is 1/sigma²: the sky's pixel scatter agrees with it.
    sky = exp.image < np.percentile(exp.image, 60)
    scatter = 1.4826 * np.median(np.abs(exp.image[sky] - np.median(exp.image[sky])))
    assert scatter == pytest.approx(np.sqrt(np.median(exp.variance[sky])), rel=0.2)
    centre = exp.wcs.pixel_to_world(140, 187)
    assert centre.separation(SkyCoord("08h04m06s", "+05d06m49s")) < 10 * u.arcmin


def test_sep_reproduces_sextractor_background_on_a_read_exposure(real_data: Path) -> None:
    folder = real_data / "sep"
    exp = read_exposure(folder / "image.fits")
    background = sep.Background(exp.image, bw=64, bh=64, fw=3, fh=3)
    expected = read_exposure(folder / "back.fits").image
    np.testing.assert_allclose(background.back(), expected, rtol=1e-5)
