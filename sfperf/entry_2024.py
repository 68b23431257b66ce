"""Published constants of the 2024 Schedule-Free AdamW AlgoPerf entries.

One copy of the numbers that the PyTorch and JAX versions of the self-tuning
and externally tuned entries share (SCHEDULE_FREE.md sections 4.1 and 4.2),
so that a correction lands in all four at once.
"""

from sfperf import submission_utils

# Self-tuning: fixed hyperparameters (the entry's module-level HPARAMS).
SELF_TUNING_HPARAMS = {
  'learning_rate': 0.0025,
  'one_minus_beta1': 0.1,
  'beta2': 0.9955159689799007,
  'weight_decay': 0.08121616522670176,
  'warmup_factor': 0.02,
  'weight_lr_power': 2,
  'label_smoothing': 0.2,
  'r': 0.75,
}

# Self-tuning warms up over warmup_factor * step_hint * 0.75 steps.
SELF_TUNING_WARMUP_STEP_HINT_FRACTION = 0.75

# External tuning: averaging weights w_k = (k + 1)^r * lr_max^power with the
# published class's defaults; the entry never passes r, so r is 0.75 too.
EXTERNAL_AVERAGING_POWER_R = 0.75
EXTERNAL_WEIGHT_LR_POWER = 2

EPS = 1e-8

# Global batch sizes of both entries. Names not listed raise ValueError in
# get_batch_size, and the runner retries with the base workload name.
BATCH_SIZES = {
  'criteo1tb': 262_144,
  'fastmri': 16,
  'imagenet_resnet': 1024,
  'imagenet_vit': 1024,
  'librispeech_conformer': 224,
  'librispeech_deepspeech': 128,
  'ogbg': 512,
  'wmt': 128,
  # Local proxy workloads fall back to this entry through the runner.
  'mnist': 16,
  'imagenet_resnet_gelu': 512,
  'imagenet_resnet_silu': 512,
}

# External tuning: label smoothing when a search-space point sets none.
DEFAULT_LABEL_SMOOTHING = 0.0


def get_batch_size(workload_name: str) -> int:
  """Returns the entries' global batch size for `workload_name`.

  Raises:
    ValueError: for a name not in the entries' table; the runner then
      retries with the base workload name.
  """
  return submission_utils.batch_size_from(BATCH_SIZES, workload_name)


def self_tuning_warmup_steps(step_hint: int) -> int:
  """The self-tuning entry's warmup length: int(0.02 * step_hint * 0.75)."""
  # Same floating-point order as the entry, which decides the int() cut.
  return int(
    SELF_TUNING_HPARAMS['warmup_factor']
    * step_hint
    * SELF_TUNING_WARMUP_STEP_HINT_FRACTION
  )


def external_warmup_steps(hyperparameters, step_hint: int) -> int:
  """The external entry's warmup length: int(warmup_factor * step_hint)."""
  return int(hyperparameters.warmup_factor * step_hint)


def label_smoothing_of(hyperparameters) -> float:
  """A trial's label smoothing, or DEFAULT_LABEL_SMOOTHING if it has none."""
  return getattr(hyperparameters, 'label_smoothing', DEFAULT_LABEL_SMOOTHING)
