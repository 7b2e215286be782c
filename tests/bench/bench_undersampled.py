"""Undersampled PSF: stacklab's oversampled and pixel-scale models vs PSFEx, against truth.

Simulates one r-band visit with 0.4 arcsec pixels and 0.75-0.8 arcsec seeing (about
2 px FWHM, under the 2.5 px below which stacklab models the PSF on a finer grid),
2048x2048 by default (``STACKLAB_BENCH_SIZE``), the scene from ``STACKLAB_BENCH_SEED``
(5 unless set). On it, on one thread:

* stacklab ``process_frame`` twice: automatic oversampling, and ``oversampling=1``
  (the pixel-scale model; its expected warning is recorded and summarized);
* SExtractor -> PSFEx -> SExtractor (PSF photometry) with ``PSF_SAMPLING 0.5``
  (PSFEx's super-resolved model, its setting for undersampled data) and ``1.0``.

Every model is judged at the reserved stars of stacklab's automatic fit, and the same
way as the truth: GalSim HSM adaptive moments of a pixel-scale stamp centred on a
pixel centre, all cropped to one width. PSFEx's sampling-0.5 model is taken every
second value through its centre (:func:`psfex_stamp`); the centroid of its fine image,
printed, checks that centring. Star photometry: the median ratio of PSF flux to true total
flux, minus one, over the same bright, isolated, unsaturated stars, unflagged in every
catalog.
Run by ``make bench``; never by the tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import numpy as np  # noqa: E402
from astropy.io import fits  # noqa: E402
from astropy.table import Table  # noqa: E402
from numpy.typing import NDArray  # noqa: E402
from scipy.spatial import cKDTree  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))

from bench_single_frame import (  # noqa: E402
    _PEER_RUNNER,
    PSFEX,
    SEX,
    SHARE,
    PsfexModel,
    _sextractor_config,
    psfex_command,
    psfex_fine_image,
    read_psfex,
    shapes,
)

from stacklab.toolkit import FrameResult, ProcessFrameConfig, PsfConfig, process_frame  # noqa: E402
from stacklab.toolkit.simulate import SimulationConfig, make_sky, simulate_visit  # noqa: E402
from stacklab.toolkit.simulate.visit import SimulatedVisit  # noqa: E402

SIZE = int(os.environ.get("STACKLAB_BENCH_SIZE", "2048"))
SEED = int(os.environ.get("STACKLAB_BENCH_SEED", "5"))
PIXEL_SCALE_ARCSEC = 0.4
SEEING_RANGE_ARCSEC = (0.75, 0.8)
# PSFEx sampling step (px) -> PSF_SIZE (model values a side): both 18.5-19 px across,
# ~9 FWHM, as the single-frame bench's 35 px at 0.2 arcsec/px; and PSFEx's
# photometric aperture (diameter, px): 6.8 arcsec, as that bench's 34 px.
PSFEX_SIZES = {0.5: 37, 1.0: 19}
PHOT_APERTURE_PX = 17.0
# Photometry: true stars brighter than this (ADU; S/N > ~150 on this sky), with no
# other true object within ISOLATION_PX (3 FWHM), matched within MATCH_PX.
MIN_STAR_FLUX_ADU = 2.0e4
ISOLATION_PX = 6.0
MATCH_PX = 1.0
# stacklab flag bits that spoil a PSF flux (the single-frame bench's choice).
STACKLAB_BAD_FLAGS = 0xFF


@dataclass(frozen=True)
class StacklabRun:
    """One ``process_frame`` call: its result, CPU time (s) and the warnings it gave."""

    label: str
    result: FrameResult
    cpu_s: float
    warnings: tuple[str, ...]

    @property
    def short(self) -> str:
        """The label without "stacklab"."""
        return self.label.removeprefix("stacklab ")


@dataclass(frozen=True)
class PsfexRun:
    """PSFEx and the SExtractor PSF-photometry pass that uses it; times in seconds."""

    label: str
    model: PsfexModel
    catalog: Table
    psfex_wall_s: float
    psfex_cpu_s: float
    chain_wall_s: float
    chain_cpu_s: float


def simulate(size: int, seed: int) -> SimulatedVisit:
    """The undersampled r-band visit: 0.4 arcsec pixels, 0.75-0.8 arcsec seeing."""
    config = SimulationConfig(
        size=size,
        seed=seed,
        bands=("r",),
        star_density_arcmin2=15.0,
        pixel_scale_arcsec=PIXEL_SCALE_ARCSEC,
        seeing_fwhm_range_arcsec=SEEING_RANGE_ARCSEC,
    )
    return simulate_visit(make_sky(config), config, visit=0)


def run_stacklab(sim: SimulatedVisit, label: str, oversampling: int | None) -> StacklabRun:
    """``process_frame`` fitting its own PSF at the given ``PsfConfig.oversampling``."""
    config = ProcessFrameConfig(psf=PsfConfig(oversampling=oversampling))
    # oversampling=1 on this PSF warns by design: recorded and printed under the table.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cpu = time.process_time()
        result = process_frame(sim.exposure.replace(psf=None), config)
        cpu = time.process_time() - cpu
    return StacklabRun(label, result, cpu, tuple(str(w.message) for w in caught))


def run_timed(commands: list[list[str]], work: Path) -> tuple[float, float]:
    """Run commands in turn from a helper process; their wall and CPU time (s)."""
    runner = subprocess.run(
        [sys.executable, "-c", _PEER_RUNNER, json.dumps(commands), str(work)],
        capture_output=True,
        text=True,
        check=True,
    )
    wall, cpu, _ = (float(v) for v in runner.stdout.split()[-3:])
    return wall, cpu


def sextractor_options(image: Path, weight: Path, work: Path) -> list[str]:
    """The single-frame bench's SExtractor options, scaled to 0.4 arcsec pixels.

    SExtractor takes the last of repeated options: the aperture keeps that bench's
    6.8 arcsec, and the detection filter matches a 2 px FWHM.
    """
    return [
        *_sextractor_config(work, image, weight),
        "-PHOT_APERTURES", f"{PHOT_APERTURE_PX:g}",
        "-FILTER_NAME", str(SHARE / "gauss_2.0_5x5.conv"),
    ]  # fmt: skip


def run_sextractor_first(image: Path, weight: Path, work: Path) -> tuple[Path, float, float]:
    """SExtractor's first pass (PSFEx's input, with vignets); catalog path, wall, CPU (s)."""
    params = ["X_IMAGE", "Y_IMAGE", "XWIN_IMAGE", "YWIN_IMAGE", "FLUX_APER(1)",
              "FLUXERR_APER(1)", "FLUX_RADIUS", "ELONGATION", "FLAGS", "SNR_WIN", "FLUX_MAX",
              "VIGNET(25,25)"]  # fmt: skip
    (work / "pre.param").write_text("\n".join(params) + "\n")
    catalog = work / "pre.cat"
    command = [
        str(SEX), str(image), *sextractor_options(image, weight, work),
        "-CATALOG_TYPE", "FITS_LDAC", "-CATALOG_NAME", str(catalog),
        "-PARAMETERS_NAME", str(work / "pre.param"),
    ]  # fmt: skip
    wall, cpu = run_timed([command], work)
    return catalog, wall, cpu


def run_psfex(catalog: Path, work: Path, sampling_px: float) -> tuple[Path, float, float]:
    """PSFEx on the first-pass catalog at one sampling step; ``.psf`` path, wall, CPU (s).

    The single-frame bench's options, with ``PSF_SIZE`` from :data:`PSFEX_SIZES`.
    """
    size = PSFEX_SIZES[sampling_px]
    out = work / f"psfex_{sampling_px:g}"
    out.mkdir()
    command = psfex_command(catalog, out, size=size, sampling=sampling_px)
    wall, cpu = run_timed([command], work)
    return out / f"{catalog.stem}.psf", wall, cpu


def run_sextractor_psf(
    image: Path, weight: Path, work: Path, psf_file: Path
) -> tuple[Table, float, float]:
    """SExtractor's PSF-photometry pass with a PSFEx model; catalog, wall, CPU (s)."""
    params = ["X_IMAGE", "Y_IMAGE", "XPSF_IMAGE", "YPSF_IMAGE", "FLUX_PSF", "FLUXERR_PSF", "FLAGS"]
    (work / "final.param").write_text("\n".join(params) + "\n")
    catalog = psf_file.with_suffix(".cat")
    command = [
        str(SEX), str(image), *sextractor_options(image, weight, work),
        "-CATALOG_TYPE", "FITS_1.0", "-CATALOG_NAME", str(catalog),
        "-PARAMETERS_NAME", str(work / "final.param"),
        "-PSF_NAME", str(psf_file),
    ]  # fmt: skip
    wall, cpu = run_timed([command], work)
    return Table.read(catalog, hdu=1), wall, cpu


