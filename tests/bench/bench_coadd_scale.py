"""Coadd speed and memory at patch scale, against SWarp: time and memory vs the number of inputs.

Simulates r visits of ``SIZE`` x ``SIZE`` px dithered by up to ``DITHER`` arcsec (so each
covers part of the patch) and coadds the first 4, 8 and 16 of them onto a
``PATCH`` x ``PATCH`` patch centred on the field, with stacklab (``keep_warps=False``)
and with SWarp (one thread, LANCZOS3, WEIGHTED combine, the same weight maps and output
grid). Prints, per run: wall time, CPU time, peak memory and their ratios to SWarp.

Memory: stacklab's is the peak resident memory above what the process held before the
coadd (the inputs, already in memory: ``VmHWM`` reset through ``/proc/self/clear_refs``);
SWarp's is its peak resident memory (run from a small helper process so that
``ru_maxrss`` is its own), which includes reading its inputs from FITS files.
CPU times are printed because the machine may be shared: they are less sensitive to load
than wall times.

Environment: ``BENCH_COADD_SCALE_PATCH`` (px, default 4096), ``BENCH_COADD_SCALE_SIZE``
(detector px, 2048), ``BENCH_COADD_SCALE_VISITS`` (``4,8,16``),
``BENCH_COADD_SCALE_STATISTICS`` (``mean,compare_warp``), ``BENCH_COADD_SCALE_DITHER``
(arcsec, 250).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_coadd import reset_peak_memory, status_kb, swarp, write_swarp_inputs

from stacklab.toolkit.coadd import CoaddConfig, coadd
from stacklab.toolkit.simulate import SimulationConfig, make_sky, simulate_visit
from stacklab.toolkit.skymap import Patch, patch_covering

PATCH = int(os.environ.get("BENCH_COADD_SCALE_PATCH", "4096"))
SIZE = int(os.environ.get("BENCH_COADD_SCALE_SIZE", "2048"))
VISITS = tuple(int(v) for v in os.environ.get("BENCH_COADD_SCALE_VISITS", "4,8,16").split(","))
STATISTICS = tuple(os.environ.get("BENCH_COADD_SCALE_STATISTICS", "mean,compare_warp").split(","))
DITHER = float(os.environ.get("BENCH_COADD_SCALE_DITHER", "250"))


def centred_patch(exposures: list, size: int) -> Patch:
    """A ``size`` x ``size`` patch with the tangent point and centre of the inputs' cover."""
    cover = patch_covering(exposures)
    ny, nx = cover.shape
    wcs = cover.wcs.deepcopy()
    wcs.wcs.crpix = [wcs.wcs.crpix[0] + (size - nx) / 2.0, wcs.wcs.crpix[1] + (size - ny) / 2.0]
    wcs.wcs.set()
    return Patch(0, (0, 0), (0, 0, size, size), wcs)


def simulate(n_visits: int) -> list:
    config = SimulationConfig(
        seed=17, bands=("r",), visits_per_band=n_visits, size=SIZE, dither_arcsec=DITHER,
        cosmic_rays_per_megapixel=40.0, satellite_trail_probability=0.5, n_bad_columns=2,
        sip_distortion_px=0.0, galaxy_density_arcmin2=10.0, star_density_arcmin2=10.0,
    )  # fmt: skip
    sky = make_sky(config)
    exposures = []
    for v in range(n_visits):
        sim = simulate_visit(sky, config, visit=v)
        exposures.append(sim.exposure.replace(image=sim.exposure.image - sim.sky))
        del sim
    return exposures


def run_stacklab(exposures: list, patch: Patch, statistic: str) -> tuple[object, dict]:
    reset_peak_memory()
    base = status_kb("VmRSS")
    wall0, cpu0 = time.perf_counter(), time.process_time()
    result = coadd(exposures, patch, CoaddConfig(statistic=statistic))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    peak = (status_kb("VmHWM") - base) / 1024.0
    return result, {"wall": wall, "cpu": cpu, "mb": peak}


def main() -> None:
    t0 = time.perf_counter()
    all_exposures = simulate(max(VISITS))
    patch = centred_patch(all_exposures, PATCH)
    print(
        f"r visits of {SIZE}x{SIZE} px (dither <= {DITHER:.0f} arcsec) onto a "
        f"{patch.shape[1]}x{patch.shape[0]} patch; setup {time.perf_counter() - t0:.0f} s; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    have_swarp = shutil.which("SWarp") is not None
    rows = []
    for n in VISITS:
        exposures = all_exposures[:n]
        input_mb = sum(e.image.nbytes + e.variance.nbytes + e.mask.nbytes for e in exposures)
        peer = {"wall": np.nan, "cpu": np.nan, "mb": np.nan}
        scales = None
        for statistic in STATISTICS:
            result, run = run_stacklab(exposures, patch, statistic)
            covered = float(np.mean(result.n_inputs > 0))
            mean_inputs = float(np.mean(result.n_inputs[result.n_inputs > 0]))
            scales = result.scales if scales is None else scales
            rows.append({"n": n, "name": f"stacklab {statistic}", **run})
            del result
        if have_swarp and scales is not None:
            with tempfile.TemporaryDirectory() as tmp:
                names = write_swarp_inputs(exposures, scales, patch, Path(tmp))
                wall, cpu, mb = swarp(names, Path(tmp), "WEIGHTED")
            peer = {"wall": wall, "cpu": cpu, "mb": mb}
            rows.append({"n": n, "name": "SWarp weighted", **peer})
        for r in rows:
            if r["n"] == n:
                r["wall_ratio"] = r["wall"] / peer["wall"]
                r["cpu_ratio"] = r["cpu"] / peer["cpu"]
        print(
            f"{n} inputs ({input_mb / 2**20:.0f} MB in memory): patch covered "
            f"{covered:.0%}, {mean_inputs:.1f} inputs per covered pixel",
            flush=True,
        )
    print(
        f"{'inputs':>6s} {'method':24s} {'wall s':>7s} {'cpu s':>7s} {'peak MB':>8s} "
        f"{'wall/SWarp':>10s} {'cpu/SWarp':>9s}"
    )
    for r in rows:
        print(
            f"{r['n']:6d} {r['name']:24s} {r['wall']:7.1f} {r['cpu']:7.1f} {r['mb']:8.0f} "
            f"{r['wall_ratio']:10.2f} {r['cpu_ratio']:9.2f}"
        )
    print(
        "peak MB: stacklab above the inputs already in memory; SWarp its whole process "
        "(it reads the inputs from FITS files)"
    )


if __name__ == "__main__":
    main()
