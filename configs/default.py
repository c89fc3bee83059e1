"""Every config field, with its default, meaning and unit. Other configs import this.

Defaults follow ../shared/PAPER.md: G2GNet with mixer grouping, G = 8, p = 1, p' = 0.15
(74.4% sparse), a 4x4 patch-conv front end with 32 channels, 3 hidden layers of 1024,
Adam 1e-3 with L2 1e-4, batch 256, 30 epochs, cosine schedule.

Rows of the paper's main table, selected with `--config=configs/<dataset>.py:<row>`:
  g2g (mixer, the default), g2g_index, g2g_random, er, fc_v1 (dense, width matched to
  G2GNet's active parameters, computed), fc_v2 (dense, same width).
"""

import ml_collections

ROWS = {
  'g2g': {'connectivity.kind': 'g2g', 'connectivity.grouping': 'mixer'},
  'g2g_mixer': {'connectivity.kind': 'g2g', 'connectivity.grouping': 'mixer'},
  'g2g_index': {'connectivity.kind': 'g2g', 'connectivity.grouping': 'index'},
  'g2g_random': {'connectivity.kind': 'g2g', 'connectivity.grouping': 'random'},
  'er': {'connectivity.kind': 'er'},
  'fc_v1': {'connectivity.kind': 'dense', 'model.width_rule': 'match_g2g_params'},
  'fc_v2': {'connectivity.kind': 'dense'},
}