def run_peers(sim: SimulatedVisit) -> list[PsfexRun]:
    """SExtractor -> PSFEx -> SExtractor at each sampling of :data:`PSFEX_SIZES`.

    The first SExtractor pass is shared; each run's chain time counts it once.
    """
    exp = sim.exposure
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        image, weight = work / "image.fits", work / "weight.fits"
        fits.writeto(image, exp.image, exp.wcs.to_header(relax=True) if exp.wcs else None)
        fits.writeto(weight, (1.0 / exp.variance).astype(np.float32))
        catalog, first_wall, first_cpu = run_sextractor_first(image, weight, work)
        for sampling in PSFEX_SIZES:
            psf_file, wall, cpu = run_psfex(catalog, work, sampling)
            final, sex_wall, sex_cpu = run_sextractor_psf(image, weight, work, psf_file)
            runs.append(
                PsfexRun(
                    label=f"PSFEx sampling {sampling:g}",
                    model=read_psfex(psf_file),
                    catalog=final,
                    psfex_wall_s=wall,
                    psfex_cpu_s=cpu,
                    chain_wall_s=first_wall + wall + sex_wall,
                    chain_cpu_s=first_cpu + cpu + sex_cpu,
                )
            )
    return runs


def psfex_stamp(model: PsfexModel, x: float, y: float) -> NDArray[np.float64]:
    """PSFEx model at 0-based ``(x, y)``, pixel scale, centred on a pixel centre, unit sum.

    PSFEx's model is the pixel-convolved PSF sampled every ``PSF_SAMP`` pixels with
    its centre on index ``n // 2`` (checked on round stars: centroid there to 1e-4
    of a step, and this stamp within 0.3% of the peak of the true one); every
    ``1 / PSF_SAMP``-th value through that index is thus what pixels centred on it see.

    Raises
    ------
    ValueError
        If ``1 / PSF_SAMP`` is not an integer (no model values on pixel centres).
    """
    step = round(1.0 / model.sampling_px)
    if abs(step * model.sampling_px - 1.0) > 1e-6:
        msg = (
            f"PSF_SAMP {model.sampling_px} is not 1/k for an integer k; "
            "run PSFEx with PSF_SAMPLING 1/k to take pixel-scale stamps from its model"
        )
        raise ValueError(msg)
    fine = psfex_fine_image(model, x, y)
    n = fine.shape[0]
    centre = n // 2
    # Symmetric about the centre, also for an even PSF_SIZE.
    half = min(centre, n - 1 - centre) // step * step
    window = slice(centre - half, centre + half + 1, step)
    stamp = fine[window, window]
    return np.asarray(stamp / stamp.sum())


