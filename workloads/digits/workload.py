"""The digits proxy: a small BatchNorm conv net on scikit-learn's digits.

The data are the 1797 8x8 handwritten digits that ship inside scikit-learn
(`sklearn.datasets.load_digits`), so nothing is downloaded. They are split
once, stratified by class, with a fixed seed (`SPLIT_SEED`):

- test: 600 images, then validation: 600 images from the remainder;
- train: the other 597 images;
- eval_train: the first min(600, 597) training images in split order, i.e.
  all of them (AlgoPerf sizes eval_train like validation).

Large held-out splits keep the accuracy resolution fine (1/600), so a
target set near the top of the baseline's range stays reachable.

Inputs are scaled by the training split's pixel mean and standard deviation.
Targets, budget, step hint and eval period are read from
`workloads/catalog/proxy.json`; see `workloads/digits/TARGET.md` for how the
targets were set. The data code (split, normalization, batch order) lives
in `base.py`, shared with the JAX version in `workload_jax.py`.
"""

from typing import Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sfperf.api import spec
from workloads.digits.base import (  # noqa: F401 (re-exported)
  DROPOUT_RATE,
  NUM_CLASSES,
  NUM_TEST,
  NUM_VALIDATION,
  SPLIT_SEED,
  DigitsBase,
  load_splits,
  split_indices,
  train_batch_indices,
)


class DigitsNet(nn.Module):
  """Two conv blocks with BatchNorm, then dropout and a linear head."""

  def __init__(self, dropout_rate: float = DROPOUT_RATE):
    super().__init__()
    self.conv1 = nn.Conv2d(1, 16, kernel_size=3, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(16)
    self.conv2 = nn.Conv2d(16, 32, kernel_size=3, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(32)
    self.dropout = nn.Dropout(dropout_rate)
    self.head = nn.Linear(32 * 4 * 4, NUM_CLASSES)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = F.relu(self.bn1(self.conv1(x)))
    x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
    return self.head(self.dropout(torch.flatten(x, 1)))


def _param_type(name: str, param: torch.Tensor) -> spec.ParameterType:
  if name.startswith('bn'):
    if name.endswith('weight'):
      return spec.ParameterType.BATCH_NORM_SCALE
    return spec.ParameterType.BATCH_NORM_BIAS
  if name.endswith('bias'):
    return spec.ParameterType.BIAS
  if param.dim() == 4:
    return spec.ParameterType.CONV_WEIGHT
  return spec.ParameterType.WEIGHT


def _set_batch_norm_updates(model: nn.Module, update: bool) -> None:
  """Freezes or restores BatchNorm running statistics (v0.6 semantics).

  Torch BatchNorm computes running = (1 - momentum) * running + momentum *
  batch, so momentum 0 leaves the statistics as they are while the layer
  still normalizes with batch statistics in train mode. The original momentum
  is kept in `momentum_backup` and restored when updates resume.
  """
  for module in model.modules():
    if not isinstance(module, nn.modules.batchnorm._BatchNorm):
      continue
    if not hasattr(module, 'momentum_backup'):
      module.momentum_backup = module.momentum
    module.momentum = module.momentum_backup if update else 0.0


class DigitsWorkload(DigitsBase):
  """AlgoPerf Workload interface over the digits data and `DigitsNet`."""

  def __init__(self, *args, **kwargs) -> None:
    super().__init__(*args, **kwargs)
    self._model: Optional[DigitsNet] = None

  def _to_framework(self, batch):
    """Images as [n, 1, 8, 8] float32 tensors, labels as int64."""
    converted = {key: torch.from_numpy(value) for key, value in batch.items()}
    converted['inputs'] = converted['inputs'].unsqueeze(1)
    return converted

  # Model.

  def is_output_params(self, param_key: spec.ParameterKey) -> bool:
    return param_key in ('head.weight', 'head.bias')

  def init_model_fn(self, rng: spec.RandomState) -> spec.ModelInitState:
    """Builds `DigitsNet` with torch seeded from `rng[0]`."""
    torch.random.manual_seed(int(np.asarray(rng).ravel()[0]))
    model = DigitsNet()
    self._model = model
    named = dict(model.named_parameters())
    self._param_shapes = {
      name: spec.ShapeTuple(tuple(p.shape)) for name, p in named.items()
    }
    self._param_types = {
      name: _param_type(name, p) for name, p in named.items()
    }
    return model, None

  def model_fn(
    self,
    params: spec.ParameterContainer,
    augmented_and_preprocessed_input_batch: Dict[str, spec.Tensor],
    model_state: spec.ModelAuxiliaryState,
    mode: spec.ForwardPassMode,
    rng: spec.RandomState,
    update_batch_norm: bool,
    dropout_rate: Optional[float] = None,
  ) -> Tuple[spec.Tensor, spec.ModelAuxiliaryState]:
    """Forward pass; `dropout_rate=None` means the default, `DROPOUT_RATE`."""
    del model_state, rng
    model = params
    inner = model.module if hasattr(model, 'module') else model
    inner.dropout.p = DROPOUT_RATE if dropout_rate is None else dropout_rate
    if mode == spec.ForwardPassMode.TRAIN:
      model.train()
    else:
      model.eval()
    _set_batch_norm_updates(model, update_batch_norm)

    inputs = augmented_and_preprocessed_input_batch['inputs']
    with torch.set_grad_enabled(mode == spec.ForwardPassMode.TRAIN):
      logits = model(inputs)
    return logits, None

  def loss_fn(
    self,
    label_batch: spec.Tensor,
    logits_batch: spec.Tensor,
    mask_batch: Optional[spec.Tensor] = None,
    label_smoothing: float = 0.0,
  ) -> Dict[str, spec.Tensor]:
    """Softmax cross-entropy per example, masked; sums are per device.

    Returns {'summed': sum of masked losses, 'n_valid_examples': number of
    unmasked examples (a tensor, so submissions can all-reduce it),
    'per_example': masked per-example losses}.
    """
    per_example = F.cross_entropy(
      logits_batch,
      label_batch,
      reduction='none',
      label_smoothing=label_smoothing,
    )
    if mask_batch is None:
      n_valid = torch.tensor(float(len(per_example)), device=per_example.device)
    else:
      mask_batch = mask_batch.to(per_example.dtype)
      per_example = per_example * mask_batch
      n_valid = mask_batch.sum()
    return {
      'summed': per_example.sum(),
      'n_valid_examples': n_valid,
      'per_example': per_example,
    }

  def _eval_batch(self, params, model_state, batch, rng):
    logits, _ = self.model_fn(
      params,
      batch,
      model_state,
      spec.ForwardPassMode.EVAL,
      rng,
      update_batch_norm=False,
    )
    weights = batch['weights']
    losses = self.loss_fn(batch['targets'], logits, weights)
    correct = (logits.argmax(dim=-1) == batch['targets']).float()
    return (
      losses['summed'],
      (correct * weights).sum(),
      losses['n_valid_examples'],
    )
