"""Rebuilds experiments/reproduce/README.md and its figures from the results files alone.

  python experiments/reproduce/report.py            # write README.md and the PNG figures
  python experiments/reproduce/report.py --check    # exit 1 if README.md is not what the results give

Reads experiments/results/<dataset>.jsonl (one line per finished run, written by run.py)
and the mask snapshots under experiments/results/masks/. The prose of the conclusions
is conclusions.md, included as it is; everything else is computed here.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (experiments/reproduce/run.py)
import studies  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DATASET_TITLES = {
  'fashion_mnist': 'Fashion-MNIST (exact Debian IDX files)',
  'cifar10': 'CIFAR-10 (a JPEG copy of the images: labels and splits exact, pixels JPEG-lossy)',
  'cifar100': 'CIFAR-100',
  'cifar10_mixer': 'CIFAR-10 with an MLP-Mixer (the JPEG copy)',
  'smoke': 'smoke (synthetic data, for tests)',
}
STUDY_TITLES = {
  'table1': 'Table 1: dense baselines against G2GNet, 30 epochs',
  'p_sweep': "Inter-group probability p', 20 epochs",
  'dst': "Dynamic sparse training on G2G mixer, p' = 0.15, 20 epochs",
  'tiles': 'Tiled inter-group edges against scattered ones, 30 epochs',
  'init': "Kernel initialisation: table 1's rows under each init, 30 epochs",
  'budget': 'Matched budgets: accuracy against active head parameters, 30 epochs',
  'mixer': f'G2G layers in an MLP-Mixer, {studies.MIXER_EPOCHS} epochs',
  'challenge': "The challenge: G2G with at most 30% of FC v2's head params against FC v2, 30 epochs",
}
STUDY_NOTES = {
  'table1': 'FC v1 is dense with as many head params as G2GNet; FC v2 is dense at width 1024; ER has '
  "G2GNet's density without groups.",
  'p_sweep': "p' = 0.15 is the default (74.4% sparse). FC v2 is the dense line of the figure.",
  'dst': 'Rows are prune_grow criteria: 10% of each sparse layer\'s edges every 1000 steps. "static" never '
  "rewires (the same runs as mixer p' = 0.15 of the p' sweep).",
  'tiles': "Both at G = 8, p' = 0.15. Tiles: one group-sized tile per block (tile_size = 0), each output group "
  'reads one other whole group, so the density is 25.0% against 25.6% expected for scattered edges. The '
  "scattered row is the same runs as table 1's G2G mixer.",
  'init': "The paper does not give its initialisation. `torch` is U(±1/sqrt(fan_in)), PyTorch's default and the "
  "lab's; `he_normal` a truncated normal of variance 2 / fan_in, the usual choice for ReLU networks; "
  '`lecun_normal` of variance 1 / fan_in. Kernels of every layer (patch conv, hidden, output) use it, biases '
  "start at 0, and each sparse layer's kernel is then rescaled to its active fan-in. The `torch` rows are "
  "table 1's runs.",
  'challenge': "All he_normal, width 1024. G2G: index grouping (the best of table 1's G2G rows), G = 8, "
  "p' = 0.19, so 29.5% of FC v2's head params are active. RigL: prune by smallest |w|, grow by largest "
  'dense-gradient magnitude; SET: grow at random; both move 30% of the edges at first, decaying (cosine) to '
  'none at step 4,400 of 5,850, an update every 200 steps. The claim needs a G2G row whose mean is above '
  "FC v2's by more than the sum of the two standard deviations.",
  'mixer': 'configs/cifar10_mixer.py: 64 tokens of 4 x 4 pixels, 128 channels, 2 blocks, token MLP 64 and '
  'channel MLP 256 wide, GELU. The sparse layers are the MLPs\' Dense kernels (all 8, or with "channel MLPs" '
  "the 4 channel-mixing ones); head params count all 8. G2G: mixer grouping, G = 8, p' = 0.15 (25.6% dense "
  'scattered, 25.0% with tiles); ER: masks of the same density without groups. "dense at ... head params": '
  "a dense Mixer whose MLP widths shrink by one factor until its head params are the sparse row's "
  '(model.width_rule = match_g2g_params). Every row but "dense / lecun_normal" uses the `torch` init, stem '
  "included; that row is the check of the reference Mixer's init, which hurt the dense Mixer here, so the "
  'grid kept `torch`. Optimizer and augmentation as the G2GNet runs.',
  'budget': 'Three families at about the same active head parameters (0.35M, 0.69M = FC v1, 1.3M, 2.6M = FC v2), '
  'all with he_normal (the better init of every row in the CIFAR-10 init study): dense MLPs of several widths (and one '
  'wider), ER masks, and G2G mixer with scattered or tiled inter-group edges. A sparse point reaches its budget '
  "through G and p' (`studies.budget_connectivity`: G the power of two nearest 2 / density, so intra-group edges "
  "are about half of a layer's). Tiles take one whole-group tile per other group read, so they land a little "
  'under their budget. Scattered masks cost on a CPU what the dense layer of their width costs, so ER and '
  'scattered G2G run at width 1024 only.',
}
# (a, b) pairs compared in the findings table, per study.
COMPARISONS = {
  'table1': [
    ('G2G mixer', 'FC v2'),
    ('G2G mixer', 'FC v1'),
    ('G2G index', 'FC v2'),
    ('G2G index', 'FC v1'),
    ('ER', 'FC v2'),
    ('G2G mixer', 'ER'),
    ('G2G index', 'ER'),
    ('G2G mixer', 'G2G index'),
  ],
  'p_sweep': [('mixer p=0.15', 'index p=0.15'), ('mixer p=0.15', 'random p=0.15'), ('mixer p=0.15', 'FC v2')],
  'dst': [(f'{p}_{g}', 'static') for p in studies.PRUNES for g in studies.GROWS],
  'tiles': [('tiles', 'scattered (bernoulli)')],
  'init': [(f'{name} / {init}', f'{name} / torch') for init in studies.KERNEL_INITS[1:] for name, _ in studies.TABLE1]
  + [
    ('G2G mixer / he_normal', 'FC v2 / he_normal'),
    ('G2G mixer / he_normal', 'FC v1 / he_normal'),
    ('G2G index / he_normal', 'FC v2 / he_normal'),
    ('ER / he_normal', 'FC v2 / he_normal'),
    ('G2G mixer / he_normal', 'ER / he_normal'),
    ('G2G index / he_normal', 'ER / he_normal'),
  ],
  'budget': [(f'G2G w=1024 {b}', f'ER w=1024 {b}') for b in ('0.35M', '0.69M', '1.3M')]
  + [(f'G2G tiles w={w} 0.35M', 'dense w=307') for w in (1024, 2048, 4096)]
  + [(f'G2G tiles w={w} 0.69M', 'dense w=469 (FC v1)') for w in (1024, 2048, 4096)]
  + [('G2G w=1024 0.69M', 'dense w=469 (FC v1)'), ('G2G w=1024 1.3M', 'dense w=686')]
  + [(f'G2G tiles w={w} 1.3M', 'dense w=686') for w in (1024, 2048)]
  + [(f'G2G tiles w={w} 0.69M', 'dense w=1024 (FC v2)') for w in (2048, 4096)],
  'mixer': [
    ('G2G', 'ER'),  # a group effect outside an MLP?
    ('G2G', "dense at G2G's head params"),  # does wide-sparse pay?
    ('G2G', 'dense'),
    ('G2G channel MLPs', 'G2G'),  # channel-only against all-kernel sparsity
    ('G2G channel MLPs', "dense at channel G2G's head params"),
    ('G2G tiles', 'G2G'),
    ('dense / lecun_normal', 'dense'),
  ],
  'challenge': [(e.name, 'FC v2') for e in studies.STUDIES['challenge'][1:]],
}
PNG_META = {'Software': None}  # no library version in the files: the same results give the same bytes


def _stats(values):
  values = np.asarray(values, np.float64)
  std = float(values.std(ddof=1)) if values.size > 1 else float('nan')
  return float(values.mean()), std


def _pm(values, scale=100.0, digits=2):
  mean, std = _stats(values)
  if np.isnan(std):
    return f'{scale * mean:.{digits}f}'
  return f'{scale * mean:.{digits}f} ± {scale * std:.{digits}f}'


def collect(results_dir: str) -> dict:
  """{dataset: {study: [(entry, [records of its seeds])]}} for the datasets the study covers here
  (Fashion-MNIST and CIFAR-10, run or not) and any other that has results."""
  out = {}
  for dataset in studies.DATASETS:
    records = run.read_results(run.results_path(results_dir, dataset))
    if not records and dataset not in ('fashion_mnist', 'cifar10', 'cifar10_mixer'):
      continue
    by_key = {}
    for r in records:
      by_key.setdefault(r['key'], {})[r['seed']] = r
    mine = {study: studies.STUDIES[study] for study in studies.STUDIES_OF[dataset]}
    keys = {e: studies.run_key(dataset, e)[0] for entries in mine.values() for e in entries}
    out[dataset] = {
      study: [(e, [by_key.get(keys[e], {})[s] for s in sorted(by_key.get(keys[e], {}))]) for e in entries]
      for study, entries in mine.items()
    }
  return out


BUSY_CORES = 0.25  # other processes' mean use of the machine above which a run's timing is marked


def _busy_mark(recs) -> str:
  """† when other work used the machine during a seed's run, ‡ when that was not measured."""
  loads = [r.get('other_cores') for r in recs]
  if any(x is not None and x > BUSY_CORES for x in loads):
    return ' †'
  return ' ‡' if any(x is None for x in loads) else ''