def centroid_offset_px(model: PsfexModel, x: float, y: float) -> tuple[float, float]:
    """HSM centroid of the PSFEx model's fine image at ``(x, y)`` minus index ``n // 2`` (px)."""
    import galsim

    fine = psfex_fine_image(model, x, y)
    res = galsim.hsm.FindAdaptiveMom(galsim.ImageD(fine, scale=1.0), strict=False)
    centre = fine.shape[0] // 2 + 1  # GalSim's first pixel is (1, 1)
    step = model.sampling_px
    return (res.moments_centroid.x - centre) * step, (res.moments_centroid.y - centre) * step


def crop(stamp: NDArray[np.float64], width: int) -> NDArray[np.float64]:
    """The central ``width x width`` pixels of an odd square stamp."""
    cut = (stamp.shape[0] - width) // 2
    if cut < 0:
        msg = f"width must be at most the stamp's {stamp.shape[0]} px, got {width}"
        raise ValueError(msg)
    return stamp[cut : stamp.shape[0] - cut, cut : stamp.shape[1] - cut]


def stamp_shapes(stamps: list[NDArray[np.float64]], width: int) -> NDArray[np.float64]:
    """HSM ``(T [px²], e1, e2)`` of each stamp cropped to ``width``; NaN where HSM failed."""
    out = shapes([crop(s, width) for s in stamps])
    # shapes() reports HSM's failure value moments_sigma = -1 as T = 2 exactly.
    out[out[:, 0] == 2.0] = np.nan
    return out


