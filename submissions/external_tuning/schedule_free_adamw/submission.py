"""AlgoPerf submission: the 2024 externally tuned Schedule-Free AdamW entry.

A thin adapter from the submission API to `ScheduleFreeAdamWV1`, taking the
learning rate, betas, weight decay, warmup, label smoothing and dropout from
each trial's hyperparameters (search space:
`tuning_search_spaces/schedule_free_adamw_external.json`). The model holds x
between steps, so evaluation sees x without a `prepare_for_eval` hook.

What sets it apart from the self-tuning entry: no divergence reset and so no
host copy x0 of the initial parameters; warmup over
int(warmup_factor * step_hint) steps, without the self-tuning 0.75 factor;
label smoothing from the hyperparameters, 0.0 when they have none. Like that
entry it keeps v in bfloat16, and it uses the same batch-size table.

The averaging weights use r = 0.75 and weight_lr_power = 2: the published
module leaves both to its optimizer class's defaults, and those defaults are
0.75 and 2 in this entry's file (the self-tuning file's class defaults to
r = 0 but passes 0.75 explicitly), so both 2024 entries average alike.

Dropout: the v0.5 runner read `dropout_rate` from the hyperparameters and
passed it to `init_model_fn`; the v0.6 API moved that argument to
`model_fn`, so under it this module passes `hyperparameters.dropout_rate` to
`model_fn` in every training step, which is the v0.6 equivalent of what the
v0.5 runner did. A v0.5 workload's `model_fn` has no such argument; it is
then left out, since the v0.5 runner applies the rate itself.
"""

from typing import Any

from sfperf import entry_2024, submission_utils
from sfperf.api import spec
from sfperf.optim import ScheduleFreeAdamWV1
from sfperf.submission_utils import dropout_rate_of, model_fn_takes_dropout
from sfperf.torch_submission_utils import closure_step

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


def init_optimizer_state(
  workload: spec.Workload,
  model_params: spec.ParameterContainer,
  model_state: spec.ModelAuxiliaryState,
  hyperparameters: spec.Hyperparameters,
  rng: spec.RandomState,
) -> spec.OptimizerState:
  """Builds the optimizer from the trial's hyperparameters."""
  del model_state, rng
  optimizer = ScheduleFreeAdamWV1(
    model_params.parameters(),
    lr=hyperparameters.learning_rate,
    betas=(1.0 - hyperparameters.one_minus_beta1, hyperparameters.beta2),
    eps=EPS,
    weight_decay=hyperparameters.weight_decay,
    weight_lr_power=WEIGHT_LR_POWER,
    warmup_steps=warmup_steps_for(hyperparameters, workload.step_hint),
    r=AVERAGING_POWER_R,
  )
  return {'optimizer': optimizer}


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
  """One optimizer step, with the loss taken at y.

  The forward pass runs in TRAIN mode with update_batch_norm=True, so
  BatchNorm running statistics describe y while evaluation uses x (a known
  flaw of the 2024 entries, kept).

  Returns:
    (optimizer_state, current_param_container, model_state from the step).
  """
  del current_params_types, loss_type, eval_results, global_step
  optimizer = optimizer_state['optimizer']
  label_smoothing = label_smoothing_of(hyperparameters)
  model_fn_options = {}
  if model_fn_takes_dropout(type(workload)):
    model_fn_options['dropout_rate'] = dropout_rate_of(hyperparameters)

  current_param_container.train()
  new_model_state = closure_step(
    optimizer,
    workload,
    current_param_container,
    model_state,
    batch,
    rng,
    label_smoothing,
    **model_fn_options,
  )
  return optimizer_state, current_param_container, new_model_state


data_selection = submission_utils.data_selection
