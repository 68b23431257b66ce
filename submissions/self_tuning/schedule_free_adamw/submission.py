"""AlgoPerf submission: the 2024 self-tuning winner, Schedule-Free AdamW.

A thin adapter from the v0.5 submission API to `ScheduleFreeAdamWV1`, with
the entry's fixed hyperparameters, batch sizes and divergence-reset
heuristic. The model holds x between steps, so evaluation sees x without a
`prepare_for_eval` hook (v0.5 had none).

Two settings of the published entry are left out because they had no
effect there: `dropout_rate` (0.1; self-tuning runs pass no hyperparameters,
so models keep their workload-default dropout, and this module passes no
`dropout_rate` to `model_fn`) and `conformer_bs` (192; `get_batch_size`
returns 224 for the Conformer).
"""

from typing import Any

from absl import logging

from sfperf import entry_2024, submission_utils
from sfperf.api import spec
from sfperf.divergence_reset import (  # noqa: F401 (re-exported)
  MINIMIZED_METRICS,
  RESET_MARGIN,
  RESET_MIN_EVALS,
  RESET_START_FRACTION,
  divergence_check_due,
  looks_diverged,
  should_reset,
)
from sfperf.optim import ScheduleFreeAdamWV1
from sfperf.submission_utils import StatefulDict
from sfperf.torch_submission_utils import closure_step

HPARAMS = entry_2024.SELF_TUNING_HPARAMS

_BATCH_SIZES = entry_2024.BATCH_SIZES


get_batch_size = entry_2024.get_batch_size
warmup_steps_for = entry_2024.self_tuning_warmup_steps


def init_optimizer_state(
  workload: spec.Workload,
  model_params: spec.ParameterContainer,
  model_state: spec.ModelAuxiliaryState,
  hyperparameters: spec.Hyperparameters,
  rng: spec.RandomState,
) -> spec.OptimizerState:
  """Builds the optimizer with the entry's fixed hyperparameters."""
  del model_state, hyperparameters, rng
  optimizer = ScheduleFreeAdamWV1(
    model_params.parameters(),
    lr=HPARAMS['learning_rate'],
    betas=(1.0 - HPARAMS['one_minus_beta1'], HPARAMS['beta2']),
    warmup_steps=warmup_steps_for(workload.step_hint),
    weight_decay=HPARAMS['weight_decay'],
    weight_lr_power=HPARAMS['weight_lr_power'],
    r=HPARAMS['r'],
    store_x0_on_cpu=True,
  )
  # The entry's values, grouped so that the official runner can checkpoint
  # them (the entry kept them as plain ints and bools beside the optimizer,
  # which made its runs impossible to resume). 'max_checked_eval_step'
  # counts evals (it is compared with len(eval_results)); 'has_forced_reset'
  # and 'first_eval' are never read, so repeated resets are possible.
  return {
    'optimizer': optimizer,
    'reset_check': StatefulDict(
      max_checked_eval_step=-1, has_forced_reset=False, first_eval=False
    ),
  }


def update_params(
  workload: spec.Workload,
  current_param_container: spec.ParameterContainer,
  current_params_types: spec.ParameterTypeTree,
  model_state: spec.ModelAuxiliaryState,
  hyperparameters: spec.Hyperparameters,
  batch: dict[str, spec.Tensor],
  loss_type: spec.LossType,
  optimizer_state: spec.OptimizerState,
  eval_results: list[tuple[int, dict[str, Any]]],
  global_step: int,
  rng: spec.RandomState,
) -> spec.UpdateReturn:
  """One training step: maybe the divergence reset, then one optimizer step.

  The loss is taken at y in TRAIN mode with update_batch_norm=True, so
  BatchNorm running statistics describe y while evaluation uses x (a known
  flaw of this entry, kept).

  Returns:
    (optimizer_state, current_param_container, model_state from the step).
  """
  del current_params_types, loss_type, hyperparameters
  optimizer = optimizer_state['optimizer']
  reset_check = optimizer_state['reset_check']

  reset, checked_eval_count = should_reset(
    eval_results,
    workload.target_metric_name,
    global_step,
    workload.step_hint,
    reset_check['max_checked_eval_step'],
  )
  reset_check['max_checked_eval_step'] = checked_eval_count
  if reset:
    logging.info(
      'Divergence reset at step %d: restoring the initial parameters and '
      'halving the learning rate.',
      global_step,
    )
    reset_check['has_forced_reset'] = True
    # In PyTorch workloads BatchNorm buffers live in the module, so dropping
    # model_state does not reset them; the entry does no more.
    model_state = None
    optimizer.reset()
    for group in optimizer.param_groups:
      group['lr'] = group['lr'] / 2.0

  current_param_container.train()
  new_model_state = closure_step(
    optimizer,
    workload,
    current_param_container,
    model_state,
    batch,
    rng,
    HPARAMS['label_smoothing'],
  )
  return optimizer_state, current_param_container, new_model_state


data_selection = submission_utils.data_selection