def shape_residuals(truth: NDArray[np.float64], model: NDArray[np.float64]) -> dict[str, float]:
    """Mean and rms (about zero) of dT/T = (model - truth) / truth; rms of de1, de2."""
    dT = (model[:, 0] - truth[:, 0]) / truth[:, 0]
    de1, de2 = model[:, 1] - truth[:, 1], model[:, 2] - truth[:, 2]
    return {
        "mean dT/T": float(np.nanmean(dT)),
        "rms dT/T": float(np.sqrt(np.nanmean(dT**2))),
        "rms de1": float(np.sqrt(np.nanmean(de1**2))),
        "rms de2": float(np.sqrt(np.nanmean(de2**2))),
        "n failed": int(np.sum(~np.isfinite(dT))),
    }


def photometry_stars(sim: SimulatedVisit) -> NDArray[np.bool_]:
    """Bright, unsaturated, isolated true stars on the image: a mask of ``sim.truth``."""
    truth = sim.truth
    xy = np.c_[truth["x"], truth["y"]]
    # Every true object counts as a neighbour, also those just off the image.
    neighbours = np.array([len(n) for n in cKDTree(xy).query_ball_point(xy, ISOLATION_PX)])
    return (
        np.asarray(truth["in_image"], dtype=bool)
        & np.asarray(truth["is_star"], dtype=bool)
        & ~np.asarray(truth["saturated"], dtype=bool)
        & (np.asarray(truth["flux"]) > MIN_STAR_FLUX_ADU)
        & (neighbours == 1)
    )


def matched_flux(
    true_xy: NDArray[np.float64],
    x: NDArray[np.float64],
    y: NDArray[np.float64],
    flux: NDArray[np.float64],
    usable: NDArray[np.bool_],
) -> NDArray[np.float64]:
    """Flux (ADU) of the source nearest each true position, NaN unless < MATCH_PX and usable."""
    dist, idx = cKDTree(np.c_[x, y]).query(true_xy)
    idx = np.minimum(idx, len(x) - 1)  # no neighbour: idx = len(x), and dist = inf
    return np.where((dist < MATCH_PX) & usable[idx], flux[idx], np.nan)


def aperture_fraction(sim: SimulatedVisit, diameter_px: float) -> float:
    """Fraction of the true PSF's flux in a circular aperture, at the image centre."""
    import sep

    x = y = (SIZE - 1) / 2.0
    stamp = sim.exposure.psf.compute_image(x, y, size=201)
    flux, _, _ = sep.sum_circle(stamp, [100.0], [100.0], diameter_px / 2.0, subpix=5)
    return float(flux[0])


def reserved_positions(run: StacklabRun) -> list[tuple[float, float]]:
    """Positions ``(x, y)`` (px) of the stars a stacklab fit reserved for validation."""
    stars = run.result.psf_fit.stars
    reserved = stars[stars["reserved"]]
    return list(
        zip(np.asarray(reserved["x"], float), np.asarray(reserved["y"], float), strict=True)
    )


def measure_shapes(
    sim: SimulatedVisit,
    ours: list[StacklabRun],
    peers: list[PsfexRun],
    xy: list[tuple[float, float]],
) -> tuple[int, dict[str, dict[str, float]]]:
    """The stamp width (px) and each model's shape residuals against the truth at ``xy``."""
    truth_psf = sim.exposure.psf
    stamps = {r.label: [r.result.psf.compute_image(x, y) for x, y in xy] for r in ours}
    stamps |= {p.label: [psfex_stamp(p.model, x, y) for x, y in xy] for p in peers}
    # One width for all, the narrowest stamp's: HSM's weight makes the wings beyond
    # ~4 FWHM negligible, and the same pixels for all removes the doubt.
    width = min([truth_psf.stamp_size(*xy[0])] + [s[0].shape[0] for s in stamps.values()])
    truth = stamp_shapes([truth_psf.compute_image(x, y, size=width) for x, y in xy], width)
    return width, {k: shape_residuals(truth, stamp_shapes(s, width)) for k, s in stamps.items()}