def kernel_init(record: dict) -> str:
  """The init a run used. Lines written before results said it all used the default, 'torch'."""
  return record.get('kernel_init', 'torch')


def study_table(rows) -> list[str]:
  lines = [
    '| run | init | seeds | final test acc % | best test acc % | head params | sparsity % | MFLOPs / example '
    '| train s | whole run s | examples/s |',
    '|---|---|---|---|---|---|---|---|---|---|---|',
  ]
  for entry, recs in rows:
    if not recs:
      lines.append(f'| {entry.name} | | 0 | not run yet | | | | | | | |')
      continue
    inits = ', '.join(sorted({kernel_init(r) for r in recs}))
    lines.append(
      f'| {entry.name} | {inits} | {len(recs)} | {_pm([r["final_test_accuracy"] for r in recs])} '
      f'| {_pm([r["best_test_accuracy"] for r in recs])} | {int(np.mean([r["head_params"] for r in recs])):,} '
      f'| {100 * np.mean([r["sparsity"] for r in recs]):.2f} '
      f'| {np.mean([r["flops_per_example"] for r in recs]) / 1e6:.2f} '
      f'| {_timing(recs, _train_cell)} | {_timing(recs, _wall_cell)} | {_timing(recs, _rate_cell)} |'
    )
  return lines


