"""Single-frame processing, side by side: stacklab vs SExtractor + PSFEx on one simulated image.

Simulates a 4096x4096 r-band visit (size from ``STACKLAB_BENCH_SIZE``; the scene from
``STACKLAB_BENCH_SEED``, 7 unless set: other seeds draw other stars, galaxies, seeing
and PSF patterns), runs ``process_frame`` in a one-thread child process and
SExtractor (two passes) + PSFEx on the same pixels, and prints accuracy against the
simulation truth and time/memory ratios. Run by ``make bench``; never by the tests.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import numpy as np  # noqa: E402
from astropy.io import fits  # noqa: E402
from astropy.table import Table  # noqa: E402
from scipy.spatial import cKDTree  # noqa: E402
from single_frame_peers import (  # noqa: E402
    piff_available,
    piff_image,
    run_piff,
    run_sep,
    write_sky_subtracted,
)

from stacklab.toolkit import PsfModel, SourceFlag, rho_statistics, write_exposure  # noqa: E402
from stacklab.toolkit.simulate import SimulationConfig, make_sky, simulate_visit  # noqa: E402

SIZE = int(os.environ.get("STACKLAB_BENCH_SIZE", "4096"))
SEED = int(os.environ.get("STACKLAB_BENCH_SEED", "7"))
SEX = shutil.which("source-extractor") or shutil.which("sex")
PSFEX = shutil.which("psfex")
SHARE = Path("/usr/share/source-extractor")
MATCH_PX = 2.0

# Memory is read from /proc, not getrusage: ru_maxrss survives exec, so a child
# started from this (large) process would report this process's peak. VmHWM is
# per address space; writing 5 to clear_refs resets it to the current RSS.
_CHILD = """
import sys, time, pickle
from astropy.io import fits
from stacklab.toolkit import read_exposure, process_frame

def status_kb(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))

exp = read_exposure(sys.argv[1])
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
except OSError:
    pass
base = status_kb("VmRSS")
t, cpu = time.perf_counter(), time.process_time()
res = process_frame(exp)
wall, cpu = time.perf_counter() - t, time.process_time() - cpu
peak = status_kb("VmHWM")
# Children whose peak the symmetry search found (hidden on a brighter source's slope).
pk = res.detections.peaks[res.detections.peaks["residual"]]
hidden = set(zip(pk["footprint"].tolist(), pk["x"].tolist(), pk["y"].tolist()))
src = res.deblended.sources
res.catalog["peak_x"], res.catalog["peak_y"] = src["peak_x"], src["peak_y"]
res.catalog["hidden_peak"] = [
    p > 0 and (f, x, y) in hidden
    for p, f, x, y in zip(src["parent"].tolist(), src["footprint"].tolist(),
                          src["peak_x"].tolist(), src["peak_y"].tolist())
]
res.catalog.write(sys.argv[2], overwrite=True)
fits.HDUList([fits.PrimaryHDU(), res.psf.to_hdu()]).writeto(sys.argv[3], overwrite=True)
stars = res.psf_fit.stars
stars.write(sys.argv[4], overwrite=True)
v = res.psf_fit.validation
print(" ".join(f"{k}={t:.2f}" for k, t in res.timings.items()))
print(wall, cpu, base, peak, res.aperture_correction, v.size_residual_mean, v.size_residual_rms,
      v.rho.mean("rho1", 0.2, 1.0) if v.rho else float("nan"))
