"""Colour bias of a multi-band catalog against truth: PSF-matched versus direct coadds.

Simulates ``N_VISITS`` visits in each of g, r, i (seeing 0.6-1.1 arcsec, so every
band and visit has its own PSF), subtracts the true sky, coadds each band on one
patch twice (direct ``mean`` coadds with a CoaddPsf, and coadds PSF-matched to one
common Kolmogorov target), and runs :func:`measure_multiband` (detection on the
direct coadds, forced photometry on each set). For isolated, unflagged, bright
stars, single-Sérsic galaxies and bulge+disk galaxies matched to truth it prints,
per colour (g-r, r-i) and flux (``psf``: forced PSF flux; ``aper``: 6 px aperture):

* ``median``: median of measured - true colour (mmag) with a bootstrap error,
  and the same as a fraction of the flux ratio (%, ``0.921 * mag``);
* ``weighted mean``: inverse-variance weighted mean (mmag, %) with its error
  (inflated by ``chi`` when > 1); the goal is ``|bias| < 0.5 %`` on PSF-matched
  coadds;
* ``chi``: robust scatter of (measured - true) / reported error (1 when the
  errors are right);
* ``n``: objects used.

Galaxies are drawn brighter than the default (r 18-23.5) so that enough of them
are isolated; stars are r 17-22, galaxies r 18-23.

``true`` is the total colour of the truth catalog. Bulge+disk galaxies have
colour gradients (red bulge, blue disk), so no centre-weighted flux can give
their total colour; for them the ``b+d@psf`` rows compare the matched-coadd PSF
colour with the colour of the truth profiles seen through the same weight (the
target PSF), drawn with GalSim.

Environment: ``BENCH_MULTIBAND_SIZE`` (detector px, default 1024),
``BENCH_MULTIBAND_VISITS`` (visits per band, default 8).
"""

from __future__ import annotations

import os
import time

import galsim
import numpy as np

from stacklab.toolkit.coadd import CoaddConfig
from stacklab.toolkit.flags import SourceFlag
from stacklab.toolkit.multiband import coadd_bands, measure_multiband
from stacklab.toolkit.psf_match import PsfMatchConfig
from stacklab.toolkit.simulate import SimulationConfig, make_sky, simulate_visit
from stacklab.toolkit.simulate.visit import _galaxy_profile
from stacklab.toolkit.skymap import patch_covering

SIZE = int(os.environ.get("BENCH_MULTIBAND_SIZE", "1024"))
N_VISITS = int(os.environ.get("BENCH_MULTIBAND_VISITS", "8"))
BANDS = ("g", "r", "i")
PAIRS = (("g", "r"), ("r", "i"))
HARMLESS = int(SourceFlag.BLENDED | SourceFlag.PARENT)
MAG_TO_PERCENT = 100.0 * np.log(10.0) / 2.5


def matched_rows(sky, patch, catalog, kind, mag_range):
    """Truth rows and catalog rows of isolated, unflagged objects of one kind."""
    x, y = patch.wcs.all_world2pix(sky["ra"], sky["dec"], 0)
    hlr_px = np.asarray(sky["hlr_arcsec"]) / 0.2
    primary = np.flatnonzero(catalog["is_primary"])
    cx, cy = np.asarray(catalog["x"])[primary], np.asarray(catalog["y"])[primary]
    mag_r = np.asarray(sky["mag_r"])
    truth_rows, rows = [], []
    for k in np.flatnonzero(np.asarray(sky["kind"]) == kind):
        if not mag_range[0] < mag_r[k] < mag_range[1]:
            continue
        # Isolated: no neighbour with a tenth of its flux nearby, nor any within 6 px.
        d2 = (x - x[k]) ** 2 + (y - y[k]) ** 2
        radius = 12.0 + 4.0 * max(hlr_px[k], 0.0)
        if np.sum((mag_r < mag_r[k] + 2.5) & (d2 < radius**2)) > 1 or np.sum(d2 < 36.0) > 1:
            continue
        d2 = (cx - x[k]) ** 2 + (cy - y[k]) ** 2
        if not len(d2) or d2.min() > 1.5**2:
            continue
        j = primary[int(np.argmin(d2))]
        if any(int(catalog[f"{b}_flags"][j]) & ~HARMLESS for b in BANDS):
            continue
        truth_rows.append(k)
        rows.append(j)
    return np.asarray(truth_rows, dtype=int), np.asarray(rows, dtype=int)