def get_config(row: str = 'g2g') -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0  # int: the one seed of params, masks, shuffling and augmentation
  # Independent replicas trained in one program, vmapped: seeds seed .. seed + num_seeds - 1.
  # Pays on an accelerator; on a CPU, run seeds as separate processes (experiments/reproduce).
  c.num_seeds = 1
  c.num_epochs = 30  # epochs: passes over the training set
  c.batch_size = 256  # examples per optimizer step, over all devices
  # Slices of a batch whose gradients are summed one at a time: the same step up to rounding,
  # faster on a CPU for models with large activations (the Mixer: experiments/bench/README.md).
  c.num_microbatches = 1
  c.eval_batch_size = 1000  # examples per evaluation step, over all devices
  c.eval_every_epochs = 1  # epochs between test-set evaluations (the last epoch always)
  c.checkpoint_every_epochs = 1  # epochs between checkpoints (the end always saves)
  c.log_every_steps = 50  # steps between progress updates and non-finite-loss checks
  c.halt_after_steps = 0  # steps: save and stop once the run reaches this step; 0 = never
  c.num_devices = 0  # devices in the data-parallel mesh; 0 = all local devices
  c.progress = 'auto'  # 'auto' (bar on a terminal, else lines) | 'bar' | 'lines' | 'none'
  # 'steps': one jitted call per step, batches gathered on the host; 'scan': the dataset
  # stays on the device and one call runs a chunk of steps (lax.scan; the chunk is the largest
  # divisor of the epoch's steps up to log_every_steps: 39 for Fashion-MNIST); 'auto':
  # steps on a CPU, scan on GPU / TPU (experiments/bench/README.md).
  c.loop = 'auto'

  c.data = ml_collections.ConfigDict()
  c.data.name = 'fashion_mnist'  # 'fashion_mnist' | 'cifar10' | 'cifar100' | 'synthetic'
  c.data.source = 'auto'  # 'auto' (tfds prepared > local files > tfds download) | 'tfds' | 'local' | 'synthetic'
  c.data.dir = ''  # root of local official-format copies; '' = ~/.cache/g2g_jax
  c.data.tfds_data_dir = ''  # tfds data dir; '' = tfds' default
  c.data.download = True  # let 'auto' download through tfds when the network answers
  c.data.augment = 'auto'  # 'auto' (crop+flip for CIFAR, none for Fashion-MNIST) | 'none' | 'crop_flip'
  c.data.crop_padding = 4  # pixels of zero padding around a random crop
  c.data.synthetic_num_train = 512  # examples, synthetic data only
  c.data.synthetic_num_test = 256  # examples, synthetic data only
  c.data.synthetic_image_size = 28  # pixels per side, synthetic data only
  c.data.synthetic_channels = 1  # synthetic data only
  c.data.synthetic_num_classes = 10  # synthetic data only

  c.model = ml_collections.ConfigDict()
  c.model.kind = (
    'g2gnet'  # 'g2gnet' (patch conv + MLP head, the paper's) | 'mixer' (MLP-Mixer; configs/cifar10_mixer.py)
  )
  c.model.patch_grid = 4  # patches per image side (4 -> 7x7 patches of 28x28, 8x8 of 32x32)
  c.model.patch_channels = 32  # conv channels per patch; features = patch_grid**2 * this
  c.model.feature_order = 'patch_major'  # 'patch_major' (index = patch*C + c) | 'channel_major'
  c.model.hidden_width = 1024  # neurons per hidden layer
  c.model.num_hidden = 3  # hidden (sparse) layers; the output layer is always dense
  # 'fixed' | 'match_g2g_params' (FC v1: dense, as many head params as G2G's expected count;
  # G2GNet: hidden_width; the Mixer: the MLPs that connectivity.sparse_kernels names, narrowed alike)
  c.model.width_rule = 'fixed'
  c.model.kernel_init = 'torch'  # 'torch' (U(+-1/sqrt(fan_in)), the lab's) | 'lecun_normal' | 'he_normal'
  c.model.mixer_blocks = 2  # mixer only: blocks of token mixing then channel mixing
  c.model.mixer_channels = 128  # mixer only: channels per token (patch_grid**2 tokens)
  c.model.mixer_tokens_mlp = 64  # mixer only: hidden width of the token-mixing MLPs
  c.model.mixer_channels_mlp = 256  # mixer only: hidden width of the channel-mixing MLPs

  c.connectivity = ml_collections.ConfigDict()
  c.connectivity.kind = 'g2g'  # 'g2g' | 'er' (unstructured, same density) | 'dense'
  c.connectivity.grouping = 'mixer'  # 'mixer' | 'index' | 'random' (g2g only)
  c.connectivity.num_groups = 8  # G: groups per side of each sparse layer
  c.connectivity.p_intra = 1.0  # p: edge probability inside a group, in [0, 1]
  c.connectivity.p_inter = 0.15  # p': edge probability between groups, in [0, 1]
  c.connectivity.inter = 'bernoulli'  # 'bernoulli' (scattered, the paper's) | 'tiles' (blocks; fast path, g2g only)
  c.connectivity.tile_size = (
    0  # neurons per tile side, inter = 'tiles'; 0 = one tile per group side (small tiles are slow on a CPU)
  )
  c.connectivity.tile_density = 1.0  # edges present inside an inter tile, (0, 1]; < 1 leaves DST room to grow
  # Which kernels are sparse: an fnmatch pattern over '/'-joined param paths; '' = the model's
  # own (G2GNet: 'head/hidden_*/kernel', the Mixer: 'block_*/*_mlp/Dense_*/kernel').
  c.connectivity.sparse_kernels = ''

  # Dynamic sparse training (g2g_jax/rewiring.py): off unless prune and grow are both set.
  c.rewiring = ml_collections.ConfigDict()
  c.rewiring.prune = 'none'  # 'none' | 'magnitude' (SET) | 'random' | 'hebbian' | 'mixed' (thirds: mag, rand, hebb)
  c.rewiring.grow = 'none'  # 'none' | 'random' | 'hebbian' | 'gradient' (RigL: largest dense-gradient magnitude)
  c.rewiring.fraction = 0.1  # share of each sparse layer's active edges pruned (and grown) per update, (0, 1]
  c.rewiring.fraction_schedule = 'constant'  # 'constant' | 'cosine' (decays to 0 at rewire_end_steps, as RigL)
  c.rewiring.rewire_every_steps = 1000  # optimizer steps between mask updates
  c.rewiring.rewire_start_steps = 0  # first step at which a mask update may run
  c.rewiring.rewire_end_steps = 0  # last step at which a mask update may run; 0 = end of training
  c.rewiring.candidates = 'all'  # growth among 'all' absent edges | 'same_kind' (intra for intra, inter for inter)
  c.rewiring.hebbian_batches = 1  # the Hebbian / gradient score averages over this many latest batches
  c.rewiring.reset_optimizer_state = True  # zero the optimizer moments of pruned and grown entries

  c.optim = ml_collections.ConfigDict()
  c.optim.optimizer = 'adam'  # 'adam' | 'sgd' (momentum b1)
  c.optim.learning_rate = 1e-3  # peak learning rate
  c.optim.weight_decay = 1e-4  # L2 coefficient added to the gradient (torch Adam style)
  c.optim.schedule = 'cosine'  # 'cosine' (per step, to 0 at the end) | 'constant'
  c.optim.warmup_steps = 0  # optimizer steps of linear warm-up
  c.optim.b1 = 0.9  # Adam beta1 / SGD momentum
  c.optim.b2 = 0.999  # Adam beta2
  c.optim.eps = 1e-8  # Adam epsilon

  apply_row(c, row)
  return c


def apply_row(config: ml_collections.ConfigDict, row: str) -> ml_collections.ConfigDict:
  """Sets the fields that make one row of the paper's main table."""
  if row not in ROWS:
    raise ValueError(f'config row {row!r}: expected one of {sorted(ROWS)}')
  for path, value in ROWS[row].items():
    section, field = path.split('.')
    config[section][field] = value
  return config