def _train_cell(recs) -> str:
  return _pm([r['train_seconds'] for r in recs], 1.0, 1) + _busy_mark(recs)


def _wall_cell(recs) -> str:
  return f'{np.mean([r["wall_seconds"] for r in recs]):.0f}'


def _rate_cell(recs) -> str:
  return f'{np.mean([r["examples_per_sec"] for r in recs]):,.0f}'


def _timing(recs, cell) -> str:
  """A timing cell: the CPU runs' figure, then the GPU runs' one (never mixed into one mean)."""
  by_backend = {}
  for r in recs:
    by_backend.setdefault(r['backend'], []).append(r)
  parts = []
  for backend in sorted(by_backend, key=lambda b: (b != 'cpu', b)):
    rs = by_backend[backend]
    label = '' if backend == 'cpu' else f'{backend.upper()} '
    count = f' ({len(rs)})' if len(by_backend) > 1 else ''
    parts.append(f'{label}{cell(rs)}{count}')
  return '; '.join(parts)


def comparison_table(study: str, rows) -> list[str]:
  by_name = {e.name: recs for e, recs in rows}
  lines = []
  for a, b in COMPARISONS[study]:
    ra, rb = by_name.get(a, []), by_name.get(b, [])
    if not ra or not rb:
      continue
    fa, fb = [r['final_test_accuracy'] for r in ra], [r['final_test_accuracy'] for r in rb]
    (ma, sa), (mb, sb) = _stats(fa), _stats(fb)
    diff = 100 * (ma - mb)
    if len(ra) < 2 or len(rb) < 2:
      verdict = 'one seed: no spread'
    else:
      spread = 100 * (sa + sb)
      verdict = f'yes (spread {spread:.2f})' if abs(diff) > spread else f'no (spread {spread:.2f})'
    lines.append(f'| {a} − {b} | {len(ra)} / {len(rb)} | {diff:+.2f} | {verdict} |')
  if not lines:
    return []
  header = [
    '',
    'Difference of mean final test accuracy, in points. "Beyond spread" asks whether it is larger than the '
    'sum of the two standard deviations.',
    '',
    '| comparison | seeds | difference | beyond spread? |',
    '|---|---|---|---|',
  ]
  return header + lines