def matched_truth_colour(sky, rows, blue, red, fwhm_px, scale_arcsec=0.2):
    """Colour of the truth profiles through the target-PSF weight (mag)."""
    psf = galsim.Kolmogorov(fwhm=fwhm_px * scale_arcsec)
    size = 129
    p = psf.drawImage(nx=size, ny=size, scale=scale_arcsec).array
    out = []
    for k in rows:
        fractions = []
        for band in (blue, red):
            profile = _galaxy_profile(sky[k], band).withFlux(1.0)
            image = galsim.Convolve(profile, psf).drawImage(nx=size, ny=size, scale=scale_arcsec)
            fractions.append(float(np.sum(p * image.array) / np.sum(p * p)))
        total = float(sky[f"mag_{blue}"][k] - sky[f"mag_{red}"][k])
        out.append(total - 2.5 * np.log10(fractions[0] / fractions[1]))
    return np.asarray(out)


def summary(delta, error, rng):
    """n, median and its bootstrap error, weighted mean and its error, robust chi."""
    ok = np.isfinite(delta) & np.isfinite(error) & (error > 0)
    delta, error = delta[ok], error[ok]
    if len(delta) < 3:
        return (len(delta),) + (np.nan,) * 5
    boots = np.median(rng.choice(delta, (2000, len(delta))), axis=1)
    pull = delta / error
    chi = float(np.subtract(*np.percentile(pull - np.median(pull), [84, 16])) / 2)
    w = 1.0 / error**2
    mean = float(np.sum(w * delta) / np.sum(w))
    # Error of the weighted mean, inflated by the chi of the pulls when > 1.
    mean_err = float(max(chi, 1.0) / np.sqrt(np.sum(w)))
    return len(delta), float(np.median(delta)), float(np.std(boots)), mean, mean_err, chi


def row(label, coadd_name, flux, blue, red, stats):
    n, median, median_err, mean, mean_err, chi = stats
    return (
        f"{label:<12}{coadd_name:<9}{flux:<6}{blue}-{red:<4}{n:>5}"
        f"{1e3 * median:>+9.2f} ± {1e3 * median_err:<6.2f}{MAG_TO_PERCENT * median:>+7.2f}"
        f"{1e3 * mean:>+11.2f} ± {1e3 * mean_err:<6.2f}{MAG_TO_PERCENT * mean:>+7.2f}{chi:>7.2f}"
    )


