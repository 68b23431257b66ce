"""AlgoPerf submission: Schedule-Free AdamW in its current form, self-tuning.

A thin adapter from the v0.6 submission API to `ScheduleFreeAdamW` (the
paper and `schedulefree` package form) with the fixed hyperparameters of the
v0.6 `schedule_free_adamw_v2` self-tuning entry, except that the Adam bias
correction sits in the denominator, as in the package (set
`HPARAMS['bias_correction'] = 'step_size'` for v2's).

Train/eval contract. The model holds y while training and x while being
evaluated: `update_params` switches the optimizer to train mode first
(x -> y), and `prepare_for_eval` switches it to eval mode (y -> x), so the
evaluator and the checkpoints see x.

This needs AlgoPerf v0.6 or later. A v0.5 runner has no `prepare_for_eval`
and would evaluate y, not x: `init_optimizer_state` raises where the API has
no `prepare_for_eval` (`algorithmic_efficiency`), and `update_params` raises
when it finds an eval that was not prepared (a runner following v0.5 rules
with a newer API, such as `sfperf run --benchmark=v0.5`).

BatchNorm. The gradient is taken at y with `update_batch_norm=False` (v0.6
semantics: BN normalizes with batch statistics but its running statistics
stay frozen), and the running statistics are refreshed at x by a no-grad
TRAIN-mode forward with `update_batch_norm=True` on the step's batch, every
`BN_REFRESH_PERIOD` steps (the v2 self-tuning entry's schedule), and at the
first step after each eval, where the parameters already hold x and the
refresh needs no switch. An eval therefore uses statistics of x from at
most `BN_REFRESH_PERIOD - 1` steps before. Refreshing inside the step keeps
`prepare_for_eval` to one switch and needs no stored training batches
(`data_selection` may not change the optimizer state, and keeping many
batches would cost memory on large workloads). A refresh away from an eval
costs one extra forward and two switches, each rounding y by about one unit
in the last place.
"""

from typing import Any, Optional

import torch

from sfperf import submission_utils
from sfperf.api import spec
from sfperf.optim import ScheduleFreeAdamW
from sfperf.submission_utils import (
  StatefulDict,
  dropout_rate_of,
  train_forward,
  train_loss_terms,
)
from sfperf.torch_submission_utils import global_mean_loss

HPARAMS = {
  'learning_rate': 0.0025,
  'one_minus_beta1': 0.1,
  'beta2': 0.9955159689799007,
  'weight_decay': 0.08121616522670176,
  'warmup_factor': 0.02,
  'weight_lr_power': 2,
  'label_smoothing': 0.2,
  'r': 0.0,
  'bias_correction': 'denominator',
}

# The v2 entry warms up over warmup_factor * step_hint * 0.75 steps.
WARMUP_STEP_HINT_FRACTION = 0.75
# BatchNorm statistics are refreshed at x on steps divisible by this.
BN_REFRESH_PERIOD = 3

# The v2 self-tuning entry's global batch sizes.
_BATCH_SIZES = {
  'criteo1tb': 262_144,
  'fastmri': 16,
  'imagenet_resnet': 1024,
  'imagenet_vit': 1024,
  'librispeech_conformer': 224,
  'librispeech_deepspeech': 128,
  'ogbg': 512,
  'wmt': 128,
  'finewebedu_lm': 64,
  # Local proxy workloads fall back to this entry through the runner.
  'mnist': 16,
  'imagenet_resnet_gelu': 512,
  'imagenet_resnet_silu': 512,
}


def get_batch_size(workload_name: str) -> int:
  """Returns the v2 entry's global batch size for `workload_name`.

  Raises:
    ValueError: for a name not in the table; the runner then retries with
      the base workload name.
  """
  return submission_utils.batch_size_from(_BATCH_SIZES, workload_name)


def warmup_steps_for(step_hint: int) -> int:
  """The v2 entry's warmup length: int(0.02 * step_hint * 0.75)."""
  return int(HPARAMS['warmup_factor'] * step_hint * WARMUP_STEP_HINT_FRACTION)


def has_batch_norm(model: torch.nn.Module) -> bool:
  """Whether a module keeps running statistics (BatchNorm-like layers).

  Looks for a `running_mean` tensor, so custom BatchNorm classes count and
  InstanceNorm layers, whose `running_mean` is None, do not.
  """
  return any(
    isinstance(getattr(module, 'running_mean', None), torch.Tensor)
    for module in model.modules()
  )