def measure_photometry(
    sim: SimulatedVisit, ours: list[StacklabRun], peers: list[PsfexRun]
) -> tuple[int, dict[str, float]]:
    """Median PSF flux / true flux - 1 of the same :func:`photometry_stars` in every catalog.

    Returns the number of stars usable in all catalogs and each catalog's bias.
    """
    stars = photometry_stars(sim)
    true_xy = np.c_[sim.truth["x"], sim.truth["y"]][stars]
    true_flux = np.asarray(sim.truth["flux"])[stars]
    fluxes = {}
    for r in ours:
        cat = r.result.catalog[r.result.catalog["n_children"] == 0]
        ok = (np.asarray(cat["flags"]) & STACKLAB_BAD_FLAGS) == 0
        x, y, flux = np.asarray(cat["x"]), np.asarray(cat["y"]), np.asarray(cat["flux_psf"])
        fluxes[r.label] = matched_flux(true_xy, x, y, flux, ok)
    for p in peers:
        cat = p.catalog
        # SExtractor's first pixel centre is (1, 1).
        x, y = np.asarray(cat["XPSF_IMAGE"]) - 1.0, np.asarray(cat["YPSF_IMAGE"]) - 1.0
        ok = np.asarray(cat["FLAGS"]) == 0
        fluxes[p.label] = matched_flux(true_xy, x, y, np.asarray(cat["FLUX_PSF"]), ok)
    common = np.all([np.isfinite(f) for f in fluxes.values()], axis=0)
    bias = {k: float(np.median(f[common] / true_flux[common]) - 1.0) for k, f in fluxes.items()}
    return int(common.sum()), bias


