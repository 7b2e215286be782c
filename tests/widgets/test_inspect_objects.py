"""Footprint inspection: stamps agree with the catalog and the heavy footprints."""

from __future__ import annotations

import numpy as np
import pytest
from inspect_data import small_frame
from matplotlib.path import Path

from stacklab.toolkit import SourceFlag, describe_flags
from stacklab.toolkit.inspect_objects import (
    InspectConfig,
    footprint_outline,
    inspect_object,
)
from stacklab.toolkit.inspect_select import select_sources, step_id


@pytest.fixture(scope="module")
def frame():
    return small_frame()


def _blend_parent(frame) -> int:
    cat = frame.catalog
    clean = (np.asarray(cat["flags"]) & int(SourceFlag.EDGE | SourceFlag.SATURATED)) == 0
    return int(cat["id"][np.flatnonzero((np.asarray(cat["n_children"]) >= 2) & clean)[0]])


def _inspect(frame, source_id, **kwargs):
    return inspect_object(frame.exposure, frame.catalog, frame.deblended, source_id, **kwargs)


def test_blend_stamps_share_the_parent_flux_like_the_heavy_footprints(frame):
    parent_id = _blend_parent(frame)
    found = _inspect(frame, parent_id)
    src = frame.deblended.sources
    children = np.asarray(src["id"][src["parent"] == parent_id])
    assert [c.source_id for c in found.children] == children.tolist()
    assert found.parent is not None and found.parent.source_id == parent_id
    assert found.messages == []
    # the deblender is flux-conserving: children's images add up to the parent's
    total = np.sum([c.image for c in found.children], axis=0)
    np.testing.assert_allclose(total, found.parent.image, rtol=1e-4, atol=1e-2)
    # each stamp holds exactly its heavy footprint's flux
    for stamp in [found.parent, *found.children]:
        row = int(np.flatnonzero(np.asarray(src["id"]) == stamp.source_id)[0])
        assert float(stamp.image.sum(dtype=np.float64)) == pytest.approx(
            float(src["flux_footprint"][row]), rel=1e-4
        )
        heavy = frame.deblended.heavy_footprints[row]
        assert float(stamp.weights.sum()) == pytest.approx(float(heavy.weights.sum()), rel=1e-5)
    # residual is image minus model; the parent's model is the children's models summed
    for stamp in found.children:
        np.testing.assert_allclose(stamp.residual, stamp.image - stamp.model, atol=1e-3)
    np.testing.assert_allclose(
        found.parent.model, np.sum([c.model for c in found.children], axis=0), rtol=1e-5
    )
    # the peaks are the children's
    np.testing.assert_array_equal(
        found.peaks,
        np.column_stack(
            [src["peak_x"][src["parent"] == parent_id], src["peak_y"][src["parent"] == parent_id]]
        ),
    )


def test_model_stamp_is_the_psf_scaled_to_the_catalog_flux(frame):
    cat = frame.catalog
    star_rows = np.flatnonzero((np.asarray(cat["flags"]) & int(SourceFlag.PSF_STAR)) != 0)
    found = _inspect(frame, int(cat["id"][star_rows[0]]), config=InspectConfig(margin_px=20))
    stamp = found.stamp
    assert stamp is not None
    flux = float(cat["flux_psf"][star_rows[0]])
    # the model holds the catalog's PSF flux (the whole PSF fits in the enlarged box)
    assert float(stamp.model.sum()) == pytest.approx(flux, rel=1e-3)
    # its centroid is the catalog's PSF position
    yy, xx = np.indices(stamp.model.shape)
    cx = float(np.sum(xx * stamp.model) / stamp.model.sum()) + found.x0
    cy = float(np.sum(yy * stamp.model) / stamp.model.sum()) + found.y0
    # (first moments of the noisy-winged pixel model sit within 0.2 px of its centre)
    assert cx == pytest.approx(float(cat["x_psf"][star_rows[0]]), abs=0.2)
    assert cy == pytest.approx(float(cat["y_psf"][star_rows[0]]), abs=0.2)
    # and a PSF star is well fitted: the residual is a small part of the flux
    assert abs(float(stamp.residual.sum())) < 0.05 * flux


