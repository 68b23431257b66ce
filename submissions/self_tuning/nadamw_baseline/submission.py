"""AlgoPerf's published self-tuning NAdamW baseline (PyTorch), our own code.

Fixed hyperparameters (`HPARAMS`), linear warmup then cosine decay over the
workload's step hint, the baseline's batch sizes. Used as the reference the
digits proxy's targets are set with, and as a comparison for Schedule-Free.
"""

import collections
import math
import os
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist

from sfperf import submission_utils
from sfperf.api import spec
from sfperf.submission_utils import train_loss_terms
from sfperf.torch_submission_utils import global_mean_loss

HPARAMS = collections.namedtuple(
  'Hyperparameters',
  [
    'dropout_rate',
    'learning_rate',
    'one_minus_beta1',
    'beta2',
    'weight_decay',
    'warmup_factor',
  ],
)(
  dropout_rate=0.1,
  learning_rate=0.0017486387539278373,
  one_minus_beta1=0.06733926164,
  beta2=0.9955159689799007,
  weight_decay=0.08121616522670176,
  warmup_factor=0.02,
)
EPS = 1e-8
# The self-tuning baseline trains without label smoothing.
LABEL_SMOOTHING = 0.0
# The first warmup step uses this fraction of the peak learning rate, as the
# baseline's torch LinearLR(start_factor=1e-10) does.
WARMUP_START_FACTOR = 1e-10

BATCH_SIZES = {
  'criteo1tb': 262_144,
  'fastmri': 32,
  'imagenet_resnet': 1024,
  'imagenet_resnet_silu': 512,
  'imagenet_resnet_gelu': 512,
  'imagenet_vit': 1024,
  'librispeech_conformer': 256,
  'librispeech_deepspeech': 256,
  'ogbg': 512,
  'wmt': 128,
  'mnist': 16,
}


def _ddp_active() -> bool:
  return (
    'LOCAL_RANK' in os.environ and dist.is_available() and dist.is_initialized()
  )


class NAdamW(torch.optim.Optimizer):
  r"""AdamW with a Nesterov-style first moment (NAdam, decoupled decay).

  With gradient g_t, step t >= 1, learning rate lr, decay wd:

    x <- x * (1 - lr * wd)
    m_t = beta1 * m_{t-1} + (1 - beta1) * g_t
    v_t = beta2 * v_{t-1} + (1 - beta2) * g_t^2
    n_t = beta1 * m_t + (1 - beta1) * g_t          (Nesterov look-ahead)
    x <- x - lr / (1 - beta1^t) * n_t / (sqrt(v_t / (1 - beta2^t)) + eps)

  State per parameter: 'step', 'exp_avg' (m), 'exp_avg_sq' (v).
  """

  def __init__(
    self,
    params,
    lr: float = 1e-3,
    betas: Tuple[float, float] = (0.9, 0.999),
    eps: float = EPS,
    weight_decay: float = 1e-2,
  ):
    if lr < 0.0:
      raise ValueError(f'learning rate must be >= 0, got {lr}')
    if eps < 0.0:
      raise ValueError(f'eps must be >= 0, got {eps}')
    for index, beta in enumerate(betas):
      if not 0.0 <= beta < 1.0:
        raise ValueError(f'betas[{index}] must be in [0, 1), got {beta}')
    if weight_decay < 0.0:
      raise ValueError(f'weight_decay must be >= 0, got {weight_decay}')
    defaults = {
      'lr': lr,
      'betas': betas,
      'eps': eps,
      'weight_decay': weight_decay,
    }
    super().__init__(params, defaults)

  @torch.no_grad()
  def step(self, closure=None):
    loss = None
    if closure is not None:
      with torch.enable_grad():
        loss = closure()
    for group in self.param_groups:
      beta1, beta2 = group['betas']
      lr = group['lr']
      for param in group['params']:
        if param.grad is None:
          continue
        if param.grad.is_sparse:
          raise RuntimeError('NAdamW does not support sparse gradients')
        grad = param.grad
        state = self.state[param]
        if not state:
          state['step'] = torch.tensor(0.0)
          state['exp_avg'] = torch.zeros_like(param)
          state['exp_avg_sq'] = torch.zeros_like(param)
        state['step'] += 1
        step = state['step'].item()
        exp_avg, exp_avg_sq = state['exp_avg'], state['exp_avg_sq']

        param.mul_(1.0 - lr * group['weight_decay'])
        exp_avg.lerp_(grad, 1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)

        nesterov = exp_avg.mul(beta1).add_(grad, alpha=1.0 - beta1)
        denom = (exp_avg_sq / (1.0 - beta2**step)).sqrt_().add_(group['eps'])
        param.addcdiv_(nesterov, denom, value=-lr / (1.0 - beta1**step))
    return loss


