"""Simulator speed: seconds per 2048x2048 visit, against GalSim rendering alone.

The peer is the least any GalSim-based simulator pays for the same scene: the
same objects drawn with the same profiles into one image, without WCS
handling, noise, artifacts or truth tables. The ratio is our overhead.
"""

from __future__ import annotations

import resource
import time

import galsim
import numpy as np

from stacklab.toolkit.simulate import SimulationConfig, make_sky, simulate_visit
from stacklab.toolkit.simulate.visit import _galaxy_profile


def galsim_only(sim, sky, config) -> float:
    """Draw the visit's objects with GalSim alone; return seconds."""
    rows = {int(i): k for k, i in enumerate(sky["id"])}
    start = time.perf_counter()
    image = galsim.ImageF(config.size, config.size, scale=1.0)
    for obj in sim.truth:
        psf = galsim.Kolmogorov(fwhm=float(obj["psf_fwhm_px"])).shear(
            g1=float(obj["psf_g1"]), g2=float(obj["psf_g2"])
        )
        if obj["is_star"]:
            profile = psf.withFlux(float(obj["flux"]))
        else:
            galaxy = _galaxy_profile(sky[rows[int(obj["id"])]], sim.conditions.band).dilate(
                1.0 / config.pixel_scale_arcsec
            )
            profile = galsim.Convolve(galaxy, psf).withFlux(float(obj["flux"]))
        stamp = profile.drawImage(center=galsim.PositionD(obj["x"] + 1, obj["y"] + 1), scale=1.0)
        bounds = stamp.bounds & image.bounds
        if bounds.isDefined():
            image[bounds] += stamp[bounds]
    return time.perf_counter() - start


def main() -> None:
    config = SimulationConfig(size=2048, seed=1, cosmic_rays_per_megapixel=20.0, n_bad_columns=2)
    sky = make_sky(config)
    simulate_visit(sky, config, visit=0)  # warm GalSim's caches
    ours, peer, n_objects = [], [], []
    for visit in (1, 2, 3):
        start = time.perf_counter()
        sim = simulate_visit(sky, config, visit=visit)
        ours.append(time.perf_counter() - start)
        n_objects.append(len(sim.truth))
        peer.append(galsim_only(sim, sky, config))
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("| visit | objects | stacklab simulate_visit (s) | GalSim drawing only (s) | ratio |")
    print("|---|---|---|---|---|")
    for visit, n, a, b in zip((1, 2, 3), n_objects, ours, peer, strict=True):
        print(f"| {visit} | {n} | {a:.2f} | {b:.2f} | {a / b:.2f} |")
    print(
        f"\nmedian: {np.median(ours):.2f} s per 2048x2048 visit "
        f"({np.median(n_objects) / np.median(ours):.0f} objects/s), "
        f"{np.median(ours) / np.median(peer):.2f}x GalSim drawing alone; "
        f"peak RSS {peak_mib:.0f} MiB"
    )


if __name__ == "__main__":
    main()