def main() -> None:
    start = time.perf_counter()
    config = SimulationConfig(
        seed=21, bands=BANDS, visits_per_band=N_VISITS, size=SIZE, sip_distortion_px=0.0,
        dither_arcsec=6.0, star_density_arcmin2=30.0, galaxy_density_arcmin2=40.0,
        galaxy_mag_range=(18.0, 23.5),
    )  # fmt: skip
    sky = make_sky(config)
    sims = [simulate_visit(sky, config, visit=v) for v in range(config.n_visits)]
    by_band = {
        b: [
            s.exposure.replace(image=s.exposure.image - s.sky) for s in sims if s.exposure.band == b
        ]
        for b in BANDS
    }
    seeing = {
        b: [s.conditions.seeing_fwhm_arcsec for s in sims if s.exposure.band == b] for b in BANDS
    }
    t_sim = time.perf_counter() - start
    patch = patch_covering([e for exposures in by_band.values() for e in exposures])
    t0 = time.perf_counter()
    direct = coadd_bands(by_band, patch, CoaddConfig(statistic="mean"))
    t_direct = time.perf_counter() - t0
    t0 = time.perf_counter()
    matched = coadd_bands(by_band, patch, CoaddConfig(statistic="mean", psf_match=PsfMatchConfig()))
    t_matched = time.perf_counter() - t0
    fwhm_px = float(matched["r"].exposure.psf.fwhm_px)
    t0 = time.perf_counter()
    catalogs = {
        "matched": measure_multiband(matched, detect_on=direct).catalog,
        "direct": measure_multiband(direct).catalog,
    }
    t_measure = time.perf_counter() - t0
    print(
        f"{len(BANDS)} bands x {N_VISITS} visits of {SIZE}x{SIZE} px, patch {patch.shape}; "
        f"seeing (arcsec) " + ", ".join(f"{b} {min(v):.2f}-{max(v):.2f}" for b, v in seeing.items())
    )
    print(
        f"PSF-matching target: Kolmogorov FWHM {fwhm_px:.2f} px; {len(catalogs['matched'])} sources"
    )
    print(
        f"time: simulate {t_sim:.0f} s, direct coadds {t_direct:.0f} s, matched coadds "
        f"{t_matched:.0f} s, two multi-band catalogs {t_measure:.0f} s"
    )
    rng = np.random.default_rng(0)
    kinds = (("star", (17.0, 22.0)), ("sersic", (18.0, 23.0)), ("bulge+disk", (18.0, 23.0)))
    print(
        f"{'objects':<12}{'coadd':<9}{'flux':<6}{'colour':<6}{'n':>5}{'median mmag':>18}{'%':>7}"
        f"{'weighted mean mmag':>20}{'%':>7}{'chi':>7}"
    )
    for kind, mag_range in kinds:
        for coadd_name, catalog in catalogs.items():
            truth, rows = matched_rows(sky, patch, catalog, kind, mag_range)
            for flux in ("psf", "aper"):
                for blue, red in PAIRS:
                    measured = np.asarray(catalog[f"colour_{blue}_{red}_{flux}"])[rows]
                    error = np.asarray(catalog[f"colour_{blue}_{red}_{flux}_err"])[rows]
                    true = np.asarray(sky[f"mag_{blue}"] - sky[f"mag_{red}"])[truth]
                    stats = summary(measured - true, error, rng)
                    print(row(kind, coadd_name, flux, blue, red, stats))
            if kind == "bulge+disk" and coadd_name == "matched":
                for blue, red in PAIRS:
                    measured = np.asarray(catalog[f"colour_{blue}_{red}_psf"])[rows]
                    error = np.asarray(catalog[f"colour_{blue}_{red}_psf_err"])[rows]
                    true = matched_truth_colour(sky, truth, blue, red, fwhm_px)
                    stats = summary(measured - true, error, rng)
                    print(row("b+d@psf", coadd_name, "psf", blue, red, stats))
    print("star PSF magnitude - truth (median, mmag; colours cancel a common offset):")
    for coadd_name, catalog in catalogs.items():
        truth, rows = matched_rows(sky, patch, catalog, "star", kinds[0][1])
        offsets = [
            np.nanmedian(
                np.asarray(catalog[f"{b}_psf_mag"])[rows] - np.asarray(sky[f"mag_{b}"])[truth]
            )
            for b in BANDS
        ]
        scales = [float(catalog.meta[f"ESCALE_{b}"]) for b in BANDS]
        print(
            f"  {coadd_name:<8}"
            + "".join(f" {b} {1e3 * o:+7.1f}" for b, o in zip(BANDS, offsets, strict=True))
            + "   sky-object error scale "
            + " ".join(f"{b} {s:.2f}" for b, s in zip(BANDS, scales, strict=True))
        )
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