def warmup_cosine_factor(step: int, step_hint: int, warmup_factor: float):
  """Learning-rate multiplier of the `step`-th update (0-based).

  Linear warmup over int(warmup_factor * step_hint) steps from
  WARMUP_START_FACTOR to 1, then 0.5 * (1 + cos(pi * k / K)) for the k-th
  step after warmup, K = step_hint - warmup steps. Like the baseline's torch
  CosineAnnealingLR, the cosine is not clamped: past the step hint (which
  self-tuning budgets allow) the factor rises again.
  """
  warmup_steps = int(warmup_factor * step_hint)
  if step < warmup_steps:
    fraction = step / warmup_steps
    return WARMUP_START_FACTOR + (1.0 - WARMUP_START_FACTOR) * fraction
  cosine_steps = max(step_hint - warmup_steps, 1)
  return 0.5 * (1.0 + math.cos(math.pi * (step - warmup_steps) / cosine_steps))


class WarmupCosineSchedule:
  """Sets the optimizer's learning rate per step; checkpointable."""

  def __init__(self, optimizer, peak_lr, step_hint, warmup_factor):
    self.optimizer = optimizer
    self.peak_lr = peak_lr
    self.step_hint = step_hint
    self.warmup_factor = warmup_factor
    self.step_count = 0
    self._apply()

  def _apply(self) -> None:
    factor = warmup_cosine_factor(
      self.step_count, self.step_hint, self.warmup_factor
    )
    for group in self.optimizer.param_groups:
      group['lr'] = self.peak_lr * factor

  def step(self) -> None:
    self.step_count += 1
    self._apply()

  def state_dict(self) -> Dict[str, Any]:
    return {'step_count': self.step_count}

  def load_state_dict(self, state: Dict[str, Any]) -> None:
    self.step_count = int(state['step_count'])
    self._apply()


def init_optimizer_state(
  workload: spec.Workload,
  model_params: spec.ParameterContainer,
  model_state: spec.ModelAuxiliaryState,
  hyperparameters: spec.Hyperparameters,
  rng: spec.RandomState,
) -> spec.OptimizerState:
  """NAdamW with the baseline's fixed hyperparameters and its schedule."""
  del model_state, hyperparameters, rng
  optimizer = NAdamW(
    model_params.parameters(),
    lr=HPARAMS.learning_rate,
    betas=(1.0 - HPARAMS.one_minus_beta1, HPARAMS.beta2),
    eps=EPS,
    weight_decay=HPARAMS.weight_decay,
  )
  schedule = WarmupCosineSchedule(
    optimizer,
    HPARAMS.learning_rate,
    workload.step_hint,
    HPARAMS.warmup_factor,
  )
  return {'optimizer': optimizer, 'scheduler': schedule}


def update_params(
  workload: spec.Workload,
  current_param_container: spec.ParameterContainer,
  current_params_types: spec.ParameterTypeTree,
  model_state: spec.ModelAuxiliaryState,
  hyperparameters: spec.Hyperparameters,
  batch: Dict[str, spec.Tensor],
  loss_type: spec.LossType,
  optimizer_state: spec.OptimizerState,
  eval_results: List[Tuple[int, float]],
  global_step: int,
  rng: spec.RandomState,
  train_state: Optional[Dict[str, Any]] = None,
) -> spec.UpdateReturn:
  """One NAdamW step on the mean loss over the global batch."""
  del current_params_types, hyperparameters, loss_type, eval_results
  del train_state
  model = current_param_container
  model.train()
  optimizer_state['optimizer'].zero_grad()
  loss_dict, new_model_state = train_loss_terms(
    workload,
    model,
    model_state,
    batch,
    rng,
    LABEL_SMOOTHING,
    dropout_rate=HPARAMS.dropout_rate,
  )
  # Per-device sums become global sums only under a torchrun launch.
  loss = global_mean_loss(loss_dict, all_reduce=_ddp_active())
  loss.backward()
  optimizer_state['optimizer'].step()
  optimizer_state['scheduler'].step()

  if workload.metrics_logger is not None and (
    global_step <= 100 or global_step % 500 == 0
  ):
    with torch.no_grad():
      grad_norm = torch.linalg.vector_norm(
        torch.stack(
          [p.grad.norm() for p in model.parameters() if p.grad is not None]
        )
      )
    workload.metrics_logger.append_scalar_metrics(
      {'loss': loss.item(), 'grad_norm': grad_norm.item()}, global_step
    )
  return optimizer_state, model, new_model_state


def prepare_for_eval(
  workload: spec.Workload,
  current_param_container: spec.ParameterContainer,
  current_params_types: spec.ParameterTypeTree,
  model_state: spec.ModelAuxiliaryState,
  hyperparameters: spec.Hyperparameters,
  loss_type: spec.LossType,
  optimizer_state: spec.OptimizerState,
  eval_results: List[Tuple[int, float]],
  global_step: int,
  rng: spec.RandomState,
) -> spec.UpdateReturn:
  """Nothing to prepare: NAdamW evaluates the parameters it trains."""
  del workload, current_params_types, hyperparameters, loss_type
  del eval_results, global_step, rng
  return optimizer_state, current_param_container, model_state


def get_batch_size(workload_name: str) -> int:
  """The baseline's global batch size; ValueError for unknown workloads."""
  try:
    return BATCH_SIZES[workload_name]
  except KeyError:
    raise ValueError(f'Unsupported workload name: {workload_name}.') from None


data_selection = submission_utils.data_selection