def init_optimizer_state(
  workload: spec.Workload,
  model_params: spec.ParameterContainer,
  model_state: spec.ModelAuxiliaryState,
  hyperparameters: spec.Hyperparameters,
  rng: spec.RandomState,
) -> spec.OptimizerState:
  """Builds the optimizer (in eval mode) with the fixed hyperparameters.

  Raises:
    RuntimeError: if the AlgoPerf API in use has no `prepare_for_eval`.
  """
  del model_state, hyperparameters, rng
  if not hasattr(spec, 'PrepareForEvalFn'):
    raise RuntimeError(
      'schedule_free_adamw_current needs AlgoPerf v0.6 or later: it hands '
      'x to the evaluator in prepare_for_eval, which this API does not '
      'have, so evals would see y. Use the v1 entry '
      '(submissions/self_tuning/schedule_free_adamw) for v0.5.'
    )
  optimizer = ScheduleFreeAdamW(
    model_params.parameters(),
    lr=HPARAMS['learning_rate'],
    betas=(1.0 - HPARAMS['one_minus_beta1'], HPARAMS['beta2']),
    weight_decay=HPARAMS['weight_decay'],
    warmup_steps=warmup_steps_for(workload.step_hint),
    r=HPARAMS['r'],
    weight_lr_power=HPARAMS['weight_lr_power'],
    bias_correction=HPARAMS['bias_correction'],
  )
  # A StatefulDict, not a bare bool, so that the official runner can save
  # and resume it (it calls state_dict/load_state_dict on every value).
  return {
    'optimizer': optimizer,
    'model': StatefulDict(has_batch_norm=has_batch_norm(model_params)),
  }


def _dropout_kwargs(hyperparameters: spec.Hyperparameters) -> dict[str, Any]:
  """`dropout_rate` for `model_fn` when the hyperparameters set one.

  Self-tuning passes no hyperparameters, so the workload's default applies;
  a variant whose hyperparameters carry `dropout_rate` gets it passed, as
  v0.6 requires (the runner no longer applies it).
  """
  dropout_rate = dropout_rate_of(hyperparameters)
  return {} if dropout_rate is None else {'dropout_rate': dropout_rate}


def _check_eval_was_prepared(
  eval_results: list[tuple[int, dict[str, Any]]],
  global_step: int,
  optimizer: ScheduleFreeAdamW,
) -> None:
  """Raises if the eval just before this step ran without prepare_for_eval.

  An eval at this step that found the optimizer still in train mode saw y:
  the runner did not call `prepare_for_eval` (v0.5 rules).
  """
  if eval_results and eval_results[-1][0] == global_step:
    if optimizer.train_mode:
      raise RuntimeError(
        f'The eval at step {global_step} ran without prepare_for_eval, so '
        'it evaluated y instead of x. schedule_free_adamw_current needs a '
        'runner with AlgoPerf v0.6 rules (prepare_for_eval); for v0.5 use '
        'submissions/self_tuning/schedule_free_adamw.'
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
  train_state: Optional[dict[str, Any]] = None,
) -> spec.UpdateReturn:
  """One step: maybe a BatchNorm refresh at x, then a step from y.

  Returns:
    (optimizer_state, current_param_container in train mode (holding y),
    model_state from the training forward).
  """
  del current_params_types, loss_type, train_state
  optimizer = optimizer_state['optimizer']
  _check_eval_was_prepared(eval_results, global_step, optimizer)
  model_fn_kwargs = _dropout_kwargs(hyperparameters)
  batch_norm = optimizer_state['model']['has_batch_norm']

  # After an eval the parameters already hold x: refresh there for free.
  if batch_norm and (
    not optimizer.train_mode or global_step % BN_REFRESH_PERIOD == 0
  ):
    optimizer.eval()
    with torch.no_grad():
      _, model_state = train_forward(
        workload,
        current_param_container,
        model_state,
        batch,
        rng,
        update_batch_norm=True,
        **model_fn_kwargs,
      )

  optimizer.train()
  optimizer.zero_grad()
  loss_dict, new_model_state = train_loss_terms(
    workload,
    current_param_container,
    model_state,
    batch,
    rng,
    HPARAMS['label_smoothing'],
    # At y the running statistics stay as the refresh at x left them.
    update_batch_norm=not batch_norm,
    **model_fn_kwargs,
  )
  loss = global_mean_loss(loss_dict)
  loss.backward()
  optimizer.step()
  return optimizer_state, current_param_container, new_model_state


def prepare_for_eval(
  workload: spec.Workload,
  current_param_container: spec.ParameterContainer,
  current_params_types: spec.ParameterTypeTree,
  model_state: spec.ModelAuxiliaryState,
  hyperparameters: spec.Hyperparameters,
  loss_type: spec.LossType,
  optimizer_state: spec.OptimizerState,
  eval_results: list[tuple[int, dict[str, Any]]],
  global_step: int,
  rng: spec.RandomState,
) -> spec.UpdateReturn:
  """Moves the parameters to x for the evaluator (and checkpoints).

  One elementwise switch, timed by the runner. The BatchNorm statistics are
  those of the latest refresh at x (see the module docstring).
  """
  del workload, current_params_types, hyperparameters, loss_type
  del eval_results, global_step, rng
  optimizer_state['optimizer'].eval()
  return optimizer_state, current_param_container, model_state


data_selection = submission_utils.data_selection
