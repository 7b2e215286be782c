"""Named mask planes: which bit of the integer mask means what.

A mask pixel is an ``int32`` whose bits are *planes*. The mapping from plane
name to bit number travels with every :class:`~stacklab.toolkit.Exposure` and is
written to the FITS header as ``MP_<NAME> = <bit>`` cards (the convention of
LSST's afw), so a file says what its bits mean.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
from astropy.io import fits
from numpy.typing import NDArray

__all__ = ["DEFAULT_MASK_PLANES", "MaskPlanes"]

#: Planes every exposure starts with, and their meaning.
DEFAULT_MASK_PLANES: Mapping[str, str] = MappingProxyType(
    {
        "BAD": "bad pixel (detector defect, bad column)",
        "SAT": "saturated, or charge bled from a saturated pixel",
        "INTRP": "value interpolated over",
        "CR": "cosmic ray",
        "EDGE": "too close to the image edge to be processed",
        "DETECTED": "part of a detected (positive) footprint",
        "DETECTED_NEGATIVE": "part of a negative footprint",
        "SUSPECT": "value in the non-linear regime, usable with care",
        "NO_DATA": "no data: NaN in the input, or outside the inputs of a warp",
        "CLIPPED": "an input rejected here by clipping when coadding",
        "STREAK": "satellite or meteor trail",
        "SENSOR_EDGE": "outside the sensor of an input to a warp",
    }
)

_MAX_BITS = 31  # the mask is int32 and the sign bit is left alone
_HEADER_PREFIX = "MP_"


@dataclass(frozen=True)
class MaskPlanes(Mapping[str, int]):
    """An immutable mapping from mask-plane name to bit number.

    Parameters
    ----------
    bits : mapping of str to int
        Plane name (upper case, at most 64 characters) to bit number (0-30).

    Examples
    --------
    >>> planes = MaskPlanes.default()
    >>> planes.bitmask("BAD", "SAT")
    3
    >>> planes.with_plane("GHOST")["GHOST"]
    12
    """

    bits: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        cleaned: dict[str, int] = {}
        for name, bit in dict(self.bits).items():
            if not isinstance(name, str) or not name or not name.replace("_", "").isalnum():
                msg = (
                    f"mask plane name must be a non-empty word of letters, digits and '_', "
                    f"got {name!r}"
                )
                raise ValueError(msg)
            if not isinstance(bit, int | np.integer) or not 0 <= int(bit) < _MAX_BITS:
                msg = f"mask plane {name!r} has bit {bit!r}; bits must be integers in 0..30"
                raise ValueError(msg)
            cleaned[name.upper()] = int(bit)
        if len(set(cleaned.values())) != len(cleaned):
            msg = f"two mask planes share a bit in {cleaned}; give every plane its own bit"
            raise ValueError(msg)
        object.__setattr__(self, "bits", MappingProxyType(cleaned))

    @classmethod
    def default(cls) -> MaskPlanes:
        """Return the standard planes (:data:`DEFAULT_MASK_PLANES`) on bits 0, 1, 2, ..."""
        return cls({name: bit for bit, name in enumerate(DEFAULT_MASK_PLANES)})

    def __getitem__(self, name: str) -> int:
        try:
            return self.bits[name.upper()]
        except KeyError:
            msg = (
                f"unknown mask plane {name!r}; known planes are {', '.join(self.bits)}. "
                f"Add it first with mask_planes.with_plane({name!r})"
            )
            raise KeyError(msg) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.bits)

    def __len__(self) -> int:
        return len(self.bits)

    def bitmask(self, *names: str) -> int:
        """Return the integer with the bits of all ``names`` set.

        Raises
        ------
        KeyError
            If a name is not a known plane; the message lists the known ones.
        """
        value = 0
        for name in names:
            value |= 1 << self[name]
        return value

    def with_plane(self, name: str) -> MaskPlanes:
        """Return planes with ``name`` added on the lowest free bit (unchanged if present)."""
        if name.upper() in self.bits:
            return self
        free = sorted(set(range(_MAX_BITS)) - set(self.bits.values()))
        if not free:
            msg = f"cannot add mask plane {name!r}: all {_MAX_BITS} bits are in use"
            raise ValueError(msg)
        return MaskPlanes({**self.bits, name: free[0]})

    def names_of(self, value: int) -> list[str]:
        """Return the names of the planes set in one mask value, in bit order."""
        return [
            name
            for name, bit in sorted(self.bits.items(), key=lambda kv: kv[1])
            if value >> bit & 1
        ]

    def to_header(self, header: fits.Header) -> None:
        """Write the planes as ``MP_<NAME>`` cards into ``header`` (in place)."""
        for name, bit in self.bits.items():
            key = f"HIERARCH {_HEADER_PREFIX}{name}"
            comment = DEFAULT_MASK_PLANES.get(name, "")
            room = 80 - len(key) - len(" = ") - 20 - len(" / ")  # value field is 20 wide
            header[key] = (bit, comment[: max(room, 0)])

    @classmethod
    def from_header(cls, header: fits.Header) -> MaskPlanes | None:
        """Read ``MP_<NAME>`` cards; return None when the header has none."""
        found = {
            str(key)[len(_HEADER_PREFIX) :]: int(value)
            for key, value in header.items()
            if str(key).startswith(_HEADER_PREFIX)
        }
        return cls(found) if found else None

    def remap(self, mask: NDArray[np.integer], target: MaskPlanes) -> NDArray[np.int32]:
        """Translate ``mask`` from these planes' bits to ``target``'s bits.

        Planes missing from ``target`` are added to it by the caller beforehand;
        a plane here that ``target`` lacks raises ``KeyError``.
        """
        out = np.zeros(mask.shape, dtype=np.int32)
        for name, bit in self.bits.items():
            out |= ((mask >> bit) & 1).astype(np.int32) << target[name]
        return out

    def union(self, others: Iterable[str]) -> MaskPlanes:
        """Return planes with every name of ``others`` present."""
        planes = self
        for name in others:
            planes = planes.with_plane(name)
        return planes


# Rows per block of :func:`_bits_set`: a block's int32 temporary stays small.
_BITS_BLOCK_ROWS = 256


def _bits_set(
    mask: NDArray[np.integer], bits: int, *, into: NDArray[np.bool_] | None = None
) -> NDArray[np.bool_]:
    """Return ``(mask & bits) != 0``, OR'ed into ``into`` when given (and returned).

    Block by block of rows: ``mask & bits`` would make an int32 copy of the mask.
    """
    out = np.zeros(mask.shape, dtype=bool) if into is None else into
    if bits == 0 or mask.ndim == 0:
        if mask.ndim == 0:
            out |= (mask & bits) != 0
        return out
    bits_typed = mask.dtype.type(bits)
    for y0 in range(0, mask.shape[0], _BITS_BLOCK_ROWS):
        block = slice(y0, y0 + _BITS_BLOCK_ROWS)
        out[block] |= (mask[block] & bits_typed) != 0
    return out
