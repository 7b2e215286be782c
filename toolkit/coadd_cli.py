"""``stacklab coadd``: coadd the exposures of a dataset (or FITS files), one coadd per band.

Inputs are a simulated dataset folder (its ``manifest.json``) or FITS exposure
files. Each exposure's background is subtracted (unless ``--no-background``),
the exposures of each band are coadded onto one patch covering them
(or every sky-map patch they touch, with ``--patch-size``), and per band and
patch the command writes::

    coadd-<band>[-<patch>].fits          the coadd (image, mask, variance)
    coadd-<band>[-<patch>]-ninputs.fits  inputs used per pixel
    coadd-<band>[-<patch>]-psf.fits      CoaddPsf stamps on a 3x3 grid, and their positions
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

from .background import estimate_background, subtract_background
from .coadd import Coadd, CoaddConfig, NoOverlapError, coadd
from .exposure import Exposure
from .io import atomic_path, read_exposure, write_exposure
from .skymap import Patch, SkyMapConfig, make_skymap, patch_covering, patches_overlapping

__all__ = ["add_arguments", "run"]

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``coadd`` options to ``parser``."""
    parser.add_argument(
        "inputs", nargs="+", help="a dataset folder (with manifest.json) or FITS exposure files"
    )
    parser.add_argument(
        "--out", default="coadd-output", help="output folder (default coadd-output)"
    )
    parser.add_argument(
        "--statistic",
        default="compare_warp",
        choices=["compare_warp", "safe_clip", "mean", "clipped_mean", "median"],
        help="how inputs are combined (default compare_warp)",
    )
    parser.add_argument("--band", action="append", help="only these bands (repeatable)")
    parser.add_argument(
        "--no-background", action="store_true", help="inputs are already background-subtracted"
    )
    parser.add_argument(
        "--patch-size",
        type=int,
        default=None,
        help="use the all-sky tract/patch grid with patches of this size (px); "
        "default: one patch covering the inputs of each band",
    )


def _load(inputs: list[str]) -> list[Exposure]:
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            from .simulate import read_manifest

            paths.extend(read_manifest(path).paths())
        elif path.is_file():
            paths.append(path)
        else:
            msg = f"input {item} is neither a dataset folder nor a FITS file"
            raise FileNotFoundError(msg)
    return [read_exposure(p) for p in paths]


def _psf_grid(result: Coadd) -> tuple[fits.ImageHDU, fits.BinTableHDU] | None:
    psf = result.exposure.psf
    if psf is None:
        return None
    ny, nx = result.exposure.shape
    stamps, rows = [], []
    for y in np.linspace(0.2, 0.8, 3) * (ny - 1):
        for x in np.linspace(0.2, 0.8, 3) * (nx - 1):
            try:
                stamps.append(psf.compute_image(float(x), float(y)))
            except ValueError:
                continue
            rows.append((float(x), float(y), int(result.n_inputs[round(y), round(x)])))
    if not stamps:
        return None
    table = Table(rows=rows, names=("x", "y", "n_inputs"))
    return fits.ImageHDU(np.asarray(stamps), name="PSF"), fits.BinTableHDU(table, name="POSITIONS")


def _write(result: Coadd, out: Path, stem: str) -> None:
    write_exposure(result.exposure, out / f"{stem}.fits")  # CoaddPsf saved as samples
    with atomic_path(out / f"{stem}-ninputs.fits") as tmp:
        fits.PrimaryHDU(result.n_inputs, header=result.exposure.wcs.to_header()).writeto(tmp)  # type: ignore[union-attr]
    grid = _psf_grid(result)
    if grid is not None:
        with atomic_path(out / f"{stem}-psf.fits") as tmp:
            fits.HDUList([fits.PrimaryHDU(), *grid]).writeto(tmp)


def run(args: argparse.Namespace) -> int:
    """Coadd every band of the inputs and print what was written."""
    exposures = _load(args.inputs)
    if args.band:
        exposures = [e for e in exposures if e.band in set(args.band)]
    if not exposures:
        msg = f"no exposures to coadd in {args.inputs} (bands {args.band})"
        raise ValueError(msg)
    if not args.no_background:
        exposures = [subtract_background(e, estimate_background(e)) for e in exposures]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = CoaddConfig(statistic=args.statistic)
    bands = sorted({str(e.band) for e in exposures})
    skymap = make_skymap(SkyMapConfig(patch_size_px=args.patch_size)) if args.patch_size else None
    written = 0
    for band in bands:
        group = [e for e in exposures if str(e.band) == band]
        patches: list[Patch]
        if skymap is not None:
            found = {p.name: p for e in group for p in patches_overlapping(e, skymap)}
            patches = list(found.values())
        else:
            patches = [patch_covering(group)]
        for patch in patches:
            stem = f"coadd-{band}" + (f"-{patch.name}" if args.patch_size else "")
            try:
                result = coadd(group, patch, config)
            except NoOverlapError as err:  # other errors are the user's to fix: raised
                log.warning("band %s, patch %s: %s", band, patch.name, err)
                continue
            _write(result, out, stem)
            written += 1
            print(
                f"{band}: {len(result.visits)} inputs ({args.statistic}) -> {out / stem}.fits"
                + (f"; skipped {len(result.skipped)}" if result.skipped else "")
            )
    if not written:
        print(
            "stacklab coadd: error: no coadd written (no input overlaps any patch)", file=sys.stderr
        )
        return 1
    return 0
