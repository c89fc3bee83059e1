"""Where the compiled train step's time goes, by kind of op: bench.py's models, traced.

  python experiments/bench/profile_ops.py                      # dense and tiles, widths 1024 and 4096
  python experiments/bench/profile_ops.py --variants=tiles --widths=1024 --show='tile gathers'

For each width and variant (bench.py's models and batch), warms the jitted train step up,
then records `steps` steps with jax.profiler and sums the durations of the compiled
program's ops (XLA:CPU thunks, named after the HLO instructions of
`step.lower(...).compile().as_text()`) by kind:
  hidden matmuls   the sparse stack's dots, forward and backward (the work sparsity cuts);
  tile gathers     a tiled layer's gather of its input tiles and its backward gather;
  encoder          the patch conv, forward and backward, and the image's conversion;
  output layer     the dense output layer, forward and backward;
  model, other     bias adds, ReLUs and their gradients, bias gradients, sums;
  optimizer        Adam's moments and update, with the masks;
  kernel copies    XLA's copies of params before their in-place update;
  rest             the loss, the metrics and anything unmatched.
Thunks run concurrently on the host's threads, so the sum can exceed the step's wall time.
Also prints the hidden matmuls' rate: 6 x batch x computed hidden weights per step (the
forward dot and the backward's two), over their summed time. Last line: JSON.
"""

import collections
import json
import os
import re
import sys
import tempfile

import jax
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (its flags: --widths, --batch_size, --steps, --tile_size)
import traces  # noqa: E402

_VARIANTS = flags.DEFINE_list('variants', ['dense', 'tiles'], 'bench.py variants to trace.')
_SHOW = flags.DEFINE_string('show', '', 'Also list the ops of this kind, slowest first.')

KINDS = (
  'hidden matmuls',
  'tile gathers',
  'encoder',
  'output layer',
  'model, other',
  'optimizer',
  'kernel copies',
  'rest',
)


def parse_hlo(text: str) -> tuple[dict, dict]:
  """(instruction name -> its line, computation name -> its body) of an HLO module's text."""
  instructions, bodies, current = {}, {}, None
  for line in text.splitlines():
    head = re.match(r'\s*(?:ENTRY )?%?([\w.\-]+) \(.*\{\s*$', line)
    if head:
      current = head.group(1)
      bodies[current] = []
      continue
    m = re.match(r'\s*(?:ROOT )?%([\w.\-]+) = ', line)
    if m:
      instructions.setdefault(m.group(1), line.strip())
      if current is not None:
        bodies[current].append(line)
  return instructions, {k: '\n'.join(v) for k, v in bodies.items()}


def kind_of(line: str, instructions: dict, bodies: dict) -> str:
  """The kind (KINDS) of one HLO instruction of the train step; one without a source op
  (a layout copy XLA added) takes its first operand's."""
  if re.match(r'%[\w.\-]+ = \S+ copy\(%state_params', line):
    return 'kernel copies'
  if 'opt_state' in line or 'state_masks' in line or 'convert_power' in line:
    return 'optimizer'
  name = re.search(r'op_name="([^"]*)"', line)
  if name is None:
    operand = re.search(r' \w[\w\-]*\(%([\w.\-]+)', line)
    if operand and operand.group(1) in instructions:
      return kind_of(instructions[operand.group(1)], instructions, bodies)
  name = name.group(1) if name else ''
  called = re.search(r'calls=%([\w.\-]+)', line)
  body = bodies.get(called.group(1), '') if called else ''
  is_dot = ' dot(' in line or ' dot(' in body
  if '/head/hidden_' in name and is_dot:
    return 'hidden matmuls'
  if '/head/hidden_' in name and 'gather' in name:
    return 'tile gathers'
  if 'encoder' in name or 'batch__image' in line or 'convolution(' in body or 'encoder' in body:
    return 'encoder'
  if '/head/output' in name:
    return 'output layer'
  if 'G2GNet' in name:
    return 'model, other'
  return 'rest'


def op_durations(trace_dir: str) -> collections.Counter:
  """Microseconds per event name over a jax.profiler trace's complete events."""
  total = collections.Counter()
  for e in traces.complete_events(trace_dir)[0]:
    total[e['name']] += e['dur']
  return total


def profile(width: int, variant: str) -> dict:
  v = bench.linen_variant(bench.layer_config(width, variant))
  for _ in range(2):
    bench.time_round(v)
  with tempfile.TemporaryDirectory() as tmp:
    with jax.profiler.trace(tmp):
      wall = bench.time_round(v)
    durations = op_durations(tmp)
  instructions, bodies = parse_hlo(v['step'].lower(v['state'], v['batch']).compile().as_text())
  per_step = 1e3 * bench._STEPS.value  # microseconds summed over the steps -> ms per step
  kinds, shown = collections.Counter({k: 0.0 for k in KINDS}), []
  for name, us in durations.items():
    if name in instructions:
      kind = kind_of(instructions[name], instructions, bodies)
      kinds[kind] += us / per_step
      if kind == _SHOW.value:
        shown.append((us / per_step, instructions[name][:200]))
  weights = sum(
    p.size
    for path, p in jax.tree_util.tree_flatten_with_path(v['state'].params)[0]
    if 'hidden_' in jax.tree_util.keystr(path) and 'kernel' in jax.tree_util.keystr(path)
  )
  gflop = 6 * bench._BATCH.value * weights / 1e9
  return {
    'width': width,
    'variant': variant,
    'step_ms': wall * 1e3,
    'ops_ms': sum(kinds.values()),
    'kinds_ms': dict(kinds),
    'hidden_gflop': gflop,
    'hidden_gflops_per_s': gflop / (kinds['hidden matmuls'] / 1e3),
    'shown': sorted(shown, reverse=True),
  }


def main(argv):
  del argv
  rows = [profile(int(w), variant) for w in bench._WIDTHS.value for variant in _VARIANTS.value]
  print(f'{"ms per step":<16}' + ''.join(f'{r["variant"] + " " + str(r["width"]):>13}' for r in rows))
  print(f'{"step (traced)":<16}' + ''.join(f'{r["step_ms"]:13.2f}' for r in rows))
  print(f'{"ops summed":<16}' + ''.join(f'{r["ops_ms"]:13.2f}' for r in rows))
  for kind in KINDS:
    print(f'{kind:<16}' + ''.join(f'{r["kinds_ms"][kind]:13.2f}' for r in rows))
  print(f'{"matmul GFLOP/s":<16}' + ''.join(f'{r["hidden_gflops_per_s"]:13.1f}' for r in rows))
  for r in rows:
    for ms, line in r['shown']:
      print(f'{r["variant"]} {r["width"]}: {ms:7.3f} ms  {line}')
  print(json.dumps([{k: v for k, v in r.items() if k != 'shown'} for r in rows]))


if __name__ == '__main__':
  app.run(main)