def _budget_shares(rows, reference: str) -> list[str]:
  """Each entry's active head params as a share of the reference entry's."""
  by_name = {e.name: recs for e, recs in rows if recs}
  if reference not in by_name:
    return []
  ref = np.mean([r['head_params'] for r in by_name[reference]])
  shares = [f'{name} {100 * np.mean([r["head_params"] for r in recs]) / ref:.1f}%' for name, recs in by_name.items()]
  return ['', f"Active head params as a share of {reference}'s: " + '; '.join(shares) + '.']


def _save(fig, path):
  """Writes a figure reproducibly and frees it."""
  import matplotlib.pyplot as plt  # noqa: PLC0415

  fig.tight_layout()
  fig.savefig(path, dpi=100, metadata=PNG_META)
  plt.close(fig)


def _finish(fig, ax, path, title, xlabel, ylabel, legend=True):
  """Labels a one-axes figure the same way as the others, then saves it."""
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title, fontsize=9)
  if legend:
    ax.legend(fontsize=8)
  _save(fig, path)


def figure_p_sweep(rows, path, title):
  import matplotlib.pyplot as plt  # noqa: PLC0415

  fig, ax = plt.subplots(figsize=(6, 4))
  by_name = {e.name: recs for e, recs in rows}
  for grouping in studies.GROUPINGS:
    xs, ms, ss = [], [], []
    for p in studies.P_INTERS:
      recs = by_name.get(f'{grouping} p={p:.2f}', [])
      if recs:
        m, s = _stats([r['final_test_accuracy'] for r in recs])
        xs.append(p)
        ms.append(100 * m)
        ss.append(0.0 if np.isnan(s) else 100 * s)
    if xs:
      ax.errorbar(xs, ms, yerr=ss, marker='o', capsize=3, label=grouping)
  dense = by_name.get('FC v2', [])
  if dense:
    ax.axhline(100 * _stats([r['final_test_accuracy'] for r in dense])[0], color='k', ls='--', label='FC v2 (dense)')
  _finish(fig, ax, path, title, "p' (inter-group edge probability)", 'final test accuracy %')


def figure_curves(rows, path, title):
  import matplotlib.pyplot as plt  # noqa: PLC0415

  fig, ax = plt.subplots(figsize=(6, 4))
  for entry, recs in rows:
    if not recs:
      continue
    curves = 100 * np.asarray([r['test_accuracy_curve'] for r in recs], np.float64)
    epochs = np.arange(1, curves.shape[1] + 1)
    mean = curves.mean(0)
    ax.plot(epochs, mean, label=f'{entry.name} ({len(recs)} seeds)')
    if len(recs) > 1:
      std = curves.std(0, ddof=1)
      ax.fill_between(epochs, mean - std, mean + std, alpha=0.2)
  low = min((100 * min(r['test_accuracy_curve'][1:] or [1]) for _, recs in rows for r in recs), default=0)
  ax.set_ylim(max(low - 1, 0), None)
  _finish(fig, ax, path, title, 'epoch', 'test accuracy %')


def figure_dst(rows, path, title):
  import matplotlib.pyplot as plt  # noqa: PLC0415

  done = [(e, recs) for e, recs in rows if recs]
  fig, ax = plt.subplots(figsize=(8, 4))
  names = [e.name for e, _ in done]
  stats = [_stats([r['final_test_accuracy'] for r in recs]) for _, recs in done]
  means = [100 * m for m, _ in stats]
  stds = [0.0 if np.isnan(s) else 100 * s for _, s in stats]
  colors = ['0.6' if n == 'static' else f'C{studies.PRUNES.index(n.split("_")[0])}' for n in names]
  ax.bar(range(len(names)), means, yerr=stds if any(stds) else None, capsize=3, color=colors)
  if 'static' in names:
    ax.axhline(means[names.index('static')], color='0.4', ls='--', lw=1, label='static')
  ax.set_xticks(range(len(names)), names, rotation=60, ha='right', fontsize=8)
  if means:
    ax.set_ylim(min(means) - 1.5, max(means) + 1.0)
  _finish(fig, ax, path, title, '', 'final test accuracy %', legend='static' in names)


