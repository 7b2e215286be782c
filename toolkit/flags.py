"""Flag bits of the single-frame source catalog: one bit per reason a measurement is suspect.

Every failure of a per-source measurement becomes a bit in the catalog column
``flags`` rather than an exception; :func:`describe_flags` turns a value back
into words.
"""

from __future__ import annotations

import enum

__all__ = ["SourceFlag", "describe_flags"]


class SourceFlag(enum.IntFlag):
    """Bits of the ``flags`` column of a :func:`~stacklab.toolkit.measure_sources` catalog."""

    #: The source's centre is within a stamp half-width of the image edge.
    EDGE = 1 << 0
    #: A saturated (SAT) pixel lies within 2 px of the centre.
    SATURATED_CENTER = 1 << 1
    #: Saturated pixels lie somewhere in the footprint.
    SATURATED = 1 << 2
    #: A cosmic-ray (CR) pixel lies within 2 px of the centre.
    CR_CENTER = 1 << 3
    #: An interpolated (INTRP) pixel lies within 2 px of the centre.
    INTERPOLATED_CENTER = 1 << 4
    #: A BAD or NO_DATA pixel lies within 2 px of the centre.
    BAD_CENTER = 1 << 5
    #: The source belongs to a blended footprint (a parent with children, or a child).
    BLENDED = 1 << 6
    #: The footprint has more peaks than the deblender splits; it was not deblended.
    DEBLEND_SKIPPED = 1 << 7
    #: Adaptive moments (HSM) did not converge; shapes are NaN.
    BAD_MOMENTS = 1 << 8
    #: The centroid moved more than 2 px from the peak; the peak position is used.
    BAD_CENTROID = 1 << 9
    #: The PSF-flux fit failed (no usable pixels or singular fit).
    PSF_FLUX_FAILED = 1 << 10
    #: The galaxy-model fit failed.
    MODEL_FLUX_FAILED = 1 << 11
    #: The Kron radius could not be measured; the Kron flux is NaN.
    KRON_FAILED = 1 << 12
    #: An aperture extends off the image or over masked pixels.
    APERTURE_TRUNCATED = 1 << 13
    #: The PSF model is a fallback (too few PSF stars); PSF-based numbers are rough.
    PSF_FALLBACK = 1 << 14
    #: The source was used to fit the PSF model.
    PSF_STAR = 1 << 15
    #: The source was a PSF candidate reserved for validation (not fitted).
    PSF_RESERVED = 1 << 16
    #: The source is a parent whose children carry the deblended measurements.
    PARENT = 1 << 17


def describe_flags(value: int) -> list[str]:
    """Return the names of the flag bits set in ``value``.

    Parameters
    ----------
    value : int
        A value of the catalog's ``flags`` column.

    Returns
    -------
    list of str
        Names of :class:`SourceFlag` members, lowest bit first.

    Examples
    --------
    >>> describe_flags(SourceFlag.EDGE | SourceFlag.BLENDED)
    ['EDGE', 'BLENDED']
    """
    value = int(value)
    if value < 0:
        msg = f"value must be a non-negative flag word, got {value}"
        raise ValueError(msg)
    return [str(flag.name) for flag in SourceFlag if value & flag.value]
