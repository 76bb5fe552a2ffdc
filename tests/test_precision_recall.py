"""Precision and recall (Kynkaanniemi et al. 2019, k = 3) on feature arrays, and `pr` in the spec, the
registrar's best_by and the promotion gates (higher is better for both)."""
from __future__ import annotations

import numpy as np
import pytest

from orchestrator.job.spec_file import SpecError, parse_spec
from orchestrator.registry.promotion import failed_gates, parse_gate
from orchestrator.registry.registrar import qualifying
from specs import spec_dict
from trainers.metrics.precision_recall import knn_radii, precision_recall, share_inside

RNG = np.random.default_rng(0)
REAL = RNG.normal(size=(600, 4))


def test_knn_radii_are_the_distance_to_the_kth_neighbour_other_than_the_point():
    x = RNG.normal(size=(50, 5))
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    np.testing.assert_allclose(knn_radii(x, 3), np.sort(d, axis=1)[:, 3], rtol=1e-9, atol=1e-9)
    line = np.arange(6.0)[:, None]  # on a line: the 3rd neighbour of 0 is 3, of 2 is 5 (1, 3 at 1; 0, 4 at 2)
    np.testing.assert_allclose(knn_radii(line, 3), [9, 4, 4, 4, 4, 9])
    assert share_inside(np.array([[0.0], [10.0]]), line, knn_radii(line, 3)) == 0.5
    with pytest.raises(ValueError, match="more than 3 points"):
        knn_radii(line[:3], 3)


def test_the_same_distribution_has_high_precision_and_recall():
    assert precision_recall(REAL, REAL) == (1.0, 1.0)
    p, r = precision_recall(REAL[:300], REAL[300:])
    assert p > 0.9 and r > 0.9


def test_a_collapsed_generator_has_recall_near_zero_and_may_keep_precision():
    collapsed = np.repeat(REAL[:1], 600, axis=0)  # one image, every time
    p, r = precision_recall(REAL, collapsed)
    assert p == 1.0 and r < 0.01
    _, r_mean = precision_recall(REAL, np.repeat(REAL.mean(0, keepdims=True), 600, axis=0))
    assert r_mean < 0.01


def test_dropped_modes_cost_recall_and_off_manifold_samples_cost_precision():
    modes = np.concatenate([REAL[:300] * 0.3 - 5, REAL[300:] * 0.3 + 5])  # two clusters
    p, r = precision_recall(modes, RNG.normal(size=(600, 4)) * 0.3 - 5)  # samples of one cluster only
    assert p > 0.85 and 0.35 < r < 0.6
    p, r = precision_recall(modes, RNG.normal(size=(600, 4)) * 0.3 + 20)
    assert p == 0.0 and r == 0.0


def test_unequal_sets_are_cut_to_the_same_size_with_a_seeded_draw():
    gen = RNG.normal(size=(100, 4))
    p, r = precision_recall(REAL, gen)  # 100 of the 600 real against the 100 generated
    assert p > 0.8 and r > 0.8 and precision_recall(REAL, gen) == (p, r)
    assert precision_recall(REAL, gen, seed=1) != (p, r)


BASE = spec_dict("r", "d", model={"arch": "cond-dcgan"})


def test_precision_and_recall_are_measures_of_best_by_when_pr_is_evaluated():
    for measure in ("precision", "recall"):
        spec = parse_spec({**BASE, "registry": {"register": "best", "best_by": measure},
                           "eval": {"metrics": ["pr"], "every_steps": 1000}})
        assert spec.registry.best_by == measure and spec.eval.metrics == ["pr"]
        with pytest.raises(SpecError, match=f"best_by={measure} is not measured: add pr \\(precision and recall\\) "
                                            r"to eval.metrics \(now \['fid'\]\)"):
            parse_spec({**BASE, "registry": {"register": "best", "best_by": measure},
                        "eval": {"metrics": ["fid"], "every_steps": 1000}})
    with pytest.raises(SpecError, match="registry.best_by"):
        parse_spec({**BASE, "registry": {"register": "best", "best_by": "pr"}, "eval": {"metrics": ["pr"]}})
    recall = parse_spec({**BASE, "registry": {"register": "best", "best_by": "recall"},
                         "eval": {"metrics": ["pr", "fid"], "every_steps": 1000}})
    entries = [{"uri": f"u/evaluated/checkpoint_{i:09d}", "step": i, "metrics": {"recall": v, "precision": 0.5}}
               for i, v in enumerate([0.2, 0.1, 0.4, float("nan"), 0.4, 0.6], 1)]
    assert [e["step"] for e in qualifying(entries, recall)] == [1, 3, 6]  # higher recall is better


def test_promotion_gates_read_precision_and_recall():
    metrics = {"precision": 0.91, "recall": 0.04, "fid": 80.0}
    assert failed_gates(metrics, [parse_gate("precision>=0.9")]) == []
    assert failed_gates(metrics, [parse_gate("recall>=0.3"), parse_gate("precision>0.95")]) == [
        "recall = 0.04 (needs recall >= 0.3)", "precision = 0.91 (needs precision > 0.95)"]
    assert failed_gates({"fid": 20.0}, [parse_gate("recall>0.5")]) == ["recall is not measured (needs recall > 0.5)"]