def test_catalog_row_flags_neighbours_and_ellipse_match_the_catalog(frame):
    cat = frame.catalog
    row = 40
    found = _inspect(frame, int(cat["id"][row]))
    assert found.row == row
    assert found.values["x"] == pytest.approx(float(cat["x"][row]))
    assert found.flags == describe_flags(int(cat["flags"][row]))
    x, y = np.asarray(cat["x"], float), np.asarray(cat["y"], float)
    distance = np.hypot(x - x[row], y - y[row])
    expected = sorted(
        (d, int(i))
        for i, d in zip(cat["id"], distance, strict=True)
        if d <= 20.0 and i != cat["id"][row]
    )
    assert list(found.neighbours["id"]) == [i for _, i in expected]
    assert found.aperture_radii_px == (3.0, 4.5, 6.0, 9.0, 12.0, 17.0)
    if found.ellipse is not None:
        _, _, a, b, theta = found.ellipse
        assert a * a + b * b == pytest.approx(float(cat["ixx"][row] + cat["iyy"][row]), rel=1e-9)
        # the major axis direction carries the larger second moment
        t = np.radians(theta)
        ixx, iyy, ixy = (float(cat[n][row]) for n in ("ixx", "iyy", "ixy"))
        along = ixx * np.cos(t) ** 2 + 2 * ixy * np.sin(t) * np.cos(t) + iyy * np.sin(t) ** 2
        assert along == pytest.approx(a * a, rel=1e-9)


def test_outline_encloses_exactly_the_footprint_pixels(frame):
    parent_id = _blend_parent(frame)
    row = int(np.flatnonzero(np.asarray(frame.deblended.sources["id"]) == parent_id)[0])
    heavy = frame.deblended.heavy_footprints[row]
    outline = footprint_outline(heavy)
    assert outline and all(np.allclose(line[0], line[-1]) for line in outline)
    ny, nx = heavy.weights.shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    centres = np.column_stack([xx.ravel() + heavy.x0, yy.ravel() + heavy.y0])
    inside = np.zeros(len(centres), dtype=bool)
    for line in outline:  # even-odd rule: holes flip back to outside
        inside ^= Path(line).contains_points(centres)
    np.testing.assert_array_equal(inside, heavy.weights.ravel() > 0)


def test_edge_no_footprint_and_masked_sources_say_so(frame):
    cat = frame.catalog
    edge = int(cat["id"][np.flatnonzero(np.asarray(cat["flags"]) & int(SourceFlag.EDGE))[0]])
    assert any("image edge" in m for m in _inspect(frame, edge).messages)
    # a catalog row the deblended sources do not have
    few = frame.deblended.__class__(
        sources=frame.deblended.sources[:5], heavy_footprints=frame.deblended.heavy_footprints[:5]
    )
    last = int(cat["id"][-1])
    found = inspect_object(frame.exposure, cat, few, last)
    assert found.parent is None and found.children == []
    assert any(f"source {last} has no footprint" in m for m in found.messages)
    # every pixel of the footprint masked BAD
    parent_id = _blend_parent(frame)
    row = int(np.flatnonzero(np.asarray(frame.deblended.sources["id"]) == parent_id)[0])
    heavy = frame.deblended.heavy_footprints[row]
    exposure = frame.exposure.replace(mask=frame.exposure.mask.copy())
    bad = np.zeros(exposure.shape, dtype=bool)
    bad[heavy.slices] = True
    exposure.set_plane("BAD", bad)
    found = inspect_object(exposure, cat, frame.deblended, parent_id)
    assert any("are masked" in m and "BAD" in m for m in found.messages)
    assert (
        found.valid is not None
        and not found.valid[heavy.weights_on(found.x0, found.y0, found.valid.shape) > 0].any()
    )


def test_unknown_id_is_a_clear_error(frame):
    with pytest.raises(ValueError, match=r"source_id 99999 is not in the catalog .*ids 1\.\."):
        _inspect(frame, 99999)
    with pytest.raises(ValueError, match="must be an integer"):
        _inspect(frame, "abc")


def test_flag_filter_and_stepping(frame):
    cat = frame.catalog
    flags = np.asarray(cat["flags"])
    ids = np.asarray(cat["id"])
    edge = select_sources(cat, "EDGE")
    np.testing.assert_array_equal(edge, ids[(flags & int(SourceFlag.EDGE)) != 0])
    both = select_sources(cat, ["EDGE", "BAD_MOMENTS"])
    word = int(SourceFlag.EDGE | SourceFlag.BAD_MOMENTS)
    np.testing.assert_array_equal(both, ids[(flags & word) != 0])
    np.testing.assert_array_equal(select_sources(cat, SourceFlag.EDGE), edge)
    parents = select_sources(cat, parents_only=True)
    np.testing.assert_array_equal(parents, ids[np.asarray(cat["n_children"]) > 0])
    assert len(select_sources(cat)) == len(cat)
    with pytest.raises(ValueError, match="unknown flag name 'NOPE'"):
        select_sources(cat, "NOPE")
    walked = [step_id(parents, None, 1)]
    for _ in range(len(parents)):
        walked.append(step_id(parents, walked[-1], 1))
    assert walked[:-1] == parents.tolist() and walked[-1] == parents[0]
    assert step_id(parents, parents[0], -1) == parents[-1]
    with pytest.raises(ValueError, match="no source matches"):
        step_id([], None, 1)