def print_table(rows: list[tuple[str, str, int, dict[str, float], float, float, float]]) -> None:
    """Markdown table: model, grid, stars, shape residuals, flux bias, PSF-fit and chain time."""
    columns = ("model", "grid", "stars", "mean dT/T", "rms dT/T", "rms de1", "rms de2",
               "flux bias", "PSF fit s", "chain CPU s")  # fmt: skip
    widths = (20, 7, 5, 9, 8, 7, 7, 9, 9, 11)
    cells = [f"{columns[0]:{widths[0]}s}"]
    cells += [f"{c:>{w}s}" for c, w in zip(columns[1:], widths[1:], strict=True)]
    print("| " + " | ".join(cells) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for label, grid, n_stars, res, bias, fit_s, chain_s in rows:
        print(f"| {label:20s} | {grid:>7s} | {n_stars:5d} | {res['mean dT/T']:+9.1e} | "
              f"{res['rms dT/T']:8.1e} | {res['rms de1']:7.1e} | {res['rms de2']:7.1e} | "
              f"{bias:+9.4f} | {fit_s:9.2f} | {chain_s:11.1f} |")  # fmt: skip


def main() -> int:
    start = time.perf_counter()
    sim = simulate(SIZE, SEED)
    truth_psf = sim.exposure.psf
    truth = sim.truth[sim.truth["in_image"]]
    centre = (SIZE - 1) / 2.0
    fwhm_pixelized = np.sqrt(truth_psf.moments(centre, centre).T / 2.0) * 2.3548
    print(
        f"undersampled visit: {SIZE}x{SIZE} px r band at {PIXEL_SCALE_ARCSEC} arcsec/px, seed "
        f"{SEED}; seeing {sim.conditions.seeing_fwhm_arcsec:.3f} arcsec = "
        f"{sim.conditions.seeing_fwhm_arcsec / PIXEL_SCALE_ARCSEC:.2f} px FWHM (Kolmogorov; "
        f"{fwhm_pixelized:.2f} px Gaussian-equivalent after the pixel); "
        f"{int(np.sum(truth['is_star']))} stars on the image "
        f"({int(np.sum(truth['is_star'] & ~truth['saturated']))} unsaturated) of {len(truth)} "
        f"objects; simulated in {time.perf_counter() - start:.0f} s; one thread"
    )

    ours = [run_stacklab(sim, "stacklab auto", None), run_stacklab(sim, "stacklab pixel scale", 1)]
    if SEX is None or PSFEX is None:
        print("source-extractor / psfex not installed: the PSFEx rows are skipped")
        peers: list[PsfexRun] = []
    else:
        peers = run_peers(sim)

    xy = reserved_positions(ours[0])
    width, residuals = measure_shapes(sim, ours, peers, xy)
    n_photometry, bias = measure_photometry(sim, ours, peers)
    print(
        f"\nPSF models vs the true PSF at the {len(xy)} reserved stars of stacklab's automatic "
        f"fit (HSM of {width}x{width} px stamps centred on a pixel centre, the same for all); "
        f"flux bias: median over {n_photometry} bright isolated stars (true flux > "
        f"{MIN_STAR_FLUX_ADU:.0e} ADU, matched < {MATCH_PX:g} px and unflagged in every "
        "catalog) of PSF flux / true total flux - 1\n"
    )
    rows = [
        (r.label, f"1/{r.result.psf.oversampling} px", int(np.sum(r.result.psf_fit.stars["used"])),
         residuals[r.label], bias[r.label], r.result.timings["psf"], r.cpu_s)
        for r in ours
    ] + [
        (p.label, f"{p.model.sampling_px:g} px", p.model.n_stars, residuals[p.label],
         bias[p.label], p.psfex_cpu_s, p.chain_cpu_s)
        for p in peers
    ]  # fmt: skip
    print_table(rows)

    print(
        "\n  grid: model value spacing; stars: PSF stars fitted (PSFEx: accepted; it reserves "
        "none, so the reserved stars are among its own). PSF fit s: stacklab's PSF step (wall, "
        "one thread), PSFEx's CPU; chain CPU s: process_frame, or SExtractor + PSFEx + "
        "SExtractor PSF photometry."
    )
    corrections = ", ".join(f"{r.result.aperture_correction:.4f} {r.short}" for r in ours)
    fraction = aperture_fraction(sim, PHOT_APERTURE_PX)
    print(
        f"  flux bias: stacklab's flux_psf is aperture-corrected to total flux ({corrections}); "
        f"PSFEx normalizes its model to the flux in SExtractor's {PHOT_APERTURE_PX:g} px "
        f"aperture, which holds {fraction:.4f} of the true PSF's flux."
    )
    own_truth = np.array([tuple(truth_psf.moments(x, y)) for x, y in xy])
    for r in ours:
        own = shape_residuals(
            own_truth, np.array([tuple(r.result.psf.moments(x, y)) for x, y in xy])
        )
        print(
            f"  {r.label}, PsfModel.moments vs the simulator's moments: mean dT/T "
            f"{own['mean dT/T']:+.1e}, rms dT/T {own['rms dT/T']:.1e}, rms de1/de2 "
            f"{own['rms de1']:.1e}/{own['rms de2']:.1e}"
        )
        for message in r.warnings:
            print(f"  {r.label} warned: {message}")
    for label, res in residuals.items():
        if res["n failed"]:
            print(f"  {label}: HSM failed on {res['n failed']} stamps, left out")
    fine = [p for p in peers if p.model.sampling_px < 1.0]
    if fine:
        offsets = np.array([centroid_offset_px(fine[0].model, x, y) for x, y in xy])
        print(
            f"  centring check, {fine[0].label}: fine-grid centroid - index n//2, mean over the "
            f"reserved stars: dx {offsets[:, 0].mean():+.4f} px, dy {offsets[:, 1].mean():+.4f} "
            "px (0: centred)"
        )
    for p in peers:
        ratios = "; ".join(
            f"{r.short} {r.result.timings['psf'] / p.psfex_cpu_s:.2g}, "
            f"{r.cpu_s / p.chain_cpu_s:.2g}"
            for r in ours
        )
        print(
            f"  {p.label}: PSFEx wall {p.psfex_wall_s:.1f} s, CPU {p.psfex_cpu_s:.1f} s; chain "
            f"wall {p.chain_wall_s:.1f} s. stacklab / it, PSF fit and chain CPU: {ratios}"
        )
    print(f"\nbench done in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
