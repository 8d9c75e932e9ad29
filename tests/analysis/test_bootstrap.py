"""Task-bootstrap intervals: coverage on a known distribution, and replicates equal explicit resampling."""
import numpy as np
import pytest

from orchestra_jax.analysis.bootstrap import (bootstrap_counts, diff_ci, mean_ci, mean_replicates, quantile_ci,
                                              task_groups, weighted_quantile)

N_DATASETS, N_TASKS, G, N_BOOT = 400, 100, 2, 1000
# 95% CI hit rate over 400 datasets: binomial sd = sqrt(.95 * .05 / 400) = 0.011; allow 3 sd
LO, HI = 0.95 - 0.033, 0.95 + 0.033


def _clustered(rng, mu):
    """G episodes per task sharing a task effect (intra-task correlation 0.5), true mean mu."""
    task = rng.normal(mu, 1.0, N_TASKS)
    return (task[:, None] + rng.normal(0, 1.0, (N_TASKS, G))).reshape(-1)


def _coverage(make, mu, ids):
    rng = np.random.default_rng(0)
    groups = task_groups(ids)
    hits = 0
    for k in range(N_DATASETS):
        _, lo, hi = mean_ci(make(rng, mu), groups, bootstrap_counts(groups.n_tasks, N_BOOT, seed=k))
        hits += lo <= mu <= hi
    return hits / N_DATASETS


def test_coverage_of_task_bootstrap_on_clustered_normal():
    ids = [f"t{i}" for i in range(N_TASKS) for _ in range(G)]
    cov = _coverage(_clustered, 0.3, ids)
    assert LO <= cov <= HI, cov


def test_episode_bootstrap_undercovers_clustered_data():
    # the reason to resample tasks: treating the G correlated episodes as independent gives intervals that
    # are too narrow (design effect 1.5 -> expected coverage about 0.89)
    ids = [f"e{i}" for i in range(N_TASKS * G)]
    cov = _coverage(_clustered, 0.3, ids)
    assert cov < LO, cov


def test_coverage_on_bernoulli_accuracy():
    p_true = 0.7
    ids = [f"t{i}" for i in range(N_TASKS) for _ in range(G)]
    cov = _coverage(lambda rng, mu: (rng.random(N_TASKS * G) < mu).astype(float), p_true, ids)
    assert LO <= cov <= HI, cov


def _explicit(values, ids, W, stat):
    """Reference: build every replicate's dataset by concatenating the drawn tasks' episodes."""
    groups = task_groups(ids)
    out = []
    for w in W:
        parts = [values[groups.index == t] for t in range(groups.n_tasks) for _ in range(int(w[t]))]
        out.append(stat(np.concatenate(parts)))
    return np.array(out)


def test_replicates_equal_explicit_resampling():
    rng = np.random.default_rng(1)
    ids = [f"t{i % 7}" for i in range(23)]  # unequal episodes per task, interleaved order
    values = rng.exponential(2.0, 23)
    groups = task_groups(ids)
    W = bootstrap_counts(groups.n_tasks, 50, seed=3)
    np.testing.assert_allclose(mean_replicates(values, groups, W), _explicit(values, ids, W, np.mean), rtol=1e-12)
    for q in (0.5, 0.95, 0.99):
        order = np.argsort(values, kind="stable")
        reps = weighted_quantile(values[order], W[:, groups.index][:, order], q)
        ref = _explicit(values, ids, W, lambda x: np.quantile(x, q, method="inverted_cdf"))
        np.testing.assert_array_equal(reps, ref)
        point, lo, hi = quantile_ci(values, q, groups, W)
        assert point == np.quantile(values, q, method="inverted_cdf") and lo <= hi


def test_diff_ci_is_paired_and_seeded():
    rng = np.random.default_rng(2)
    ids = [f"t{i}" for i in range(40) for _ in range(2)]
    shared = np.repeat(rng.normal(0, 3, 40), 2)
    a, b = shared + rng.normal(0.5, 0.1, 80), shared
    groups = task_groups(ids)
    W = bootstrap_counts(groups.n_tasks, 500, seed=0)
    d, lo, hi = diff_ci(a, b, groups, W)
    _, alo, ahi = mean_ci(a, groups, W)
    assert lo > 0 and (hi - lo) < 0.2 * (ahi - alo)  # the shared task effect cancels in the paired difference
    assert diff_ci(a, b, groups, bootstrap_counts(groups.n_tasks, 500, seed=0)) == (d, lo, hi)


def test_counts_rows_sum_to_n_tasks_and_bad_input():
    W = bootstrap_counts(9, 20, seed=0)
    assert W.shape == (20, 9) and np.all(W.sum(1) == 9)
    with pytest.raises(ValueError, match="episodes"):
        mean_ci(np.zeros(3), task_groups(["a", "b"]), bootstrap_counts(2, 5, 0))
    with pytest.raises(ValueError, match="no episodes"):
        task_groups([])