def figure_init(rows, path, title):
  import matplotlib.pyplot as plt  # noqa: PLC0415

  by_name = {e.name: recs for e, recs in rows}
  fig, ax = plt.subplots(figsize=(7, 4))
  width = 0.8 / len(studies.KERNEL_INITS)
  lows = []
  for j, init in enumerate(studies.KERNEL_INITS):
    xs, ms, ss = [], [], []
    for i, (name, _) in enumerate(studies.TABLE1):
      recs = by_name.get(f'{name} / {init}', [])
      if recs:
        m, s = _stats([r['final_test_accuracy'] for r in recs])
        xs.append(i + (j - (len(studies.KERNEL_INITS) - 1) / 2) * width)
        ms.append(100 * m)
        ss.append(0.0 if np.isnan(s) else 100 * s)
    if xs:
      ax.bar(xs, ms, width, yerr=ss, capsize=3, label=init)
      lows += ms
  ax.set_xticks(range(len(studies.TABLE1)), [name for name, _ in studies.TABLE1])
  if lows:
    ax.set_ylim(min(lows) - 1.5, max(lows) + 1.0)
  _finish(fig, ax, path, title, '', 'final test accuracy %')


def figure_budget(rows, path, title):
  """Accuracy against active head parameters (log axis) and against training seconds, a line per family."""
  import matplotlib.pyplot as plt  # noqa: PLC0415

  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
  families = {}
  for entry, recs in rows:
    if recs:
      families.setdefault(entry.family, []).append(recs)
  for i, (family, points) in enumerate(families.items()):
    points = sorted(points, key=lambda recs: np.mean([r['head_params'] for r in recs]))
    style = dict(marker='o', capsize=3, color=f'C{i}', label=family, ls='-' if family == 'dense' else '--')
    for ax, x_of in ((axes[0], 'head_params'), (axes[1], 'train_seconds')):
      xs = [np.mean([r[x_of] for r in recs]) for recs in points]
      stats = [_stats([r['final_test_accuracy'] for r in recs]) for recs in points]
      ys = [100 * m for m, _ in stats]
      errs = [0.0 if np.isnan(s) else 100 * s for _, s in stats]
      # Seconds from runs that shared the machine are noisy: no line through them.
      ax.errorbar(xs, ys, yerr=errs, **(style if x_of == 'head_params' else {**style, 'ls': 'none'}))
  axes[0].set_xscale('log')
  axes[1].set_xscale('log')
  axes[0].set_xlabel('active head parameters')
  axes[1].set_xlabel('training seconds, 2-core CPU (sum of epochs; most runs shared it: †)')
  for ax in axes:
    ax.set_ylabel('final test accuracy %')
    ax.legend(fontsize=7)
  fig.suptitle(title, fontsize=10)
  _save(fig, path)


def figure_mask(snapshot_path, path, title):
  import matplotlib.pyplot as plt  # noqa: PLC0415

  z = np.load(snapshot_path)
  shape = tuple(z['shape'])
  start, end = (np.unpackbits(z[k])[: np.prod(shape)].reshape(shape).astype(bool) for k in ('start', 'end'))
  rows = np.argsort(z['groups_in'], kind='stable')
  cols = np.argsort(z['groups_out'], kind='stable')
  start, end = start[rows][:, cols], end[rows][:, cols]
  changed = np.zeros(shape + (3,))
  changed[end & ~start] = (0.85, 0.1, 0.1)  # grown
  changed[start & ~end] = (0.1, 0.3, 0.85)  # pruned
  changed[start & end] = (0.85, 0.85, 0.85)  # kept
  changed[~start & ~end] = (1, 1, 1)
  fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
  step = int(z['step'])
  for ax, img, name in [
    (axes[0], start, f'start: density {start.mean():.4f}'),
    (axes[1], end, f'step {step}: density {end.mean():.4f}'),
    (axes[2], changed, f'grown (red) {np.sum(end & ~start):,}, pruned (blue) {np.sum(start & ~end):,}'),
  ]:
    ax.imshow(img if img.ndim == 3 else ~img, cmap='gray', interpolation='antialiased', vmin=0, vmax=1)
    ax.set_title(name, fontsize=9)
    ax.set_xlabel('output neurons, by group')
    ax.set_ylabel('input neurons, by group')
  fig.suptitle(title, fontsize=10)
  _save(fig, path)


