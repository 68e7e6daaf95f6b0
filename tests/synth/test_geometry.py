"""Shapes of the specimen generator as material length along the beam (synth._geometry)."""

import numpy as np
import pytest

from stemquant.synth._geometry import chord_length, polygon_rod_planes, polyhedron_planes

R = 5.0
STEP = 0.05  # [Å] sampling of the test grid
_AX = np.arange(-6.0, 6.0 + STEP / 2, STEP)
X, Y = _AX[None, :], _AX[:, None]
RADIUS = np.hypot(X, Y)


def test_half_space_chord_is_exact():
    # plane with normal (sin t, 0, cos t): material z <= -(d + x sin t) / cos t, clipped to the slab [0, T]
    t, d, thick = np.radians(30.0), -1.0, 4.0
    plane = np.array([[np.sin(t), 0.0, np.cos(t), d]])
    expected = np.clip(-(d + X * np.sin(t)) / np.cos(t), 0.0, thick)
    np.testing.assert_allclose(chord_length(plane, X, Y, 0.0, thick), np.broadcast_to(expected, (Y.size, X.size)),
                               atol=1e-12)


@pytest.mark.parametrize("n_vertices", [3, 4, 5, 8, 15])
def test_polygon_rod_is_inscribed_in_its_circle(n_vertices):
    # a rod along the beam with vertices on a circle of radius R: its cross-section lies inside the circle and
    # reaches it (at the vertices). Regression: for a vertex gap > 180° (p = 3/4 for a triangle) the far edge
    # used to be clamped through the centre, which pushed the polygon out of the circle.
    rng = np.random.default_rng(n_vertices)
    for _ in range(20):
        planes = polygon_rod_planes(np.zeros(3), np.array([0.0, 0.0, 1.0]), R, n_vertices, rng)
        inside = chord_length(planes, X, Y, 0.0, 2.0)
        assert set(np.unique(inside)) <= {0.0, 2.0}  # a rod parallel to the beam: all or nothing
        assert np.all(inside[RADIUS > R + 1e-9] == 0.0)
        # the vertex nearest a grid point is within STEP / sqrt(2) of it along each polygon edge
        assert RADIUS[inside > 0].max() > R - STEP * np.sqrt(2)


def test_polyhedron_is_inscribed_in_its_sphere():
    # convex hull of points on a sphere of radius R: every chord along z is at most the sphere's chord
    # 2 sqrt(R² - r²); with 300 vertices the hull is close to the sphere near its centre
    rng = np.random.default_rng(3)
    sphere = 2 * np.sqrt(np.clip(R**2 - RADIUS**2, 0.0, None))
    for n in (4, 20, 300):
        planes = polyhedron_planes(np.zeros(3), R, n, rng)
        chord = chord_length(planes, X, Y, -10.0, 10.0)
        assert np.all(chord <= sphere + 1e-9)
    # a facet lies at R cos(a) from the centre, a its angular circumradius, at most the covering radius of the
    # vertices: ~sqrt(4 ln n / n) = 0.28 rad for n = 300 uniform points (0.32 rad for this draw). Any central
    # chord therefore exceeds 2 R cos(0.35) = 1.88 R.
    assert chord[RADIUS < STEP].min() > 2 * R * np.cos(0.35)
