"""Scaling-law fits (jaxgpt/scaling.py) recover laws planted in generated losses."""

import numpy as np
import pytest
from scipy import optimize

from jaxgpt import scaling

# Hoffmann et al.'s own fit (their eq. 10), planted in the losses below.
TRUE = {'E': 1.69, 'A': 406.4, 'B': 410.7, 'alpha': 0.34, 'beta': 0.28}
BUDGETS = (1e18, 4e18, 1.6e19, 6.4e19)


def isoflop_rows(noise=0.0, seed=0, law=TRUE, sizes=9):
  """IsoFLOP grids around each budget's optimum (C = 6ND), losses from `law` with
  multiplicative Gaussian noise."""
  rng = np.random.default_rng(seed)
  rows = []
  for c in BUDGETS:
    n_opt = scaling.optimal_allocation(law, c)['params']
    for n in np.geomspace(n_opt / 10, n_opt * 10, sizes):
      d = c / (6 * n)
      loss = float(scaling.law(law, n, d)) * float(np.exp(rng.normal(0, noise)))
      rows.append({'budget': c, 'params': float(n), 'tokens': float(d), 'final_loss': loss})
  return rows


def _fit(rows, starts=scaling.COARSE_STARTS):
  return scaling.fit_law(
    *([r[k] for r in rows] for k in ('params', 'tokens', 'final_loss')), starts
  )


def test_approach3_recovers_the_planted_law_within_5_percent():
  fit = _fit(isoflop_rows(noise=0.001))
  for k, v in TRUE.items():
    assert fit[k] == pytest.approx(v, rel=0.05), (k, fit[k], v)


def test_approach3_without_noise_is_exact():
  fit = _fit(isoflop_rows())
  for k, v in TRUE.items():
    assert fit[k] == pytest.approx(v, rel=2e-3), (k, fit[k], v)


def test_approach2_recovers_the_planted_exponent():
  rows = isoflop_rows(noise=0.001)
  fit2 = scaling.fit_isoflops(rows)
  planted = TRUE['beta'] / (TRUE['alpha'] + TRUE['beta'])  # N_opt ~ C^a, a = 0.452
  assert fit2['n_exponent'] == pytest.approx(planted, rel=0.03)
  assert fit2['d_exponent'] == pytest.approx(1 - planted, rel=0.03)
  assert len(fit2['minima']) == len(BUDGETS)
  assert all(m['inside'] for m in fit2['minima'])


def test_the_closed_form_allocation_is_the_minimum_of_the_law_under_c_6nd():
  c = 1e21
  closed = scaling.optimal_allocation(TRUE, c)
  loss_at = lambda logn: float(scaling.law(TRUE, np.exp(logn), c / (6 * np.exp(logn))))
  numeric = optimize.minimize_scalar(loss_at, bounds=(10, 30), method='bounded').x
  assert closed['params'] == pytest.approx(np.exp(numeric), rel=1e-3)
  assert closed['tokens_per_param'] == pytest.approx(closed['tokens'] / closed['params'])


def test_a_curve_that_bends_down_has_no_minimum():
  assert scaling.isoflop_minimum([1e6, 1e7, 1e8], [1e6, 1e7, 1e8], [3.0, 3.5, 3.0]) is None


def test_bootstrap_intervals_hold_the_planted_values():
  rows = isoflop_rows(noise=0.003, seed=1, sizes=7)
  fit3 = _fit(rows)
  ci = scaling.bootstrap(rows, BUDGETS[-1], samples=30, seed=0, fit3=fit3)
  for k in ('alpha', 'beta', 'E'):
    lo, hi = ci['approach3'][k]
    assert lo <= TRUE[k] <= hi, (k, lo, hi)
  lo, hi = ci['approach2']['n_exponent']
  assert lo < TRUE['beta'] / (TRUE['alpha'] + TRUE['beta']) < hi
  assert ci['approach2_samples_fitted'] == 30
