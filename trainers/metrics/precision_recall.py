"""Improved precision and recall (Kynkaanniemi et al. 2019) on feature arrays.

Each set of features is a manifold estimate: the union of balls around its points, each ball's radius
the distance to the point's k-th nearest neighbour in its own set (k = 3, the paper's). Precision is
the share of generated points inside the real manifold (how realistic the samples are); recall the
share of real points inside the generated manifold (how much of the data the samples cover), so a
collapsed generator, whose points all coincide, has balls of radius 0 and a recall near 0. Both sets
are cut to the same size first (seeded), since the radii shrink as a set grows. Distances are exact
(float64, in row blocks, so memory stays at a block of the distance matrix).
"""
from __future__ import annotations

import numpy as np

NEIGHBOURS = 3
ROW_BLOCK = 1024


def _sq_distances(a: np.ndarray, b: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances of rows of a to rows of b (b_sq: b's squared norms), clipped at 0."""
    d = (a * a).sum(axis=1)[:, None] + b_sq[None, :] - 2.0 * (a @ b.T)
    return np.maximum(d, 0.0)


def knn_radii(feats: np.ndarray, k: int = NEIGHBOURS) -> np.ndarray:
    """Each point's squared distance to its k-th nearest neighbour in feats (itself excluded)."""
    feats = np.asarray(feats, dtype=np.float64)
    if len(feats) <= k:
        raise ValueError(f"precision/recall with k={k} need more than {k} points per set, got {len(feats)}")
    sq = (feats * feats).sum(axis=1)
    out = np.empty(len(feats))
    for i in range(0, len(feats), ROW_BLOCK):
        d = _sq_distances(feats[i:i + ROW_BLOCK], feats, sq)
        out[i:i + ROW_BLOCK] = np.partition(d, k, axis=1)[:, k]  # index 0 is the point itself (distance 0)
    return out


def share_inside(points: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> float:
    """The share of points within at least one ball (centre, squared radius)."""
    points, centres = np.asarray(points, dtype=np.float64), np.asarray(centres, dtype=np.float64)
    sq = (centres * centres).sum(axis=1)
    inside = 0
    for i in range(0, len(points), ROW_BLOCK):
        inside += int((_sq_distances(points[i:i + ROW_BLOCK], centres, sq) <= radii[None, :]).any(axis=1).sum())
    return inside / len(points)


def precision_recall(real: np.ndarray, gen: np.ndarray, k: int = NEIGHBOURS, seed: int = 0) -> tuple[float, float]:
    """(precision, recall) of generated features against real ones, on min(len(real), len(gen)) of each."""
    n = min(len(real), len(gen))
    rng = np.random.default_rng(seed)
    real = np.asarray(real, dtype=np.float64)[rng.permutation(len(real))[:n]]
    gen = np.asarray(gen, dtype=np.float64)[rng.permutation(len(gen))[:n]]
    precision = share_inside(gen, real, knn_radii(real, k))
    recall = share_inside(real, gen, knn_radii(gen, k))
    return precision, recall
