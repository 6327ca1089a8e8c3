"""Scaling-law fits over a sweep's runs: Hoffmann et al. (2022), approaches 2 and 3.

Approach 2: on each IsoFLOP curve (runs of one FLOP budget C), a parabola of the loss in
log N; its minimum is that budget's compute-optimal N (and D). Power laws N_opt = k C^a and
D_opt = k' C^b are fitted through the minima.

Approach 3: L(N, D) = E + A / N^alpha + B / D^beta over all runs, fitted as Hoffmann et al.
did and Besiroglu et al. (2024) redid: the Huber loss (delta 1e-3) between the predicted
and measured log-loss, L-BFGS from every point of a grid of starts, the best kept.

Both come with bootstrap intervals (runs resampled with replacement).
"""

import itertools

import numpy as np
from scipy import optimize, stats

# Hoffmann et al.'s grid of starting points, in (log A, log B, log E, alpha, beta).
HOFFMANN_STARTS = [
  (a, b, e, alpha, beta)
  for a in (0, 5, 10, 15, 20, 25)
  for b in (0, 5, 10, 15, 20, 25)
  for e in (-1, -0.5, 0, 0.5, 1)
  for alpha in (0, 0.5, 1, 1.5, 2)
  for beta in (0, 0.5, 1, 1.5, 2)
]
# A coarser grid, and a few points of it for the bootstrap's refits, which also start from
# the full fit.
COARSE_STARTS = [
  (a, b, e, alpha, beta)
  for a, b in itertools.product((2, 8, 16), repeat=2)
  for e in (-0.5, 0.5)
  for alpha, beta in ((0.3, 0.3), (0.6, 0.3), (0.3, 0.6))
]
BOOTSTRAP_STARTS = COARSE_STARTS[::9]


def _huber_objective(p, logn, logd, logl, delta):
  """Summed Huber loss of log L(N, D) - log L, and its gradient in p."""
  a, b, e, alpha, beta = p
  t = np.stack([a - alpha * logn, b - beta * logd, np.full_like(logn, e)])
  top = t.max(0)
  w = np.exp(t - top)
  lse = top + np.log(w.sum(0))
  w = w / w.sum(0)  # d lse / d t
  r = lse - logl
  small = np.abs(r) <= delta
  loss = np.where(small, 0.5 * r**2, delta * (np.abs(r) - 0.5 * delta)).sum()
  dr = np.clip(r, -delta, delta)
  grad = np.array(
    [
      (dr * w[0]).sum(),
      (dr * w[1]).sum(),
      (dr * w[2]).sum(),
      -(dr * w[0] * logn).sum(),
      -(dr * w[1] * logd).sum(),
    ]
  )
  return loss, grad


def fit_law(n, d, loss, starts=HOFFMANN_STARTS, delta: float = 1e-3) -> dict:
  """Approach 3: E, A, B, alpha, beta of L(N, D) = E + A/N^alpha + B/D^beta."""
  logn, logd, logl = (np.log(np.asarray(v, np.float64)) for v in (n, d, loss))
  best = None
  for x0 in starts:
    res = optimize.minimize(
      _huber_objective,
      np.asarray(x0, np.float64),
      (logn, logd, logl, delta),
      jac=True,
      method='L-BFGS-B',
    )
    if best is None or res.fun < best.fun:
      best = res
  a, b, e, alpha, beta = best.x
  return {
    'E': float(np.exp(e)),
    'A': float(np.exp(a)),
    'B': float(np.exp(b)),
    'alpha': float(alpha),
    'beta': float(beta),
    'objective': float(best.fun),
    'x': [float(v) for v in best.x],
  }


def law(fit: dict, n, d):
  """L(N, D) of an approach-3 fit."""
  n, d = np.asarray(n, np.float64), np.asarray(d, np.float64)
  return fit['E'] + fit['A'] / n ** fit['alpha'] + fit['B'] / d ** fit['beta']


def optimal_allocation(fit: dict, flops: float) -> dict:
  """Approach 3's compute-optimal N and D for C = 6ND (Hoffmann et al., eq. 4); NaN where
  an exponent is not positive (a resample can fit one so)."""
  alpha, beta, A, B = fit['alpha'], fit['beta'], fit['A'], fit['B']
  if alpha <= 0 or beta <= 0:  # no optimum: more of N or D never helps
    nan = float('nan')
    return {'params': nan, 'tokens': nan, 'tokens_per_param': nan, 'n_exponent': nan}
  g = (alpha * A / (beta * B)) ** (1 / (alpha + beta))
  n = g * (flops / 6) ** (beta / (alpha + beta))
  d = (flops / 6) / n
  return {
    'params': float(n),
    'tokens': float(d),
    'tokens_per_param': float(d / n),
    'n_exponent': float(beta / (alpha + beta)),
  }


