"""MaxiSumMin sampling of admissible sets (issue 22, item 2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from psfmap.deepblur import (
    dirichlet_points,
    hull_distance,
    nearest_neighbour_sum,
    project_simplex,
    sample_box,
    sample_convex,
)


def _vertices(kind: str, p: int) -> np.ndarray:
    if kind == "simplex":
        return np.vstack([np.zeros(p), np.eye(p)])
    return np.random.default_rng(p).normal(size=(2 * p, p))


@pytest.mark.parametrize("p", [3, 7])
@pytest.mark.parametrize("kind", ["simplex", "random"])
def test_spread_beats_dirichlet_and_stays_inside(p, kind):
    vertices = _vertices(kind, p)
    points = sample_convex(vertices, 200, seed=0)
    assert points.shape == (200, p)
    assert hull_distance(points, vertices).max() < 1e-6
    baseline = np.mean([nearest_neighbour_sum(dirichlet_points(vertices, 200, seed=s))
                        for s in range(3)])
    # issue 22 target: >= 1.6x (measured 1.9-3.3x, benchmarks/eval_deepblur_sampling.py)
    assert nearest_neighbour_sum(points) >= 1.6 * baseline


def test_seed_replays_and_differs():
    vertices = _vertices("simplex", 3)
    first = sample_convex(vertices, 50, seed=3, iterations=10)
    np.testing.assert_array_equal(first, sample_convex(vertices, 50, seed=3, iterations=10))
    assert not np.allclose(first, sample_convex(vertices, 50, seed=4, iterations=10))


def test_degenerate_hulls():
    single = sample_convex(np.ones((1, 4)), 5, seed=0)
    np.testing.assert_array_equal(single, np.ones((5, 4)))
    same = sample_convex(np.ones((3, 2)), 4, seed=0)
    np.testing.assert_allclose(same, np.ones((4, 2)))


@pytest.mark.parametrize("vertices, n, message", [
    (np.ones(3), 10, "vertices must have shape"),
    (np.array([[0.0, np.nan]]), 10, "NaN"),
    (np.eye(3), 1, "n must be"),
    ("abc", 10, "vertices must be an array"),
])
def test_bad_input(vertices, n, message):
    with pytest.raises((ValueError, TypeError), match=message):
        sample_convex(vertices, n)


def test_box_variant_inside_and_spread():
    low, high = np.array([-1.0, 0.0, 2.0]), np.array([1.0, 0.5, 2.0])  # one side degenerate
    points = sample_box(low, high, 200, seed=0)
    assert points.shape == (200, 3)
    assert np.all(points >= low) and np.all(points <= high)
    np.testing.assert_array_equal(points[:, 2], 2.0)
    # spread in the unit cube (every parameter counts alike), against uniform points
    unit = (points[:, :2] - low[:2]) / (high[:2] - low[:2])
    uniform = np.random.default_rng(0).random((200, 2))
    assert nearest_neighbour_sum(unit) >= 1.6 * nearest_neighbour_sum(uniform)
    with pytest.raises(ValueError, match="high must be >= low"):
        sample_box(high, low, 10)


def test_nearest_neighbour_sum_known_value():
    points = np.array([[0.0, 0.0], [3.0, 4.0], [3.0, 5.0]])
    assert nearest_neighbour_sum(points) == pytest.approx(5.0 + 1.0 + 1.0)


def test_hull_distance_outside():
    square = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    distances = hull_distance(np.array([[0.5, 0.5], [2.0, 0.5]]), square)
    assert distances[0] < 1e-9
    assert distances[1] == pytest.approx(1.0, abs=1e-6)


@settings(max_examples=10, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=2, max_size=8))
def test_project_simplex_properties(values):
    projected = project_simplex(torch.tensor([values], dtype=torch.float64))
    assert float(projected.sum()) == pytest.approx(1.0, abs=1e-9)
    assert bool((projected >= 0).all())
    again = project_simplex(projected)
    torch.testing.assert_close(again, projected)