def _spot_check(dataset, rows) -> list[str]:
  for entry, recs in rows:
    if recs:
      r = recs[0]
      flags = ' '.join(studies.overrides(r['changes']))
      return [
        '',
        f'To repeat one run of this table by hand (here {entry.name}, seed {r["seed"]}):',
        '',
        '```',
        f'python -m g2g_jax.main --config=configs/{dataset}.py:{entry.row} --workdir=/tmp/g2g/check '
        f'--config.seed={r["seed"]} {flags}'.rstrip(),
        '```',
      ]
  return []


def build(results_dir: str, out_dir: str, figures: bool = True) -> str:
  data = collect(results_dir)
  lines = [
    '# Reproducing G2GNet',
    '',
    'Generated by `python experiments/reproduce/report.py` from `experiments/results/*.jsonl`; do not edit',
    'by hand (the conclusions are `conclusions.md`, included below). Mean ± standard deviation over',
    'seeds (sample std, ddof = 1); a single seed shows no spread. Final is the last epoch, best the best',
    'epoch (the lab reports best). Head params count active weights of the MLP head, as the paper does;',
    'sparsity is over the sparse hidden layers; FLOPs count multiply-adds twice, forward pass, whole model.',
    "Train s is the sum of the epochs' training time (no evaluation; the runs that record compile_seconds",
    "compiled before epoch 1, so no compiling either); whole run s is the command's wall time (start-up,",
    'compilation, evaluation and checkpoints included); examples/s is over epochs 2 and on.',
    f'Timings: † marks an entry where other work used more than {BUSY_CORES} of a core on average during',
    "some seed's run (the runner measures it: `other_cores`), so its time is inflated; ‡ one where that was",
    'not measured (runs from before the runner did). Accuracies do not depend on it. Where some seeds ran',
    'on a GPU, a timing cell gives the CPU seeds\' figure, then "GPU" and the GPU seeds\' figure, with the',
    'number of seeds of each in brackets; the two are never averaged together.',
    '',
    '## How to run',
    '',
    '```',
    'python experiments/reproduce/run.py --list                                  # the studies and their runs',
    'python experiments/reproduce/run.py table1 --dataset=fashion_mnist --seeds=3  # resumable: skips finished runs',
    'python experiments/reproduce/report.py                                      # this file and the figures',
    '```',
    '',
    'To repeat runs without touching the committed results, give the runner a scratch results folder, e.g.',
    "`python experiments/reproduce/run.py table1 --dataset=fashion_mnist --seeds=1 --only='FC v2' "
    '--results_dir=/tmp/check`. Runs are deterministic on a given machine (the same seed gave bit-identical',
    'accuracies at different commits and on a clean clone); another machine may differ in float rounding.',
    '',
    f'Studies: {", ".join(f"`{s}`" for s in studies.STUDIES)}; datasets: `fashion_mnist`, `cifar10`, `cifar100`.',
    'Each finished run appends one line to `experiments/results/<dataset>.jsonl` with its key (the config',
    'fields it changes), seed, kernel init, accuracies and curves, accounting, timing, the commit and the',
    "machine. The init column says which kernel initialisation each entry's runs used.",
    'CIFAR-10 here is a JPEG copy of the images in the official binary layout (labels and splits exact,',
    'pixels JPEG-lossy; each results line names its data source); the official pixels may differ a little.',
    '',
  ]
  machines = sorted(
    {f'{r["machine"]}, {r["backend"]}' for d in data.values() for rows in d.values() for _, recs in rows for r in recs}
  )
  if machines:
    lines += ['Machines of the committed runs: ' + '; '.join(machines) + '.', '']
  lines += [
    '## Status',
    '',
    'Entries of each study with at least one finished run, and the fewest and most seeds an entry has.',
    '',
    '| dataset | ' + ' | '.join(studies.STUDIES) + ' |',
    '|---|' + '---|' * len(studies.STUDIES),
  ]
  for dataset, by_study in data.items():
    cells = []
    for study in studies.STUDIES:
      if study not in by_study:
        cells.append('–')
        continue
      rows = by_study[study]
      seeds = [len(recs) for _, recs in rows if recs]
      cells.append(f'{len(seeds)}/{len(rows)}, seeds {min(seeds)}–{max(seeds)}' if seeds else f'0/{len(rows)}')
    lines.append(f'| {dataset} | ' + ' | '.join(cells) + ' |')
  lines.append('')
  if 'cifar100' not in data:
    lines += [
      '## CIFAR-100: not run',
      '',
      'CIFAR-100 cannot be had on the machines these results come from (no internet, no local copy). Its',
      'config runs end to end under `tfds.testing.mock_data` in the tests (`tests/main_test.py`). Where tfds',
      'can download, run:',
      '',
      '```',
      'python experiments/reproduce/run.py table1 --dataset=cifar100 --seeds=3',
      '```',
      '',
    ]
  for dataset, by_study in data.items():
    lines += [f'## {DATASET_TITLES[dataset]}', '']
    for study, rows in by_study.items():
      if not any(recs for _, recs in rows):
        lines += [
          f'### {STUDY_TITLES[study]}',
          '',
          f'Not run yet: `python experiments/reproduce/run.py {study} --dataset={dataset} --seeds=3`.',
          '',
        ]
        continue
      lines += [f'### {STUDY_TITLES[study]}', '', STUDY_NOTES[study], '']
      lines += study_table(rows)
      lines += comparison_table(study, rows)
      if study == 'challenge':
        lines += _budget_shares(rows, 'FC v2')
      lines += _spot_check(dataset, rows)
      lines.append('')
      figure = None
      if study == 'table1':
        figure = f'curves_{dataset}.png'
        if figures:
          figure_curves(rows, os.path.join(out_dir, figure), f'{DATASET_TITLES[dataset]}: test accuracy per epoch')
      elif study == 'p_sweep':
        figure = f'p_sweep_{dataset}.png'
        if figures:
          figure_p_sweep(rows, os.path.join(out_dir, figure), f"{DATASET_TITLES[dataset]}: accuracy against p'")
      elif study == 'init':
        figure = f'init_{dataset}.png'
        if figures:
          figure_init(rows, os.path.join(out_dir, figure), f'{DATASET_TITLES[dataset]}: accuracy by kernel init')
      elif study == 'budget':
        figure = f'budget_{dataset}.png'
        if figures:
          figure_budget(rows, os.path.join(out_dir, figure), f'{DATASET_TITLES[dataset]}: matched budgets')
      elif study == 'dst':
        figure = f'dst_{dataset}.png'
        if figures:
          figure_dst(rows, os.path.join(out_dir, figure), f'{DATASET_TITLES[dataset]}: DST prune_grow pairs')
      if figure:
        lines += [f'![{study} {dataset}]({figure})', '']
      if study == 'dst':
        snaps = [r for e, recs in rows if (study, e.name) == studies.MASK_ENTRY for r in recs if r.get('mask_snapshot')]
        if snaps:
          snap = os.path.join(results_dir, snaps[0]['mask_snapshot'])
          figure = f'mask_{dataset}.png'
          if figures:
            figure_mask(
              snap,
              os.path.join(out_dir, figure),
              f'{dataset}: {studies.MASK_LAYER} mask, DST {studies.MASK_ENTRY[1]}, seed 0; '
              'rows and columns ordered by group',
            )
          lines += [
            f'Mask of `{studies.MASK_LAYER}` in the {studies.MASK_ENTRY[1]} run (seed 0), at the start and the end,',
            'inputs and outputs ordered by group so the dense diagonal blocks show:',
            '',
            f'![mask {dataset}]({figure})',
            '',
          ]
  conclusions = os.path.join(out_dir, 'conclusions.md')
  if os.path.exists(conclusions):
    with open(conclusions) as f:
      lines += [f.read().rstrip(), '']
  return '\n'.join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--results_dir', default=run.RESULTS_DIR)
  parser.add_argument('--out_dir', default=HERE, help='where README.md and the figures go')
  parser.add_argument('--check', action='store_true', help='compare README.md with the results; write nothing')
  args = parser.parse_args(argv)
  readme = os.path.join(args.out_dir, 'README.md')
  if args.check:
    text = build(args.results_dir, args.out_dir, figures=False)
    with open(readme) as f:
      same = f.read() == text
    print('README.md matches the results' if same else 'README.md differs from what the results give: rerun report.py')
    return 0 if same else 1
  import matplotlib  # noqa: PLC0415

  matplotlib.use('Agg')
  text = build(args.results_dir, args.out_dir)
  with open(readme, 'w') as f:
    f.write(text)
  print(f'wrote {readme}')
  return 0


if __name__ == '__main__':
  try:
    sys.exit(main())
  except run.RunnerError as e:  # a results line that cannot be read
    print(f'error: {e}', file=sys.stderr, flush=True)
    sys.exit(e.status)
