"""Reading a jax.profiler trace folder: its complete events and its processes' names."""

import glob
import gzip
import json


def complete_events(trace_dir: str) -> tuple[list[dict], dict]:
  """(the complete events with a duration, pid -> process name) of the newest trace under
  `trace_dir` (the *.trace.json.gz that jax.profiler.trace writes)."""
  path = sorted(glob.glob(f'{trace_dir}/**/*.trace.json.gz', recursive=True))[-1]
  with gzip.open(path) as f:
    events = json.load(f)['traceEvents']
  names = {e['pid']: e['args']['name'] for e in events if e.get('ph') == 'M' and e.get('name') == 'process_name'}
  return [e for e in events if e.get('ph') == 'X' and 'dur' in e], names