def isoflop_minimum(n, d, loss) -> dict | None:
  """The vertex of a parabola of loss in log N, and D there (log D is linear in log N
  along an IsoFLOP curve); None if the curve bends the wrong way."""
  x, y = np.log(np.asarray(n, np.float64)), np.asarray(loss, np.float64)
  c2, c1, c0 = np.polyfit(x, y, 2)
  if c2 <= 0:
    return None
  xm = -c1 / (2 * c2)
  slope, icpt = np.polyfit(x, np.log(np.asarray(d, np.float64)), 1)
  return {
    'params': float(np.exp(xm)),
    'tokens': float(np.exp(icpt + slope * xm)),
    'loss': float(c0 + c1 * xm + c2 * xm**2),
    'parabola': [float(c2), float(c1), float(c0)],
    'inside': bool(x.min() <= xm <= x.max()),
  }


def fit_isoflops(rows: list[dict], n_key: str = 'params') -> dict | None:
  """Approach 2 over rows with a `budget`: each curve's minimum, and power laws through
  the minima that lie within their curve's sizes (one past the smallest or the largest
  size is an extrapolation: the grid missed it). None with fewer than two such."""
  minima = []
  for budget in sorted({r['budget'] for r in rows if r['budget']}):
    curve = [r for r in rows if r['budget'] == budget]
    if len({r[n_key] for r in curve}) < 3:
      continue
    m = isoflop_minimum(
      [r[n_key] for r in curve], [r['tokens'] for r in curve], [r['final_loss'] for r in curve]
    )
    if m is not None:
      minima.append({'budget': budget, **m})
  used = [m for m in minima if m['inside']]
  if len(used) < 2:
    return None
  logc = np.log([m['budget'] for m in used])
  n_law = stats.linregress(logc, np.log([m['params'] for m in used]))
  d_law = stats.linregress(logc, np.log([m['tokens'] for m in used]))
  return {
    'minima': minima,
    'minima_used': len(used),
    'n_exponent': float(n_law.slope),
    'n_coefficient': float(np.exp(n_law.intercept)),
    'd_exponent': float(d_law.slope),
    'd_coefficient': float(np.exp(d_law.intercept)),
  }


def frontier(fit2: dict, flops: float) -> dict:
  """Approach 2's N_opt and D_opt at a budget."""
  # In logs: a resample's exponent can be large enough to overflow a float's power.
  n = np.exp(np.log(fit2['n_coefficient']) + fit2['n_exponent'] * np.log(flops))
  d = np.exp(np.log(fit2['d_coefficient']) + fit2['d_exponent'] * np.log(flops))
  return {'params': float(n), 'tokens': float(d), 'tokens_per_param': float(d / n)}


def _interval(values) -> list[float]:
  values = np.asarray([v for v in values if np.isfinite(v)])
  if not len(values):
    return [float('nan'), float('nan')]
  return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def bootstrap(
  rows: list[dict],
  at_flops: float,
  samples: int = 200,
  seed: int = 0,
  n_key: str = 'params',
  fit3: dict | None = None,
) -> dict:
  """95% intervals (2.5th-97.5th percentiles) of both approaches' figures over `samples`
  resamplings of the runs, with replacement (within each IsoFLOP curve for approach 2).
  Approach 3's refits start from the full fit (`fit3`) and a few points of the grid."""
  rng = np.random.default_rng(seed)
  starts = BOOTSTRAP_STARTS + ([fit3['x']] if fit3 else [])
  curves = {}
  for r in rows:
    curves.setdefault(r['budget'], []).append(r)
  draws2, draws3 = [], []
  for _ in range(samples):
    resampled = [rows[i] for i in rng.integers(0, len(rows), len(rows))]
    n, d, loss = ([r[k] for r in resampled] for k in (n_key, 'tokens', 'final_loss'))
    f3 = fit_law(n, d, loss, starts)
    draws3.append({**f3, **optimal_allocation(f3, at_flops)})
    within = [
      c[i] for c in curves.values() if c[0]['budget'] for i in rng.integers(0, len(c), len(c))
    ]
    f2 = fit_isoflops(within, n_key)
    if f2 is not None:
      draws2.append({**f2, **frontier(f2, at_flops)})
  keys3 = ('E', 'A', 'B', 'alpha', 'beta', 'n_exponent', 'params', 'tokens', 'tokens_per_param')
  keys2 = ('n_exponent', 'd_exponent', 'params', 'tokens', 'tokens_per_param')
  return {
    'samples': samples,
    'approach3': {k: _interval([s[k] for s in draws3]) for k in keys3},
    'approach2': {k: _interval([s[k] for s in draws2]) for k in keys2},
    'approach2_samples_fitted': len(draws2),
  }
