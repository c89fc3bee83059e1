"""The Colab notebook runs top to bottom with SMOKE set, and draws its plots."""

import os
import re

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, 'experiments', 'notebooks', 'g2g_colab.ipynb')


def read():
  return nbformat.read(NOTEBOOK, as_version=4)


def test_notebook_is_saved_without_outputs():
  for cell in read().cells:
    if cell.cell_type == 'code':
      assert cell.outputs == [] and cell.execution_count is None, cell.source[:80]


@pytest.fixture(scope='module')
def executed():
  nb = read()
  os.environ['G2G_SMOKE'] = '1'  # the kernel inherits the environment
  try:
    NotebookClient(
      nb, timeout=300, kernel_name='python3', resources={'metadata': {'path': os.path.dirname(NOTEBOOK)}}
    ).execute()
  finally:
    del os.environ['G2G_SMOKE']
  return nb


def _text(cell):
  return ''.join(o.get('text', '') for o in cell.outputs if o.output_type == 'stream')


def test_notebook_runs_in_smoke_mode_and_draws_both_figures(executed):
  code = [c for c in executed.cells if c.cell_type == 'code']
  errors = [o for c in code for o in c.outputs if o.output_type == 'error']
  assert not errors, errors
  assert 'SMOKE=True' in ''.join(_text(c) for c in code)
  pngs = [c for c in code if any('image/png' in o.get('data', {}) for o in c.outputs)]
  assert len(pngs) == 2  # the learning curves and the masks


def test_notebook_trains_rewires_and_accounts(executed):
  out = ''.join(_text(c) for c in executed.cells if c.cell_type == 'code')
  assert 'static epoch 3: train loss' in out and 'DST epoch 3: train loss' in out
  # load_run gives back the trained state: it evaluates to the accuracy the run logged.
  logged = re.search(r'static epoch 3: train loss \S+, test accuracy (\S+)', out).group(1)
  assert f'loaded state at step 24: test accuracy {logged}' in out
  assert 'rewired, edges pruned and regrown per layer' in out
  assert 'sparsity 56.10%' in out  # the smoke config: G = 4, p' = 0.25 on 32-wide layers
  assert 'head params (active): 2,224' in out
