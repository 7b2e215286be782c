"""The Python peers of ``bench_single_frame``: sep used as in its documentation, and PIFF.

* sep: ``sep.Background`` with its defaults, ``sep.extract`` at 1.5 times the global
  rms, and the documentation's FLUX_AUTO recipe (Kron radius, elliptical aperture of
  2.5 Kron radii, a circular aperture of 3.5 px radius where the Kron radius is small).
* PIFF (the PSF modeller of DES and DESC): a ``PixelGrid`` model sampled at the pixel
  scale on a 17 x 17 grid (as in DES), a second-order ``BasisPolynomial`` over the
  image (as PSFEx is given) and chi² outlier rejection, fitted to the same training
  stars as stacklab's model so that both are judged at the same reserved stars.
  PIFF models no sky: it gets the image minus sep's background
  (:func:`write_sky_subtracted`). PIFF is optional (the ``bench`` extra, which ``make
  bench`` installs); without it the bench says so and goes on.

Each runner returns its result with the wall and CPU time (seconds) it took.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.table import Table


def run_sep(image: np.ndarray) -> tuple[Table, float, float]:
    """Background, detection and FLUX_AUTO with sep, as its documentation shows.

    Returns a table with 0-based ``x``, ``y``, ``flux_auto``, ``flux_auto_err``,
    ``flag``, and the wall and CPU time (s).
    """
    import sep

    wall0, cpu0 = time.perf_counter(), time.process_time()
    data = np.ascontiguousarray(image, dtype=np.float64)
    background = sep.Background(data)
    data_sub = data - background
    rms = background.globalrms
    # The documentation raises the pixel stack for large images.
    sep.set_extract_pixstack(10_000_000)
    sep.set_sub_object_limit(4096)
    objects = sep.extract(data_sub, 1.5, err=rms)
    x, y = objects["x"], objects["y"]
    # sep's float32 theta of an object along y can be float32(pi/2), just above the
    # pi/2 that sum_ellipse accepts (one object of the seed-10 scene): that call then
    # fails for every object. Clipped to the range.
    a, b = objects["a"], objects["b"]
    theta = np.clip(objects["theta"].astype(np.float64), -np.pi / 2, np.pi / 2)
    kron_radius, kron_flag = sep.kron_radius(data_sub, x, y, a, b, theta, 6.0)
    # Small Kron radii: a circular aperture instead (the documentation's r_min = 1.75);
    # so too an unusable one (not finite, or a zero axis).
    usable = np.isfinite(kron_radius) & (kron_radius > 0) & (a > 0) & (b > 0)
    small = ~usable | (kron_radius * np.sqrt(a * b) < 1.75)
    flux = np.zeros(len(x))
    flux_err = np.zeros(len(x))
    flag = np.zeros(len(x), dtype=np.int16)
    big = ~small
    flux[big], flux_err[big], flag[big] = sep.sum_ellipse(
        data_sub, x[big], y[big], a[big], b[big], theta[big], 2.5 * kron_radius[big],
        err=rms, subpix=1,
    )  # fmt: skip
    flag |= kron_flag
    cflux, cflux_err, cflag = sep.sum_circle(data_sub, x[small], y[small], 3.5, err=rms, subpix=1)
    flux[small], flux_err[small], flag[small] = cflux, cflux_err, cflag
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    table = Table({"x": x, "y": y, "flux_auto": flux, "flux_auto_err": flux_err, "flag": flag})
    return table, wall, cpu


def piff_available() -> bool:
    """Whether PIFF imports here."""
    try:
        import piff  # noqa: F401
    except ImportError:
        return False
    return True


def run_piff(
    image_path: Path,
    weight_path: Path,
    x: np.ndarray,
    y: np.ndarray,
    pixel_scale_arcsec: float,
    work: Path,
) -> tuple[Any, float, float]:
    """Fit a PIFF model to the stars at 0-based ``(x, y)`` of a FITS image with a weight map.

    Returns the PIFF PSF and the wall and CPU time (s) of the fit.
    """
    import piff

    catalog = work / "piff_stars.fits"
    # PIFF, like GalSim, puts the centre of the first pixel at (1, 1).
    Table({"x": np.asarray(x) + 1.0, "y": np.asarray(y) + 1.0}).write(catalog, overwrite=True)
    output = work / "piff.fits"
    config = {
        "input": {
            "image_file_name": str(image_path),
            "weight_file_name": str(weight_path),
            "cat_file_name": str(catalog),
            "x_col": "x",
            "y_col": "y",
            "stamp_size": 25,
        },
        "psf": {
            "model": {"type": "PixelGrid", "scale": pixel_scale_arcsec, "size": 17},
            "interp": {"type": "BasisPolynomial", "order": 2},
            "outliers": {"type": "Chisq", "nsigma": 4, "max_remove": 0.05},
        },
        "output": {"file_name": str(output)},
        "verbose": 0,
    }
    wall0, cpu0 = time.perf_counter(), time.process_time()
    piff.piffify(config)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return piff.read(str(output)), wall, cpu


def piff_image(psf: Any, x: float, y: float) -> np.ndarray:
    """The PIFF model at 0-based ``(x, y)``, centred on the stamp's central pixel, unit sum."""
    stamp = psf.draw(x + 1.0, y + 1.0, stamp_size=25, center=True).array.astype(np.float64)
    return stamp / stamp.sum()


def write_sky_subtracted(path: Path, image: np.ndarray, header: fits.Header | None) -> None:
    """The image minus sep's default background, for PIFF (which fits no sky)."""
    import sep

    data = np.ascontiguousarray(image, dtype=np.float64)
    fits.writeto(path, (data - sep.Background(data)).astype(np.float32), header, overwrite=True)


def write_weight(path: Path, variance: np.ndarray) -> None:
    """Inverse-variance weight map (zero where the variance is not positive)."""
    with np.errstate(divide="ignore"):
        weight = np.where(variance > 0, 1.0 / variance, 0.0).astype(np.float32)
    fits.writeto(path, weight, overwrite=True)
