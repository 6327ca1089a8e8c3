"""A scaling study's plots (PNG): loss against tokens, IsoFLOP curves, the compute-optimal
frontier and the law's residuals."""

import json
import os

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from jaxgpt import scaling  # noqa: E402


def _save(fig, path):
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def _colors(values):
  ordered = sorted(set(values))
  cmap = plt.get_cmap('viridis')
  return {v: cmap(i / max(1, len(ordered) - 1)) for i, v in enumerate(ordered)}


def loss_vs_tokens(rows, run_dirs: dict, path: str, n_key='params'):
  """Each run's training loss (logged windows) and validation losses against tokens seen,
  coloured by size."""
  colors = _colors([r[n_key] for r in rows])
  fig, ax = plt.subplots(figsize=(7, 4.5))
  labelled = set()
  for r in rows:
    train, val = _curves(os.path.join(run_dirs[r['name']], 'metrics.jsonl'))
    per_step = r['tokens'] / max(1, r['step'])
    label = None if r[n_key] in labelled else f'N={r[n_key]:.3g}'
    labelled.add(r[n_key])
    if train:
      s, loss = zip(*train)
      ax.plot(np.array(s) * per_step, loss, color=colors[r[n_key]], lw=0.8, alpha=0.6, label=label)
    if val:
      s, loss = zip(*val)
      ax.plot(np.array(s) * per_step, loss, 'o', color=colors[r[n_key]], ms=3)
  ax.set(xscale='log', xlabel='tokens seen', ylabel='loss (lines: training, dots: validation)')
  ax.legend(fontsize=7, title='parameters')
  ax.set_title('Loss against tokens, by model size')
  return _save(fig, path)


def _curves(metrics_path):
  train, val = [], []
  if os.path.exists(metrics_path):
    with open(metrics_path) as f:
      for line in f:
        try:
          rec = json.loads(line)
        except json.JSONDecodeError:
          continue
        (train if rec.get('kind') == 'train' else val if rec.get('kind') == 'eval' else []).append(
          (rec['step'], rec['loss'])
        )
  return train, val


def isoflops(rows, fit2, path, n_key='params'):
  """Final loss against N for each budget, with each curve's parabola and its minimum."""
  budgets = sorted({r['budget'] for r in rows if r['budget']})
  colors = _colors(budgets)
  minima = {m['budget']: m for m in (fit2 or {}).get('minima', [])}
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for c in budgets:
    curve = sorted((r[n_key], r['final_loss']) for r in rows if r['budget'] == c)
    n, loss = zip(*curve)
    ax.plot(n, loss, 'o', color=colors[c], label=f'C={c:.2g}')
    if c in minima:
      c2, c1, c0 = minima[c]['parabola']
      x = np.linspace(np.log(min(n)), np.log(max(n)), 100)
      ax.plot(np.exp(x), c0 + c1 * x + c2 * x**2, color=colors[c], lw=1)
      if minima[c]['inside']:  # one outside the sizes is an extrapolation, not drawn
        ax.plot(minima[c]['params'], minima[c]['loss'], '*', color=colors[c], ms=12, mec='k')
  ax.set(xscale='log', xlabel=f'parameters ({n_key})', ylabel='final validation loss')
  ax.legend(fontsize=7, title='FLOP budget')
  ax.set_title('IsoFLOP curves (stars: fitted minima within the sizes)')
  return _save(fig, path)


def frontier(fit2, fit3, path, check=None):
  """N_opt(C): approach 2's minima and power law, approach 3's allocation, and the check run."""
  fig, ax = plt.subplots(figsize=(7, 4.5))
  budgets = [m['budget'] for m in fit2['minima']] if fit2 else []
  top = max(budgets + ([check['flops']] if check else [])) * 1.5
  c = np.geomspace(min(budgets or [top / 100]) / 1.5, top, 50)
  if fit2:
    kinds = ((True, 'o', 'IsoFLOP minima'), (False, 'x', 'minima outside their curve (not fitted)'))
    for inside, style, label in kinds:
      pts = [(m['budget'], m['params']) for m in fit2['minima'] if m['inside'] == inside]
      if pts:
        ax.plot(*zip(*pts), style, color='C0', label=label)
    ax.plot(
      c,
      fit2['n_coefficient'] * c ** fit2['n_exponent'],
      color='C0',
      label=f'approach 2: N_opt ~ C^{fit2["n_exponent"]:.2f}',
    )
  if fit3:
    n3 = [scaling.optimal_allocation(fit3, x)['params'] for x in c]
    a3 = fit3['beta'] / (fit3['alpha'] + fit3['beta'])
    ax.plot(c, n3, '--', color='C1', label=f'approach 3 (C = 6ND): N_opt ~ C^{a3:.2f}')
  if check:
    ax.plot(check['flops'], check['params'], 's', color='C3', ms=8, label='prediction check run')
  ax.set(xscale='log', yscale='log', xlabel='training FLOPs C', ylabel='compute-optimal parameters')
  ax.legend(fontsize=7)
  ax.set_title('The compute-optimal frontier')
  return _save(fig, path)


def residuals(rows, fit3, path, n_key='params', check=None):
  """Approach 3's residuals, log L(N, D) - log L, against C."""
  fig, ax = plt.subplots(figsize=(7, 4))
  flops = [r['flops'] for r in rows]
  res = [np.log(scaling.law(fit3, r[n_key], r['tokens'])) - np.log(r['final_loss']) for r in rows]
  ax.plot(flops, res, 'o', ms=4, label='sweep runs (fitted)')
  if check and check.get('measured_loss'):
    ax.plot(
      check['flops'],
      np.log(check['predicted_loss']) - np.log(check['measured_loss']),
      's',
      color='C3',
      ms=8,
      label='prediction check (not fitted)',
    )
  ax.axhline(0, color='k', lw=0.8)
  ax.set(xscale='log', xlabel='training FLOPs C', ylabel='log predicted - log measured loss')
  ax.legend(fontsize=7)
  ax.set_title('Residuals of L(N, D) = E + A/N^alpha + B/D^beta')
  return _save(fig, path)


def lr_by_width(rows, path):
  """Final loss against the learning rate, a line per width, a panel per parametrization:
  under muP the minima line up, under the standard one they drift as the width grows."""
  kinds = sorted({r['model.parametrization'] for r in rows}, key=lambda k: k != 'sp')
  colors = _colors([r['model.d_model'] for r in rows])
  fig, axes = plt.subplots(1, len(kinds), figsize=(5.5 * len(kinds), 4.2), sharey=True)
  axes = np.atleast_1d(axes)
  for ax, kind in zip(axes, kinds):
    for width in sorted({r['model.d_model'] for r in rows}):
      pts = sorted(
        (r['optim.lr'], r['final_loss'])
        for r in rows
        if r['model.parametrization'] == kind and r['model.d_model'] == width
      )
      if not pts:
        continue
      lr, loss = zip(*pts)
      ax.plot(lr, loss, 'o-', color=colors[width], ms=3, label=f'width {width}')
      i = int(np.argmin(loss))
      ax.plot(lr[i], loss[i], '*', color=colors[width], ms=12, mec='k')
    ax.set(xscale='log', xlabel='learning rate', title=f"model.parametrization='{kind}'")
    ax.legend(fontsize=7)
  axes[0].set_ylabel('final validation loss (stars: best per width)')
  return _save(fig, path)