"""

# The peers run from a small helper process, so that their max RSS is their own
# (see above); it prints the wall time, the CPU time (user + system) and the
# largest child's max RSS (kB). CPU time is the steadier figure on a shared machine.
_PEER_RUNNER = """
import json, resource, subprocess, sys, time
commands = json.loads(sys.argv[1])
start = time.perf_counter()
for command in commands:
    subprocess.run(command, check=True, cwd=sys.argv[2])
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(time.perf_counter() - start, usage.ru_utime + usage.ru_stime, usage.ru_maxrss)
"""


def _sextractor_config(work: Path, image: Path, weight: Path) -> list[str]:
    return [
        "-c", str(SHARE / "default.sex"), "-FILTER_NAME", str(SHARE / "gauss_2.5_5x5.conv"),
        "-STARNNW_NAME", str(SHARE / "default.nnw"), "-WEIGHT_TYPE", "MAP_WEIGHT",
        "-WEIGHT_IMAGE", str(weight), "-DETECT_THRESH", "1.5", "-DETECT_MINAREA", "5",
        "-SATUR_LEVEL", "59000", "-GAIN", "1.5", "-PIXEL_SCALE", "0", "-SEEING_FWHM", "0.8",
        "-BACK_SIZE", "64", "-NTHREADS", "1", "-VERBOSE_TYPE", "QUIET", "-CHECKIMAGE_TYPE", "NONE",
        "-PHOT_APERTURES", "34",
    ]  # fmt: skip


def run_peers(
    image: Path, weight: Path, work: Path, *, model_fits: bool = False
) -> tuple[Table, Path, float, float, float]:
    """SExtractor pass 1 -> PSFEx -> SExtractor pass 2 (PSF photometry); wall, CPU, max RSS.

    With ``model_fits`` the second pass also fits galaxy models (FLUX_MODEL,
    SPREAD_MODEL: the peers of stacklab's ``flux_model`` and ``extendedness``).
    """
    base = _sextractor_config(work, image, weight)
    (work / "pre.param").write_text(
        "\n".join(
            [
                "X_IMAGE",
                "Y_IMAGE",
                "XWIN_IMAGE",
                "YWIN_IMAGE",
                "FLUX_APER(1)",
                "FLUXERR_APER(1)",
                "FLUX_RADIUS",
                "ELONGATION",
                "FLAGS",
                "SNR_WIN",
                "FLUX_MAX",
                "VIGNET(35,35)",
            ]
        )
        + "\n"
    )
    (work / "final.param").write_text(
        "\n".join(
            [
                "NUMBER",
                "X_IMAGE",
                "Y_IMAGE",
                "XPSF_IMAGE",
                "YPSF_IMAGE",
                "FLUX_PSF",
                "FLUXERR_PSF",
                "FLUX_AUTO",
                "FLUXERR_AUTO",
                "FLUX_APER(1)",
                "FLAGS",
                "CLASS_STAR",
                "SNR_WIN",
                *(("FLUX_MODEL", "FLUXERR_MODEL", "SPREAD_MODEL") if model_fits else ()),
            ]
        )
        + "\n"
    )
    commands = [
        [SEX, str(image), *base, "-CATALOG_TYPE", "FITS_LDAC", "-CATALOG_NAME",
         str(work / "pre.cat"), "-PARAMETERS_NAME", str(work / "pre.param")],
        psfex_command(work / "pre.cat", work, size=35, sampling=1.0),
        [SEX, str(image), *base, "-CATALOG_TYPE", "FITS_1.0", "-CATALOG_NAME",
         str(work / "final.cat"), "-PARAMETERS_NAME", str(work / "final.param"),
         "-PSF_NAME", str(work / "pre.psf")],
    ]  # fmt: skip
    runner = subprocess.run(
        [sys.executable, "-c", _PEER_RUNNER, json.dumps(commands), str(work)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    wall, cpu, peak_kb = (float(v) for v in runner.stdout.split()[-3:])
    psf_file = work / "pre.psf"
    return Table.read(work / "final.cat", hdu=1), psf_file, wall, cpu, peak_kb / 1024.0


def psfex_command(catalog: Path, psf_dir: Path, *, size: int, sampling: float) -> list[str]:
    """PSFEx on a SExtractor FITS_LDAC ``catalog``, for a field whose seeing varies.

    A ``size`` x ``size`` model of ``sampling`` image pixels a step, second-degree
    variation, written to ``psf_dir``; one thread.
    """
    return [
        str(PSFEX), str(catalog), "-c", "/usr/share/psfex/default.psfex",
        "-PSF_SIZE", f"{size},{size}", "-PSFVAR_DEGREES", "2", "-PSF_SAMPLING", f"{sampling}",
        "-BASIS_TYPE", "PIXEL_AUTO", "-SAMPLE_VARIABILITY", "0.3", "-SAMPLE_MINSN", "20",
        "-SAMPLE_FWHMRANGE", "1.5,15", "-SAMPLE_MAXELLIP", "0.3", "-CHECKPLOT_TYPE", "NONE",
        "-CHECKIMAGE_TYPE", "NONE", "-WRITE_XML", "N", "-NTHREADS", "1", "-VERBOSE_TYPE",
        "QUIET", "-PSF_DIR", str(psf_dir),
    ]  # fmt: skip


@dataclass(frozen=True)
class PsfexModel:
    """A PSFEx ``.psf`` file.

    Attributes
    ----------
    basis : numpy.ndarray, shape (n_terms, n, n)
        ``PSF_MASK``: one image per polynomial term, on the model grid.
    sampling_px : float
        ``PSF_SAMP``: the model grid's step (image pixels).
    zero, scale : tuple of float
        ``POLZERO1/2``, ``POLSCAL1/2`` (1-based image pixels, as PSFEx's X_IMAGE).
    degree : int
        ``POLDEG1``.
    n_stars : int
        ``ACCEPTED``: the stars PSFEx kept.
    """

    basis: np.ndarray
    sampling_px: float
    zero: tuple[float, float]
    scale: tuple[float, float]
    degree: int
    n_stars: int


def read_psfex(path: Path) -> PsfexModel:
    """Read a PSFEx ``.psf`` file, at any ``PSF_SAMP``."""
    with fits.open(path) as hdul:
        header = hdul[1].header
        basis = np.asarray(hdul[1].data["PSF_MASK"][0], dtype=np.float64)
    return PsfexModel(
        basis=basis,
        sampling_px=float(header["PSF_SAMP"]),
        zero=(float(header["POLZERO1"]), float(header["POLZERO2"])),
        scale=(float(header["POLSCAL1"]), float(header["POLSCAL2"])),
        degree=int(header["POLDEG1"]),
        n_stars=int(header.get("ACCEPTED", -1)),
    )


def psfex_fine_image(model: PsfexModel, x: float, y: float) -> np.ndarray:
    """PSFEx model at 0-based ``(x, y)`` on its own grid (``PSF_SAMP`` px a step), unnormalized.

    Terms in PSFEx's order, x powers first: 1, x, x², y, xy, y² for degree 2.
    """
    dx = (x + 1.0 - model.zero[0]) / model.scale[0]
    dy = (y + 1.0 - model.zero[1]) / model.scale[1]
    d = model.degree
    terms = np.array([dx**i * dy**j for j in range(d + 1) for i in range(d + 1 - j)])
    return np.asarray(np.tensordot(terms, model.basis, axes=1))


def psfex_image(model: PsfexModel, x: float, y: float) -> np.ndarray:
    """PSFEx model of sampling 1 at 0-based ``(x, y)``, unit sum."""
    stamp = psfex_fine_image(model, x, y)
    return stamp / stamp.sum()


def shapes(images: list[np.ndarray]) -> np.ndarray:
    import galsim

    out = []
    for image in images:
        res = galsim.hsm.FindAdaptiveMom(galsim.ImageD(np.pad(image, 17), scale=1.0), strict=False)
        s = res.observed_shape
        out.append((2 * res.moments_sigma**2, s.e1, s.e2))
    return np.array(out)


def detection_stats(
    x, y, snr_measured, truth, truth_snr, everything
) -> list[tuple[str, float, float, int]]:
    tree = cKDTree(np.c_[x, y])
    dist, _ = tree.query(np.c_[truth["x"], truth["y"]])
    found = dist < MATCH_PX
    # Purity counts a detection as real if any object is there, including objects
    # centred just off the image whose light falls on it.
    ttree = cKDTree(np.c_[everything["x"], everything["y"]])
    dist2, _ = ttree.query(np.c_[x, y])
    real = dist2 < MATCH_PX
    rows = []
    for lo, hi in ((5, 10), (10, 20), (20, 50), (50, np.inf), (10, np.inf)):
        sel = (truth_snr >= lo) & (truth_snr < hi)
        dsel = (snr_measured >= lo) & (snr_measured < hi)
        rows.append((f"{lo:g}-{hi:g}", found[sel].mean(), real[dsel].mean(), int(sel.sum())))
    return rows


def main() -> int:
    if SEX is None or PSFEX is None:
        print("source-extractor / psfex not installed; skipping the peer run")
        return 0
    config = SimulationConfig(size=SIZE, seed=SEED, bands=("r",), star_density_arcmin2=12.0)
    t0 = time.perf_counter()
    sky = make_sky(config)
    sim = simulate_visit(sky, config, visit=0)
    seeing = sim.conditions.seeing_fwhm_arcsec
    print(f"simulated {SIZE}x{SIZE} (seed {SEED}) in {time.perf_counter() - t0:.1f} s; "
          f"{len(sim.truth)} objects, seeing {seeing:.2f} arcsec")  # fmt: skip
    truth = sim.truth[sim.truth["in_image"]]
    hlr = (
        dict(zip(sky["id"], sky["hlr_arcsec"], strict=True)) if "hlr_arcsec" in sky.colnames else {}
    )
    exp = sim.exposure
    sky_var = float(np.median(exp.variance))
    # True S/N: the optimal (matched-filter) S/N of the object's noiseless pixels on
    # the sky noise. The Gaussian approximation used before, F / sqrt(4 pi (sigma_psf²
    # + sigma_gal²) V), overstates it by 18% for the Kolmogorov PSF (effective area
    # 38 px² vs 27 px² at 3.45 px FWHM) and more for Sersic galaxies; it is printed
    # once below for comparison with earlier runs.
    truth_snr = np.sqrt(np.asarray(truth["flux2_drawn"]) / sky_var)
    sigma_psf = np.asarray(truth["psf_fwhm_px"]) / 2.3548
    size_px = np.array([hlr.get(i, 0.0) for i in truth["id"]]) / config.pixel_scale_arcsec / 1.18
    size_px = np.where(truth["is_star"], 0.0, np.nan_to_num(size_px))
    gaussian_snr = np.asarray(truth["flux"]) / np.sqrt(
        4 * np.pi * (sigma_psf**2 + size_px**2) * sky_var
    )

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        image_path, weight_path = work / "image.fits", work / "weight.fits"
        header = exp.wcs.to_header(relax=True) if exp.wcs else None
        fits.writeto(image_path, exp.image, header)
        fits.writeto(weight_path, (1.0 / exp.variance).astype(np.float32))
        write_exposure(exp.replace(psf=None), work / "exp.fits")
        child = subprocess.run(
            [sys.executable, "-c", _CHILD, str(work / "exp.fits"), str(work / "src.fits"),
             str(work / "psf.fits"), str(work / "stars.fits")],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        ours_wall, ours_cpu, base_kb, peak_kb, apcorr, v_mean, v_rms, rho1_stars = (
            float(v) for v in child.stdout.split()[-8:]
        )
        step_times = child.stdout.strip().splitlines()[-2]
        ours = Table.read(work / "src.fits")
        with fits.open(work / "psf.fits") as hdul:
            model = PsfModel.from_hdu(hdul[1])
        stars = Table.read(work / "stars.fits")
        sex, psf_file, sex_wall, sex_cpu, sex_peak_mb = run_peers(image_path, weight_path, work)
        reserved = stars[stars["reserved"]]
        rx, ry = np.asarray(reserved["x"]), np.asarray(reserved["y"])
        truth_shape = np.array([tuple(exp.psf.moments(x, y)) for x, y in zip(rx, ry, strict=True)])
        ours_shape = shapes([model.compute_image(x, y) for x, y in zip(rx, ry, strict=True)])
        psfex = read_psfex(psf_file)
        peer_shape = shapes([psfex_image(psfex, x, y) for x, y in zip(rx, ry, strict=True)])
        # The peers again, computing model fluxes as stacklab does (slow in SExtractor).
        _, _, model_wall, model_cpu, _ = run_peers(image_path, weight_path, work, model_fits=True)
        sep_objects, sep_wall, sep_cpu = run_sep(exp.image)
        piff_shape, piff_wall, piff_cpu = None, float("nan"), float("nan")
        if piff_available():
            write_sky_subtracted(work / "piff_image.fits", exp.image, header)
            train = stars[stars["used"]]
            piff_psf, piff_wall, piff_cpu = run_piff(
                work / "piff_image.fits", weight_path, np.asarray(train["x"]),
                np.asarray(train["y"]), config.pixel_scale_arcsec, work,
            )  # fmt: skip
            piff_shape = shapes([piff_image(piff_psf, x, y) for x, y in zip(rx, ry, strict=True)])

    image_mb = exp.image.nbytes / 2**20
    print(f"\n{'':34s}{'stacklab':>14s}{'SExtractor+PSFEx':>18s}")
    print(f"{'wall time (s, 1 thread)':34s}{ours_wall:14.1f}{sex_wall:18.1f}"
          f"   ratio {ours_wall / sex_wall:.2f}")  # fmt: skip
    print(f"{'CPU time (s, user + system)':34s}{ours_cpu:14.1f}{sex_cpu:18.1f}"
          f"   ratio {ours_cpu / sex_cpu:.2f}")  # fmt: skip
    print(f"  stacklab steps (s): {step_times}")
    print(f"  SExtractor+PSFEx with FLUX_MODEL, SPREAD_MODEL (the peers of flux_model, "
          f"extendedness): wall {model_wall:.1f} s, CPU {model_cpu:.1f} s; stacklab / them: "
          f"wall {ours_wall / model_wall:.2f}, CPU {ours_cpu / model_cpu:.2f}")  # fmt: skip
    print(f"  sep (background, extraction, FLUX_AUTO; this process): wall {sep_wall:.1f} s, "
          f"CPU {sep_cpu:.1f} s")  # fmt: skip
    if piff_shape is not None:
        print(f"  PIFF fit on stacklab's {int(np.sum(stars['used']))} training stars: wall "
              f"{piff_wall:.1f} s, CPU {piff_cpu:.1f} s")  # fmt: skip
    else:
        print("  PIFF is not installed (pip install -e '.[bench]'); its column is skipped")
    print(f"{'peak memory above start (x image)':34s}{(peak_kb - base_kb) / 1024 / image_mb:14.2f}"
          f"{sex_peak_mb / image_mb:18.2f}   (peer: absolute max RSS)")  # fmt: skip
    primary = ours[ours["n_children"] == 0]
    ours_snr = np.asarray(primary["flux_psf"] / primary["flux_psf_err"])
    sex_snr = np.asarray(sex["SNR_WIN"])
    sep_snr = np.asarray(sep_objects["flux_auto"] / sep_objects["flux_auto_err"])
    print("\ndetection vs truth (match < 2 px): completeness / purity [n truth]")
    print(f"  {'':20s}{'stacklab':>15s}{'SExtractor':>19s}{'sep':>17s}")
    a = detection_stats(primary["x"], primary["y"], ours_snr, truth, truth_snr, sim.truth)
    b = detection_stats(
        sex["X_IMAGE"] - 1, sex["Y_IMAGE"] - 1, sex_snr, truth, truth_snr, sim.truth
    )
    c = detection_stats(sep_objects["x"], sep_objects["y"], sep_snr, truth, truth_snr, sim.truth)
    for (label, c1, p1, n), (_, c2, p2, _), (_, c3, p3, _) in zip(a, b, c, strict=True):
        print(f"  S/N {label:9s} [{n:5d}] {c1:7.3f} / {p1:5.3f}      {c2:7.3f} / {p2:5.3f}"
              f"      {c3:7.3f} / {p3:5.3f}")  # fmt: skip
    a_old = detection_stats(primary["x"], primary["y"], ours_snr, truth, gaussian_snr, sim.truth)
    b_old = detection_stats(
        sex["X_IMAGE"] - 1, sex["Y_IMAGE"] - 1, sex_snr, truth, gaussian_snr, sim.truth
    )
    print(f"  (Gaussian-PSF S/N as before, 10-inf [{a_old[-1][3]:5d}]: completeness "
          f"{a_old[-1][1]:.3f} vs {b_old[-1][1]:.3f}; "
          f"10-20: {a_old[1][1]:.3f} vs {b_old[1][1]:.3f})")  # fmt: skip

    def star_photometry(x, y, flux, err, flags_ok):
        tree = cKDTree(np.c_[x, y])
        dist, idx = tree.query(np.c_[truth["x"], truth["y"]])
        ttree = cKDTree(np.c_[truth["x"], truth["y"]])
        neighbours = np.array(
            [len(n) for n in ttree.query_ball_point(np.c_[truth["x"], truth["y"]], 12)]
        )
        sel = truth["is_star"] & ~truth["saturated"] & (dist < 1.0) & (neighbours == 1)
        sel &= (truth_snr > 100) & (truth_snr < 2000)
        sel[sel] &= flags_ok[idx[sel]]
        f, e = flux[idx[sel]], err[idx[sel]]
        ratio = f / truth["flux"][sel]
        ratio_drawn = f / truth["flux_drawn"][sel]
        pull = (f - truth["flux_drawn"][sel] * np.median(ratio_drawn)) / e
        mad = 1.4826 * np.median(np.abs(pull - np.median(pull)))
        return int(sel.sum()), np.median(ratio) - 1, np.median(ratio_drawn) - 1, mad

    ok_ours = (np.asarray(primary["flags"]) & 0b11111111) == 0
    s1 = star_photometry(primary["x"], primary["y"], np.asarray(primary["flux_psf"]),
                         np.asarray(primary["flux_psf_err"]), ok_ours)  # fmt: skip
    s2 = star_photometry(sex["X_IMAGE"] - 1, sex["Y_IMAGE"] - 1, np.asarray(sex["FLUX_PSF"]),
                         np.asarray(sex["FLUXERR_PSF"]), np.asarray(sex["FLAGS"]) == 0)  # fmt: skip
    s3 = star_photometry(sep_objects["x"], sep_objects["y"], np.asarray(sep_objects["flux_auto"]),
                         np.asarray(sep_objects["flux_auto_err"]),
                         np.asarray(sep_objects["flag"]) == 0)  # fmt: skip
    print("\nbright isolated unsaturated stars (true S/N 100-2000): PSF flux (sep: FLUX_AUTO)")
    print(f"  {'':30s}{'stacklab':>14s}{'SExtractor':>18s}{'sep':>12s}")
    print(f"  {'n stars':30s}{s1[0]:14d}{s2[0]:18d}{s3[0]:12d}")
    print(f"  {'bias vs true total flux':30s}{s1[1]:14.4f}{s2[1]:18.4f}{s3[1]:12.4f}")
    print(f"  {'bias vs flux drawn':30s}{s1[2]:14.4f}{s2[2]:18.4f}{s3[2]:12.4f}")
    print(f"  {'scatter / photon-noise floor':30s}{s1[3]:14.3f}{s2[3]:18.3f}{s3[3]:12.3f}")
    print(f"  (stacklab aperture correction {apcorr:.4f})")

    # Blended stars: unsaturated, true S/N > 10, with a brighter true object (star or
    # galaxy, on the image or just off it) within 3 PSF FWHM and no saturated one
    # there; binned by the distance to the nearest brighter object. A detection
    # counts for such a star only if each is the other's nearest (< 2 px), so the
    # bright neighbour's own row never stands in for the faint star; the matched
    # fraction is printed alongside.
    all_xy = np.c_[sim.truth["x"], sim.truth["y"]]
    all_flux = np.asarray(sim.truth["flux"])
    all_sat = np.asarray(sim.truth["saturated"])
    t_xy = np.c_[truth["x"], truth["y"]]
    fwhm_px = np.asarray(truth["psf_fwhm_px"])
    t_flux = np.asarray(truth["flux"])
    around = cKDTree(all_xy).query_ball_point(t_xy, 3 * fwhm_px)
    neighbour_sep_fwhm = np.full(len(truth), np.inf)
    near_saturated = np.zeros(len(truth), dtype=bool)
    for i, others in enumerate(around):
        others = np.asarray(others, dtype=int)
        brighter = others[all_flux[others] > t_flux[i]]
        near_saturated[i] = bool(np.any(all_sat[others]))
        if len(brighter):
            neighbour_sep_fwhm[i] = np.min(np.hypot(*(all_xy[brighter] - t_xy[i]).T)) / fwhm_px[i]
    blended = truth["is_star"] & ~truth["saturated"] & (truth_snr > 10) & ~near_saturated
    blended &= np.isfinite(neighbour_sep_fwhm)
    t_index = np.flatnonzero(sim.truth["in_image"])  # row of each truth star in sim.truth

    def blended_photometry(x, y, flux, flags_ok, lo, hi):
        xy = np.c_[x, y]
        dist, idx = cKDTree(xy).query(t_xy)
        _, back = cKDTree(all_xy).query(xy)
        sel = blended & (neighbour_sep_fwhm >= lo) & (neighbour_sep_fwhm < hi)
        matched = sel & (dist < MATCH_PX) & (back[idx] == t_index)
        matched[matched] &= flags_ok[idx[matched]]
        ratio = flux[idx[matched]] / np.asarray(truth["flux"])[matched]
        q16, q50, q84 = np.percentile(ratio, [16, 50, 84]) if len(ratio) else (np.nan,) * 3
        return int(sel.sum()), matched.sum() / max(sel.sum(), 1), q50 - 1, (q84 - q16) / 2

    sex_ok = (np.asarray(sex["FLAGS"]) & ~3) == 0  # 1, 2: neighbours, blended
    # Every flag but BLENDED, as SExtractor's every flag but 1 and 2 (neighbours, blended).
    ours_ok = (np.asarray(primary["flags"]) & ~int(SourceFlag.BLENDED)) == 0
    print("\nblended stars (S/N > 10, a brighter true object within 3 FWHM), PSF flux vs truth")
    print(f"  {'':20s}{'stacklab':>28s}{'SExtractor':>28s}")
    print(f"  {'separation':14s}{'n':>6s}" + f"{'matched':>9s}{'bias':>9s}{'16-84%/2':>10s}" * 2)
    for lo, hi in ((0.0, 1.5), (1.5, 3.0), (0.0, 3.0)):
        n, m1, b1, w1 = blended_photometry(
            primary["x"], primary["y"], np.asarray(primary["flux_psf"]), ours_ok, lo, hi
        )
        _, m2, b2, w2 = blended_photometry(
            sex["X_IMAGE"] - 1, sex["Y_IMAGE"] - 1, np.asarray(sex["FLUX_PSF"]), sex_ok, lo, hi
        )
        print(f"  {f'{lo:g}-{hi:g} FWHM':14s}{n:6d}{m1:9.2f}{b1:+9.3f}{w1:10.3f}"
              f"{m2:9.2f}{b2:+9.3f}{w2:10.3f}")  # fmt: skip
    # Our children found by the symmetry search, each matched to the true object
    # nearest its detected peak (< 3 px: these peaks can sit 2-4 px off the source;
    # the measured centre would drop the children measured in the wrong place),
    # kept when that object is an unsaturated star.
    hidden = primary[np.asarray(primary["hidden_peak"], dtype=bool)]
    dist, idx = cKDTree(all_xy).query(np.c_[hidden["peak_x"], hidden["peak_y"]])
    star = (dist < 3.0) & np.asarray(sim.truth["is_star"])[idx] & ~all_sat[idx]
    ratio = np.asarray(hidden["flux_psf"])[star] / all_flux[idx[star]]
    q16, q50, q84 = np.percentile(ratio, [16, 50, 84]) if len(ratio) else (np.nan,) * 3
    print(f"  stacklab children from symmetry-search peaks: {len(hidden)}, {int(star.sum())} on "
          f"stars, flux_psf / truth median {q50:.3f} (16-84%: {q16:.3f}-{q84:.3f})")  # fmt: skip

    def psf_stats(shape):
        dT = (truth_shape[:, 0] - shape[:, 0]) / truth_shape[:, 0]
        de1, de2 = truth_shape[:, 1] - shape[:, 1], truth_shape[:, 2] - shape[:, 2]
        rho = rho_statistics(
            rx, ry, star_T=truth_shape[:, 0], star_e1=truth_shape[:, 1],
            star_e2=truth_shape[:, 2], model_T=shape[:, 0], model_e1=shape[:, 1],
            model_e2=shape[:, 2], pixel_scale_arcsec=config.pixel_scale_arcsec,
        )  # fmt: skip
        # rms about zero, as the goals read (a mean offset is an error too).
        return (
            dT.mean(),
            np.sqrt(np.mean(dT**2)),
            np.sqrt(np.mean(de1**2)),
            np.sqrt(np.mean(de2**2)),
            de1.mean(),
            de2.mean(),
            rho.mean("rho1", 0.2, 1.0),
        )

    p1, p2 = psf_stats(ours_shape), psf_stats(peer_shape)
    p3 = psf_stats(piff_shape) if piff_shape is not None else (float("nan"),) * len(p1)
    print(f"\nPSF model vs truth PSF at {len(rx)} reserved stars")
    print(f"  {'':30s}{'stacklab':>14s}{'PSFEx':>18s}{'PIFF':>12s}")
    names = ("mean dT/T", "rms dT/T", "rms de1", "rms de2", "mean de1", "mean de2", "rho1 0.2'-1'")
    for name, v1, v2, v3 in zip(names, p1, p2, p3, strict=True):
        print(f"  {name:30s}{v1:14.2e}{v2:18.2e}{v3:12.2e}")
    print(f"  stacklab on the reserved stars' own moments: dT/T {v_mean:.2e} +- {v_rms:.2e}, "
          f"rho1(0.2'-1') {rho1_stars:.2e}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
