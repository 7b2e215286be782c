"""Coadd methods side by side on simulated multi-epoch data with artifacts, and SWarp.

Simulates ``N_VISITS`` r-band visits (satellite trails, cosmic rays, bad columns,
a variable star and a transient), subtracts the true sky, and coadds them with
every stacklab statistic and with SWarp's MEDIAN and WEIGHTED combines on the
same inputs and the same output grid. Prints, per method:

* ``rej``: fraction of injected trail/CR pixels (per input) left out of the coadd;
* ``left``: fraction of the injected trail/CR flux that survives in the coadd;
* ``trailSB``: mean residual on trail pixels, in units of the coadd's sky noise;
* ``falseclip``: fraction of real static-source pixels (per input) rejected by the
  artifact rejection (CLIPPED, or CR when the coadd masked cosmic rays itself);
* ``var``: variable-star flux in a 15 px aperture on the coadd / the same aperture on
  the noiseless coadd of all epochs - 1 (so clipping the star in some epochs counts);
* ``varPSF``: its PSF flux (CoaddPsf) / weighted mean of its true PSF fluxes over the
  epochs used at its centre - 1. Biased even on a noiseless coadd of every epoch
  (+1.4% here): no CoaddPsf describes a source whose flux changes with the seeing;
* ``bias``: median PSF-flux bias of bright isolated stars (no source within 15 px, no
  brighter one within 30 px; CoaddPsf on the coadd)
  against the same estimator on the noiseless inputs with their true PSFs;
* ``dT/T``, ``de``: mean CoaddPsf size and ellipticity (|<de>|) residuals at those stars;
* wall time, CPU time, peak memory (from ``/proc``) and ratios to SWarp's weighted combine.

``psf_matched`` is the compare-warp coadd of warps matched to a common Kolmogorov PSF.

Environment: ``BENCH_COADD_SIZE`` (detector px, default 1024), ``BENCH_COADD_VISITS`` (8).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import galsim
import numpy as np
from astropy.io import fits

from stacklab.toolkit.coadd import CoaddConfig, coadd
from stacklab.toolkit.exposure import Exposure
from stacklab.toolkit.mask import MaskPlanes
from stacklab.toolkit.psf_match import PsfMatchConfig
from stacklab.toolkit.simulate import SimulationConfig, make_sky, simulate_visit
from stacklab.toolkit.skymap import patch_covering
from stacklab.toolkit.warp import WarpConfig, warp_exposure

SIZE = int(os.environ.get("BENCH_COADD_SIZE", "1024"))
N_VISITS = int(os.environ.get("BENCH_COADD_VISITS", "8"))
METHODS = ("mean", "clipped_mean", "median", "safe_clip", "compare_warp", "psf_matched")


def simulate() -> tuple[SimulationConfig, object, list]:
    config = SimulationConfig(
        seed=11, bands=("r",), visits_per_band=N_VISITS, size=SIZE,
        cosmic_rays_per_megapixel=40.0, satellite_trail_probability=0.6, n_bad_columns=2,
        variable_star=True, transient=True, sip_distortion_px=0.0,
        galaxy_density_arcmin2=20.0, star_density_arcmin2=30.0,
    )  # fmt: skip
    sky = make_sky(config)
    sims = [simulate_visit(sky, config, visit=v) for v in range(N_VISITS)]
    return config, sky, sims


def truth_warps(sims: list, patch: object) -> tuple[list, list, list]:
    """Per visit: warped noiseless sources, warped artifact flux, warped truth masks."""
    planes = MaskPlanes.default()
    raw = WarpConfig(bad_mask_planes=())
    sources, artifacts, masks = [], [], []
    for sim in sims:
        exp = sim.exposure
        art_bits = sim.artifact_planes.bitmask("CR", "STREAK")
        is_art = (sim.artifact_mask & art_bits) != 0
        mask = np.zeros(exp.shape, dtype=np.int32)
        mask[(sim.artifact_mask & sim.artifact_planes.bitmask("STREAK")) != 0] |= planes.bitmask(
            "STREAK"
        )
        mask[(sim.artifact_mask & sim.artifact_planes.bitmask("CR")) != 0] |= planes.bitmask("CR")
        noiseless = Exposure(
            sim.noiseless - sim.sky, variance=np.ones(exp.shape), mask=mask, wcs=exp.wcs
        )
        art = Exposure(
            np.where(is_art, exp.image - sim.noiseless, 0.0), variance=np.ones(exp.shape),
            wcs=exp.wcs,
        )  # fmt: skip
        w_src = warp_exposure(noiseless, patch.wcs, patch.shape, raw).exposure
        w_art = warp_exposure(art, patch.wcs, patch.shape, raw).exposure
        sources.append(w_src.image.astype(np.float64))
        artifacts.append(w_art.image.astype(np.float64))
        masks.append(w_src.mask)
    return sources, artifacts, masks


def psf_flux_and_moments(image, model_stamp, x, y, half=12):
    """PSF flux (model shifted to the star) and moment residuals (model unshifted)."""
    ix, iy = round(x), round(y)
    cut = image[iy - half : iy + half + 1, ix - half : ix + half + 1].astype(np.float64)
    profile = galsim.InterpolatedImage(
        galsim.ImageD(model_stamp, scale=1.0), x_interpolant=galsim.Lanczos(5)
    )
    model = profile.drawImage(
        nx=2 * half + 1, ny=2 * half + 1, scale=1.0, method="no_pixel",
        offset=(x - ix, y - iy),
    ).array  # fmt: skip
    flux = float(np.sum(model * cut) / np.sum(model * model))
    try:
        star = galsim.hsm.FindAdaptiveMom(galsim.ImageD(cut, scale=1.0))
        # Adaptive moments are taken about the centroid: the model needs no shift.
        mod = galsim.hsm.FindAdaptiveMom(galsim.ImageD(model_stamp, scale=1.0))
    except galsim.GalSimError:
        return flux, None
    t_star, t_mod = 2 * star.moments_sigma**2, 2 * mod.moments_sigma**2
    return flux, (
        (t_star - t_mod) / t_mod,
        star.observed_shape.e1 - mod.observed_shape.e1,
        star.observed_shape.e2 - mod.observed_shape.e2,
    )


def input_psf_fluxes(sims, star_ra, star_dec):
    """PSF flux of one star measured on each noiseless input with its own true PSF (ADU)."""
    out = []
    for sim in sims:
        x, y = (float(v) for v in sim.exposure.wcs.all_world2pix(star_ra, star_dec, 0))
        ny, nx = sim.exposure.shape
        if not (20 <= x < nx - 20 and 20 <= y < ny - 20):
            return None
        stamp = sim.exposure.psf.compute_image(x, y, size=25)
        flux, _ = psf_flux_and_moments(sim.noiseless - sim.sky, stamp, x, y)
        out.append(flux)
    return np.asarray(out)


def metrics(name, image, variance, used, weights, scales, clipped, truth, sky, sims, patch, psf):
    sources, artifacts, tmasks = truth
    n = len(sims)
    planes = MaskPlanes.default()
    w = np.asarray(weights)[:, None, None]
    no_data = planes.bitmask("NO_DATA")
    full = np.all([(m & no_data) == 0 for m in tmasks], axis=0) & np.isfinite(variance)
    has_all = full
    noise = float(np.sqrt(np.median(variance[has_all])))
    s = np.asarray(scales)[:, None, None]
    expected = np.sum(w * s * np.stack(sources), axis=0) / w.sum()
    art_flux = np.sum(w * s * np.stack(artifacts), axis=0) / w.sum()
    is_art = np.stack([(m & planes.bitmask("CR", "STREAK")) != 0 for m in tmasks])
    is_trail = np.stack([(m & planes.bitmask("STREAK")) != 0 for m in tmasks])
    region = has_all & is_art.any(axis=0)
    out = {"name": name}
    out["rej"] = (
        float(np.sum(~used & is_art & has_all) / np.sum(is_art & has_all))
        if used is not None
        else np.nan
    )
    resid = image - expected
    out["left"] = float(np.sum(resid[region]) / np.sum(art_flux[region]))
    trail_region = has_all & is_trail.any(axis=0) & (np.abs(expected) < noise)
    out["trailSB"] = float(np.mean(resid[trail_region]) / noise) if trail_region.any() else np.nan
    # Real static-source pixels: bright enough in the input, away from artifacts,
    # the variable star and the transient.
    var_truth = sky[sky["variable"] | sky["transient"]]
    xv, yv = patch.wcs.all_world2pix(var_truth["ra"], var_truth["dec"], 0)
    yy, xx = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    near = np.zeros(image.shape, dtype=bool)
    for a, b in zip(xv, yv, strict=True):
        near |= (xx - a) ** 2 + (yy - b) ** 2 < 15**2
    if clipped is not None:
        src = np.stack(sources) > 2.0 * noise * np.sqrt(n)
        src &= has_all & ~near & ~np.stack([_grow(m) for m in is_art])
        out["falseclip"] = float(np.sum(clipped & src) / np.sum(src))
    else:
        out["falseclip"] = np.nan
    # Variable star flux vs the weighted mean of its true fluxes.
    variable = sky[sky["variable"]][0]
    true_fluxes = input_psf_fluxes(sims, float(variable["ra"]), float(variable["dec"]))
    if true_fluxes is None:
        vid = int(variable["id"])
        true_fluxes = np.array([float(s.truth[s.truth["id"] == vid]["flux"][0]) for s in sims])
    vx, vy = patch.wcs.all_world2pix(sky["ra"][sky["variable"]], sky["dec"][sky["variable"]], 0)
    # Truth: the weighted mean over the epochs the coadd used at the star's centre.
    at = (
        used[:, round(float(vy[0])), round(float(vx[0]))]
        if used is not None
        else np.ones(n, dtype=bool)
    )
    wv = np.asarray(weights) * at
    true_var = float(np.sum(wv * np.asarray(scales) * true_fluxes) / np.sum(wv))
    out["var_epochs"] = int(at.sum())
    stamp = psf.compute_image(float(vx[0]), float(vy[0]), size=25)
    flux, _ = psf_flux_and_moments(image, stamp, float(vx[0]), float(vy[0]))
    out["varPSF"] = flux / true_var - 1.0
    ring = (xx - float(vx[0])) ** 2 + (yy - float(vy[0])) ** 2 <= 15**2
    out["var"] = float(np.sum(image[ring]) / np.sum(expected[ring]) - 1.0)
    # Bright isolated stars.
    stars = sky[(sky["kind"] == "star") & ~sky["variable"] & ~sky["transient"]]
    xs, ys = patch.wcs.all_world2pix(stars["ra"], stars["dec"], 0)
    all_x, all_y = patch.wcs.all_world2pix(sky["ra"], sky["dec"], 0)
    biases, dts, de1, de2 = [], [], [], []
    for k, (x, y) in enumerate(zip(xs, ys, strict=True)):
        mag = float(stars["mag_r"][k])
        if not 17.0 < mag < 21.0:
            continue
        ix, iy = round(float(x)), round(float(y))
        if not (20 <= ix < image.shape[1] - 20 and 20 <= iy < image.shape[0] - 20):
            continue
        if not has_all[iy - 12 : iy + 13, ix - 12 : ix + 13].all():
            continue
        # Isolated: no other source within 15 px, and no brighter one within 30 px,
        # whose wings would reach into the 25 px stamp.
        d2 = (all_x - x) ** 2 + (all_y - y) ** 2
        if np.sum(d2 < 15**2) > 1 or np.any((d2 < 30**2) & (np.asarray(sky["mag_r"]) < mag)):
            continue
        # Truth: the same PSF-flux estimator on each noiseless input with its true
        # PSF, scaled and weighted as the coadd does (so stamp truncation cancels).
        fluxes = input_psf_fluxes(sims, float(stars["ra"][k]), float(stars["dec"][k]))
        if fluxes is None:
            continue
        true_flux = float(
            np.sum(np.asarray(weights) * np.asarray(scales) * fluxes) / np.sum(weights)
        )
        stamp = psf.compute_image(float(x), float(y), size=25)
        flux, mom = psf_flux_and_moments(image, stamp, float(x), float(y))
        biases.append(flux / true_flux - 1.0)
        if mom is not None and mag < 20.0:
            dts.append(mom[0])
            de1.append(mom[1])
            de2.append(mom[2])
    out["bias"] = float(np.median(biases)) if biases else np.nan
    # Standard error of that median (1.2533 sigma / sqrt(n) for a normal scatter).
    out["bias_err"] = float(1.2533 * np.std(biases) / np.sqrt(len(biases))) if biases else np.nan
    out["n_stars"] = len(biases)
    out["dT/T"] = float(np.mean(dts)) if dts else np.nan
    out["dT/T_err"] = float(np.std(dts) / np.sqrt(len(dts))) if len(dts) > 1 else np.nan
    out["n_psf_stars"] = len(dts)
    out["de"] = float(np.hypot(np.mean(de1), np.mean(de2))) if de1 else np.nan
    return out


def _grow(mask, radius=3):
    from scipy import ndimage

    return ndimage.binary_dilation(mask, iterations=radius)


# SWarp runs from this small helper so that RUSAGE_CHILDREN's max RSS is SWarp's own
# (ru_maxrss survives exec: a child forked from this large process would report ours).
_PEER_RUNNER = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
subprocess.run(json.loads(sys.argv[1]), check=True, cwd=sys.argv[2], capture_output=True)
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(time.perf_counter() - start, usage.ru_utime + usage.ru_stime, usage.ru_maxrss)
"""


