"""AlgoPerf submission: the 2024 externally tuned Schedule-Free AdamW in JAX.

The entry's math (`schedule_free_adamw_v1`, bfloat16 v, decay at x) with
the learning rate, betas, weight decay, warmup, label smoothing and dropout
of each trial (search space:
`tuning_search_spaces/schedule_free_adamw_external.json`), on the v0.6 JAX
data layout: one `jax.jit` train step over a 1-D device mesh with axis
'batch', parameters and optimizer state replicated, the global batch
sharded along its first dimension. The parameters hold x between steps, so
evaluation sees x without a `prepare_for_eval` hook.

Unlike the self-tuning entry: no divergence reset (so no host copy of the
initial parameters), warmup over int(warmup_factor * step_hint) steps
without the 0.75 factor, label smoothing from the trial (0.0 if absent).

The averaging weights use r = 0.75 and weight_lr_power = 2: the published
external module passes neither, so its optimizer class's defaults apply,
and in that file they are 0.75 and 2 (read from the entry's
`submission.py` in facebookresearch/schedule_free, `schedulefree/algoperf/
external_tuning/schedule_free_adamw/`). This matches the PyTorch external
submission of this project.

Dropout: the v0.6 API takes it as a `model_fn` argument, so the trial's
`dropout_rate` is passed there when the search-space point has one and the
workload's `model_fn` accepts it; otherwise the workload default applies.
"""

from typing import Any

import jax

from sfperf import entry_2024, jax_submission_utils, submission_utils
from sfperf.api import spec
from sfperf.jax_submission_utils import (
  OptimizerSettings,
  check_batch_divisible,
)
from sfperf.submission_utils import dropout_rate_of, model_fn_takes_dropout

# Averaging weights w_k = (k + 1)^r * lr_max^weight_lr_power; the published
# class's defaults (see the module docstring).
AVERAGING_POWER_R = entry_2024.EXTERNAL_AVERAGING_POWER_R
WEIGHT_LR_POWER = entry_2024.EXTERNAL_WEIGHT_LR_POWER
EPS = entry_2024.EPS

DEFAULT_LABEL_SMOOTHING = entry_2024.DEFAULT_LABEL_SMOOTHING

_BATCH_SIZES = entry_2024.BATCH_SIZES


get_batch_size = entry_2024.get_batch_size
warmup_steps_for = entry_2024.external_warmup_steps
label_smoothing_of = entry_2024.label_smoothing_of


def settings_for(
  hyperparameters: spec.Hyperparameters, step_hint: int
) -> OptimizerSettings:
  """The optimizer settings of one trial."""
  return OptimizerSettings(
    learning_rate=float(hyperparameters.learning_rate),
    warmup_steps=warmup_steps_for(hyperparameters, step_hint),
    b1=1.0 - hyperparameters.one_minus_beta1,
    b2=float(hyperparameters.beta2),
    eps=EPS,
    weight_decay=float(hyperparameters.weight_decay),
    r=AVERAGING_POWER_R,
    weight_lr_power=WEIGHT_LR_POWER,
  )


def init_optimizer_state(
  workload: spec.Workload,
  model_params: spec.ParameterContainer,
  model_state: spec.ModelAuxiliaryState,
  hyperparameters: spec.Hyperparameters,
  rng: spec.RandomState,
) -> spec.OptimizerState:
  """Builds the optimizer state from the trial's hyperparameters."""
  del model_state, rng
  settings = settings_for(hyperparameters, workload.step_hint)
  return jax_submission_utils.runner_state(
    {
      'optimizer_state': jax_submission_utils.init_state(
        settings, model_params
      ),
      'settings': settings,
    }
  )


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
  train_state: Any = None,
) -> spec.UpdateReturn:
  """One jitted training step, with the loss taken at y.

  The forward pass runs in TRAIN mode with update_batch_norm=True, so
  BatchNorm statistics describe y while evaluation uses x (a known flaw of
  the 2024 entries, kept).

  Raises:
    ValueError: if the global batch does not split evenly over the devices.

  Returns:
    (optimizer_state, new parameters x, new model_state).
  """
  del current_params_types, loss_type, eval_results, global_step
  del train_state
  check_batch_divisible(batch, jax.device_count())

  model_fn_options = ()
  dropout_rate = dropout_rate_of(hyperparameters)
  if dropout_rate is not None and model_fn_takes_dropout(type(workload)):
    model_fn_options = (('dropout_rate', float(dropout_rate)),)

  new_params, new_model_state = jax_submission_utils.train_step(
    workload,
    jax_submission_utils.entry_state(optimizer_state),
    float(label_smoothing_of(hyperparameters)),
    model_fn_options,
    current_param_container,
    model_state,
    batch,
    rng,
  )
  return optimizer_state, new_params, new_model_state


data_selection = submission_utils.data_selection
