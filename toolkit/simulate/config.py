"""Configuration of the simulator: one frozen dataclass with every knob and its unit."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = ["BAND_WAVELENGTH_NM", "SimulationConfig"]

#: Effective wavelengths of the LSST filters, used to interpolate colours (nm).
BAND_WAVELENGTH_NM: Mapping[str, float] = MappingProxyType(
    {"u": 367.0, "g": 482.0, "r": 622.0, "i": 754.0, "z": 869.0, "y": 971.0}
)

# Per band: sky (ADU/px in a 30 s visit) and zero point (AB mag of 1 ADU), LSST-like.
_SKY_ADU = {"u": 60.0, "g": 260.0, "r": 540.0, "i": 860.0, "z": 1300.0, "y": 1700.0}
_ZERO_POINT = {"u": 30.7, "g": 31.9, "r": 31.7, "i": 31.4, "z": 31.0, "y": 30.2}


@dataclass(frozen=True, kw_only=True)
class SimulationConfig:
    """Everything that defines a simulated dataset; with the seed, it fixes every pixel.

    Attributes
    ----------
    seed : int
        Seed of every random choice (sky, visits, noise, artifacts).
    bands : tuple of str
        Filters observed, from ``ugrizy``.
    visits_per_band : int
        Number of visits (epochs) in each band.
    size : int
        Detector width and height (pixels).
    n_detectors : int
        Detectors per visit, laid out in a square grid (1, 4, 9...).
    detector_gap_px : int
        Gap between neighbouring detectors (pixels).
    pixel_scale_arcsec : float
        Pixel scale at the field centre (arcsec/px).
    ra_deg, dec_deg : float
        Field centre (degrees, ICRS).
    dither_arcsec : float
        Largest pointing offset of a visit from the field centre, per axis (arcsec).
    rotation_max_deg : float
        Largest sky rotation of a visit (degrees, uniform in ±this).
    sip_distortion_px : float
        Radial optical distortion 1000 px from the optical axis (pixels; cubic in
        radius), written as SIP terms of the TAN WCS; 0 gives a pure TAN WCS.
    star_density_arcmin2 : float
        Stars per square arcminute between ``star_mag_range``.
    star_mag_range : tuple of float
        Brightest and faintest r magnitude of stars (AB).
    star_count_slope : float
        Slope of log10 star counts per magnitude, dN/dm ∝ 10^(slope m).
    galaxy_density_arcmin2 : float
        Galaxies per square arcminute between ``galaxy_mag_range``.
    galaxy_mag_range : tuple of float
        Brightest and faintest r magnitude of galaxies (AB).
    galaxy_count_slope : float
        Slope of log10 galaxy counts per magnitude.
    sersic_fraction : float
        Fraction of galaxies drawn as one Sérsic profile rather than bulge+disk.
    seeing_fwhm_range_arcsec : tuple of float
        Range of the r-band atmospheric FWHM at the field centre (arcsec).
    psf_size_variation : float
        Largest fractional change of PSF FWHM across the focal plane.
    psf_ellipticity_max : float
        Largest PSF shear |g| anywhere in the focal plane.
    sky_adu : mapping of str to float, optional
        Sky level per band (ADU/px); LSST-like defaults.
    sky_gradient : float
        Largest fractional sky change across the focal plane.
    zero_point : mapping of str to float, optional
        Zero point per band (AB magnitude of 1 ADU); LSST-like defaults.
    zero_point_scatter_mag : float
        Visit-to-visit zero-point scatter (transparency), magnitudes.
    gain : float
        Electrons per ADU.
    read_noise_e : float
        Read noise (electrons rms).
    full_well_e : float
        Saturation: charge a pixel holds before it bleeds along its column (electrons).
    cosmic_rays_per_megapixel : float
        Mean number of cosmic-ray hits per million pixels per visit (0 for none).
    satellite_trail_probability : float
        Probability that a visit has a satellite trail.
    n_bad_columns : int
        Bad columns per detector (same columns in every visit; 0 for none).
    variable_star : bool
        Make one bright star vary sinusoidally from visit to visit.
    variable_star_amplitude_mag : float
        Semi-amplitude of the variable star's light curve (mag).
    transient : bool
        Add a point source seen only in the visits of one epoch.
    brighter_fatter : float
        Strength of brighter-fatter charge redistribution (0 for none): the
        fractional growth of a star's second-moment size T per 10⁵ electrons of
        peak charge.
    """

    seed: int = 1
    bands: tuple[str, ...] = ("g", "r", "i")
    visits_per_band: int = 6
    size: int = 2048
    n_detectors: int = 1
    detector_gap_px: int = 60
    pixel_scale_arcsec: float = 0.2
    ra_deg: float = 150.0
    dec_deg: float = 2.2
    dither_arcsec: float = 20.0
    rotation_max_deg: float = 20.0
    sip_distortion_px: float = 0.5
    star_density_arcmin2: float = 8.0
    star_mag_range: tuple[float, float] = (15.5, 25.0)
    star_count_slope: float = 0.15
    galaxy_density_arcmin2: float = 25.0
    galaxy_mag_range: tuple[float, float] = (18.0, 25.5)
    galaxy_count_slope: float = 0.35
    sersic_fraction: float = 0.25
    seeing_fwhm_range_arcsec: tuple[float, float] = (0.6, 1.1)
    psf_size_variation: float = 0.04
    psf_ellipticity_max: float = 0.05
    sky_adu: Mapping[str, float] = field(default_factory=lambda: dict(_SKY_ADU))
    sky_gradient: float = 0.05
    zero_point: Mapping[str, float] = field(default_factory=lambda: dict(_ZERO_POINT))
    zero_point_scatter_mag: float = 0.03
    gain: float = 1.5
    read_noise_e: float = 9.0
    full_well_e: float = 90_000.0
    cosmic_rays_per_megapixel: float = 0.0
    satellite_trail_probability: float = 0.0
    n_bad_columns: int = 0
    variable_star: bool = False
    variable_star_amplitude_mag: float = 0.5
    transient: bool = False
    brighter_fatter: float = 0.0

    def __post_init__(self) -> None:
        bands = tuple(self.bands.split(",")) if isinstance(self.bands, str) else tuple(self.bands)
        bands = tuple(b.strip() for b in bands)
        unknown = [b for b in bands if b not in BAND_WAVELENGTH_NM]
        if not bands or unknown:
            msg = f"bands must be a non-empty list from u,g,r,i,z,y; got {self.bands!r}"
            raise ValueError(msg)
        if len(set(bands)) != len(bands):
            msg = f"bands must not repeat, got {self.bands!r}"
            raise ValueError(msg)
        object.__setattr__(self, "bands", bands)
        _positive_int(self, "visits_per_band")
        _positive_int(self, "size", minimum=32)
        _positive_int(self, "n_detectors")
        side = round(self.n_detectors**0.5)
        if side * side != self.n_detectors:
            msg = f"n_detectors must be a square number (1, 4, 9, ...), got {self.n_detectors}"
            raise ValueError(msg)
        for name in ("pixel_scale_arcsec", "gain", "full_well_e"):
            _positive(self, name)
        for name in (
            "dither_arcsec", "rotation_max_deg", "sip_distortion_px", "star_density_arcmin2",
            "galaxy_density_arcmin2", "psf_size_variation", "psf_ellipticity_max", "sky_gradient",
            "zero_point_scatter_mag", "read_noise_e", "cosmic_rays_per_megapixel",
            "brighter_fatter", "detector_gap_px",
        ):  # fmt: skip
            _non_negative(self, name)
        for name in ("sersic_fraction", "satellite_trail_probability"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                msg = f"{name} must be a probability in [0, 1], got {value!r}"
                raise ValueError(msg)
        if self.n_bad_columns < 0:
            msg = f"n_bad_columns must be >= 0, got {self.n_bad_columns!r}"
            raise ValueError(msg)
        if self.psf_ellipticity_max >= 0.3:
            msg = (
                "psf_ellipticity_max must be < 0.3 (realistic PSFs), "
                f"got {self.psf_ellipticity_max}"
            )
            raise ValueError(msg)
        low, high = self.seeing_fwhm_range_arcsec
        if not 0 < low <= high:
            msg = (
                "seeing_fwhm_range_arcsec must be (low, high) with 0 < low <= high, "
                f"got {(low, high)}"
            )
            raise ValueError(msg)
        for name in ("star_mag_range", "galaxy_mag_range"):
            low, high = getattr(self, name)
            if not low < high:
                msg = f"{name} must be (bright, faint) with bright < faint, got {(low, high)}"
                raise ValueError(msg)
        for name in ("sky_adu", "zero_point"):
            table = dict(getattr(self, name))
            missing = [b for b in bands if b not in table]
            if missing:
                msg = f"{name} has no value for band(s) {missing}; give one per band in {bands}"
                raise ValueError(msg)
            object.__setattr__(self, name, table)

    @property
    def detector_grid(self) -> int:
        """Detectors per side of the square focal plane."""
        return round(self.n_detectors**0.5)

    @property
    def n_visits(self) -> int:
        """Total number of visits over all bands."""
        return self.visits_per_band * len(self.bands)

    def visit_band(self, visit: int) -> str:
        """Band of visit number ``visit`` (epochs cycle through the bands)."""
        return self.bands[visit % len(self.bands)]

    def to_dict(self) -> dict[str, Any]:
        """Return the configuration as JSON-compatible plain values."""
        values = asdict(self)
        values["bands"] = list(self.bands)
        values["sky_adu"] = dict(self.sky_adu)
        values["zero_point"] = dict(self.zero_point)
        for key, value in values.items():
            if isinstance(value, tuple):
                values[key] = list(value)
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SimulationConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            msg = f"unknown simulation settings {unknown}; known ones are {sorted(known)}"
            raise ValueError(msg)
        converted = {
            key: tuple(value) if isinstance(value, list) else value for key, value in values.items()
        }
        return cls(**converted)  # type: ignore[arg-type]


def _positive_int(config: SimulationConfig, name: str, minimum: int = 1) -> None:
    value = getattr(config, name)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        msg = f"{name} must be an integer >= {minimum}, got {value!r}"
        raise ValueError(msg)


def _positive(config: SimulationConfig, name: str) -> None:
    value = getattr(config, name)
    if not value > 0:
        msg = f"{name} must be > 0, got {value!r}"
        raise ValueError(msg)


def _non_negative(config: SimulationConfig, name: str) -> None:
    value = getattr(config, name)
    if not value >= 0:
        msg = f"{name} must be >= 0, got {value!r}"
        raise ValueError(msg)