def status_kb(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


def reset_peak_memory():
    """Reset VmHWM to the current RSS (Linux); peaks are then read relative to now.

    Freed heap memory is first given back to the system (glibc ``malloc_trim``):
    otherwise a run after a larger one reuses pages still counted in the RSS and
    its peak above the baseline reads too low.
    """
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def write_swarp_inputs(exposures, scales, patch, workdir):
    """FITS images and weight maps (1/variance, 0 where bad) and the output header."""
    workdir = Path(workdir)
    names = []
    for k, (exp, scale) in enumerate(zip(exposures, scales, strict=True)):
        header = exp.wcs.to_header()
        header["FLXSCALE"] = float(scale)
        bad = (exp.mask & exp.mask_planes.bitmask("BAD", "SAT", "NO_DATA")) != 0
        weight = np.where(bad, 0.0, 1.0 / exp.variance).astype(np.float32)
        fits.PrimaryHDU(exp.image, header=header).writeto(workdir / f"in{k}.fits", overwrite=True)
        fits.PrimaryHDU(weight, header=header).writeto(
            workdir / f"in{k}.weight.fits", overwrite=True
        )
        names.append(f"in{k}.fits")
    head = patch.wcs.to_header()
    head["NAXIS"] = 2
    head["NAXIS1"], head["NAXIS2"] = patch.shape[1], patch.shape[0]
    (workdir / "coadd.head").write_text("\n".join(str(card) for card in head.cards) + "\nEND\n")
    return names


def swarp(names, workdir, combine):
    """SWarp on one thread, LANCZOS3; return wall seconds, CPU seconds, peak memory (MB)."""
    args = [
        "SWarp", *names, "-c", "/dev/null", "-IMAGEOUT_NAME", "coadd.fits",
        "-WEIGHTOUT_NAME", "coadd.weight.fits", "-COMBINE_TYPE", combine,
        "-RESAMPLING_TYPE", "LANCZOS3", "-SUBTRACT_BACK", "N", "-WEIGHT_TYPE", "MAP_WEIGHT",
        "-NTHREADS", "1", "-VERBOSE_TYPE", "QUIET", "-WRITE_XML", "N", "-FSCALASTRO_TYPE", "NONE",
        "-RESAMPLE_DIR", str(workdir), "-COPY_KEYWORDS", "",
    ]  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-c", _PEER_RUNNER, json.dumps(args), str(workdir)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    wall, cpu, maxrss_kb = out.stdout.split()
    return float(wall), float(cpu), float(maxrss_kb) / 1024.0


def run_swarp(exposures, scales, patch, combine, workdir):
    """Coadd with SWarp (one thread); return image, wall s, CPU s, peak MB."""
    names = write_swarp_inputs(exposures, scales, patch, workdir)
    wall, cpu, mb = swarp(names, workdir, combine)
    image = fits.getdata(Path(workdir) / "coadd.fits").astype(np.float64)
    return image, wall, cpu, mb


def main() -> None:
    t0 = time.perf_counter()
    _, sky, sims = simulate()
    exposures = [s.exposure.replace(image=s.exposure.image - s.sky) for s in sims]
    patch = patch_covering(exposures)
    truth = truth_warps(sims, patch)
    print(
        f"{N_VISITS} r visits of {SIZE}x{SIZE} px onto a {patch.shape[1]}x{patch.shape[0]} patch; "
        f"trails in {sum(bool((s.artifact_mask & 2).any()) for s in sims)} visits; "
        f"setup {time.perf_counter() - t0:.0f} s"
    )
    rows = []
    reference = None
    for method in METHODS:
        config = (
            CoaddConfig(statistic="compare_warp", keep_warps=True, psf_match=PsfMatchConfig())
            if method == "psf_matched"
            else CoaddConfig(statistic=method, keep_warps=True)
        )
        reset_peak_memory()
        base_kb = status_kb("VmRSS")
        start, cpu_start = time.perf_counter(), time.process_time()
        result = coadd(exposures, patch, config)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        peak = (status_kb("VmHWM") - base_kb) / 1024.0
        bits = np.left_shift(np.int64(1), np.arange(len(result.visits)))[:, None, None]
        used = (result.contributors[None] & bits) != 0
        # Rejected by the artifact rejection: CLIPPED, and CR where the coadd found
        # cosmic rays on inputs that had none masked (those pixels are rejected too).
        clipped = np.stack(
            [(w.mask & w.mask_planes.bitmask("CLIPPED", "CR")) != 0 for w in result.warps]
        )
        clipped_arg = None if method in ("mean", "median") else clipped
        row = metrics(
            method, result.exposure.image.astype(np.float64), result.exposure.variance,
            used if method != "median" else None, result.weights, result.scales, clipped_arg,
            truth, sky, sims, patch, result.exposure.psf,
        )  # fmt: skip
        row["seconds"], row["cpu"], row["peak_mb"] = seconds, cpu, peak
        rows.append(row)
        if method == "mean":
            reference = result
    if shutil.which("SWarp"):
        for combine in ("MEDIAN", "WEIGHTED"):
            with tempfile.TemporaryDirectory() as tmp:
                image, seconds, cpu, peak = run_swarp(
                    exposures, reference.scales, patch, combine, tmp
                )
            row = metrics(
                f"SWarp {combine.lower()}", image, reference.exposure.variance, None,
                reference.weights, reference.scales, None, truth, sky, sims, patch,
                reference.exposure.psf,
            )  # fmt: skip
            row["seconds"], row["cpu"], row["peak_mb"] = seconds, cpu, peak
            rows.append(row)
    swarp = next((r for r in rows if r["name"] == "SWarp weighted"), None)
    header = (
        f"{'method':16s} {'rej':>7s} {'left':>8s} {'trailSB':>8s} {'falseclip':>9s} "
        f"{'var':>8s} {'varPSF':>8s} {'ep':>3s} {'bias':>8s} {'dT/T':>8s} {'de':>8s} "
        f"{'s':>6s} {'cpu s':>6s} {'MB':>6s} "
        f"{'t/SWarp':>8s} {'cpu/SWarp':>9s}"
    )
    print(header)
    for r in rows:
        ratio = r["seconds"] / swarp["seconds"] if swarp else np.nan
        cpu_ratio = r["cpu"] / swarp["cpu"] if swarp else np.nan
        print(
            f"{r['name']:16s} {r['rej']:7.4f} {r['left']:+8.4f} {r['trailSB']:+8.3f} "
            f"{r['falseclip']:9.5f} {r['var']:+8.4f} {r['varPSF']:+8.4f} {r['var_epochs']:3d} "
            f"{r['bias']:+8.4f} {r['dT/T']:+8.4f} "
            f"{r['de']:+8.4f} {r['seconds']:6.1f} {r['cpu']:6.1f} {r['peak_mb']:6.0f} "
            f"{ratio:8.2f} {cpu_ratio:9.2f}"
        )
    print(f"stars used for bias/PSF residuals: {rows[0]['n_stars']}")
    print(
        f"CoaddPsf dT/T +- its standard error over the {rows[0]['n_psf_stars']} stars brighter "
        "than r = 20: "
        + ", ".join(
            f"{r['name']} {r['dT/T']:+.4f} +- {r['dT/T_err']:.4f}" for r in rows if "dT/T_err" in r
        )
    )
    print(f"ep: epochs (of {N_VISITS}) the coadd used at the variable star's centre.")
    print(
        "SWarp rows use the stacklab mean coadd's variance and CoaddPsf for their flux "
        "measurements; rej/falseclip are undefined for median combines."
    )
    print(
        "MB: stacklab's peak resident memory above the inputs already in memory, with "
        "keep_warps=True (the scaled warps are kept: one patch per input); SWarp's whole "
        "process. Time and memory against the number of inputs: bench_coadd_scale.py. "
        f"Load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores."
    )


if __name__ == "__main__":
    main()
