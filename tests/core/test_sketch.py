"""The report's mergeable distributions equal numpy's answers over the full arrays, merged in any split."""

from __future__ import annotations

import numpy as np
import pytest

from cellcorpus.core.sketch import ValueCounts

QS = (0.0, 0.01, 0.1, 0.5, 0.9, 0.99, 1.0)


def _merged(x: np.ndarray, pieces: int, rng: np.random.Generator, cap: int = 1 << 20) -> ValueCounts:
    cuts = np.sort(rng.integers(0, len(x), pieces - 1))
    out = ValueCounts()
    for part in np.split(x, cuts):
        out = out.merge(ValueCounts.of(part, cap), cap)
    return out


@pytest.mark.parametrize("n", [1, 2, 7, 10_001])
def test_integer_values_give_numpys_quantiles_mean_and_histogram_exactly(n):
    """Genes per cell and raw-count totals are whole numbers: every statistic equals numpy's, bit for bit."""
    rng = np.random.default_rng(n)
    genes = rng.integers(0, 4_000, n)
    totals = np.round(rng.lognormal(8, 1, n)).astype(np.float64)
    for x in (genes, totals):
        vc = _merged(x, min(n, 13), rng)
        assert vc.n == n and not vc.approximate
        assert [vc.quantile(q) for q in QS] == [float(np.quantile(x, q)) for q in QS]
        assert vc.mean() == float(x.mean())
        edges = np.linspace(x.min(), x.max() + 1e-9, 41)
        assert vc.histogram(edges).tolist() == np.histogram(x, bins=edges)[0].tolist()
        assert vc.count_above(1_000) == int((x > 1_000).sum())


def test_fractional_values_keep_exact_quantiles_while_they_fit():
    rng = np.random.default_rng(1)
    x = rng.random(5_000) * 1e4
    vc = _merged(x, 9, rng)
    assert [vc.quantile(q) for q in QS] == [float(np.quantile(x, q)) for q in QS]
    assert vc.mean() == pytest.approx(float(x.mean()), rel=1e-15)


def test_more_distinct_values_than_the_cap_are_rounded_with_bounded_error():
    """Normalised data (one distinct value per cell): memory stays at the cap, quantiles within the precision."""
    rng = np.random.default_rng(2)
    x = rng.lognormal(5, 2, 50_000)
    vc = _merged(x, 20, rng, cap=2_000)
    assert vc.approximate and len(vc.values) <= 2_000 and vc.n == len(x)
    for q in QS:
        assert vc.quantile(q) == pytest.approx(float(np.quantile(x, q)), rel=8 * vc.alpha)
    assert vc.mean() == pytest.approx(float(x.mean()), rel=1e-12)  # the sum is kept exactly, not rounded
