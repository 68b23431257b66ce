"""Framework-free mechanics the submission modules share.

Batch-size lookup, the plain `data_selection`, reading dropout from a
trial's hyperparameters, and a checkpointable holder for the plain values a
PyTorch optimizer state keeps. Importing it imports neither torch nor jax,
and it can be vendored beside a packed submission (`sfperf pack`).
"""

import functools
import inspect
from collections.abc import Iterator, Mapping
from typing import Any, Optional

from sfperf.api import spec


def batch_size_from(batch_sizes: Mapping[str, int], workload_name: str) -> int:
  """Returns `batch_sizes[workload_name]`, the entry's global batch size.

  Raises:
    ValueError: for a name not in the table; the runner then retries with
      the base workload name.
  """
  try:
    return batch_sizes[workload_name]
  except KeyError:
    raise ValueError(
      f'No batch size for workload {workload_name!r}; known: '
      f'{", ".join(sorted(batch_sizes))}.'
    ) from None


def data_selection(
  workload: spec.Workload,
  input_queue: Iterator[dict[str, spec.Tensor]],
  optimizer_state: spec.OptimizerState,
  current_param_container: spec.ParameterContainer,
  model_state: spec.ModelAuxiliaryState,
  hyperparameters: spec.Hyperparameters,
  global_step: int,
  rng: spec.RandomState,
) -> dict[str, spec.Tensor]:
  """Takes the next batch of the pre-shuffled training queue."""
  del workload, optimizer_state, current_param_container, model_state
  del hyperparameters, global_step, rng
  return next(input_queue)


def train_forward(
  workload: spec.Workload,
  params: spec.ParameterContainer,
  model_state: spec.ModelAuxiliaryState,
  batch: dict[str, spec.Tensor],
  rng: spec.RandomState,
  update_batch_norm: bool = True,
  **model_fn_kwargs: Any,
) -> tuple[spec.Tensor, spec.ModelAuxiliaryState]:
  """`workload.model_fn` in TRAIN mode on a training batch.

  `model_fn_kwargs` are further `model_fn` arguments (`dropout_rate`).

  Returns:
    (logits, the model_state `model_fn` returned).
  """
  return workload.model_fn(
    params=params,
    augmented_and_preprocessed_input_batch=batch,
    model_state=model_state,
    mode=spec.ForwardPassMode.TRAIN,
    rng=rng,
    update_batch_norm=update_batch_norm,
    **model_fn_kwargs,
  )


def train_loss_terms(
  workload: spec.Workload,
  params: spec.ParameterContainer,
  model_state: spec.ModelAuxiliaryState,
  batch: dict[str, spec.Tensor],
  rng: spec.RandomState,
  label_smoothing: float,
  update_batch_norm: bool = True,
  **model_fn_kwargs: Any,
) -> tuple[dict[str, Any], spec.ModelAuxiliaryState]:
  """`train_forward`, then the workload's `loss_fn` on its logits.

  Returns:
    (the `loss_fn` output, with 'summed' and 'n_valid_examples', and the
    model_state `model_fn` returned).
  """
  logits_batch, new_model_state = train_forward(
    workload,
    params,
    model_state,
    batch,
    rng,
    update_batch_norm,
    **model_fn_kwargs,
  )
  loss_dict = workload.loss_fn(
    label_batch=batch['targets'],
    logits_batch=logits_batch,
    mask_batch=batch.get('weights'),
    label_smoothing=label_smoothing,
  )
  return loss_dict, new_model_state


def dropout_rate_of(hyperparameters: spec.Hyperparameters) -> Optional[float]:
  """The trial's dropout rate; None (workload default) if it has none."""
  return getattr(hyperparameters, 'dropout_rate', None)


@functools.cache
def model_fn_takes_dropout(workload_class: type) -> bool:
  """Whether the workload's `model_fn` has a `dropout_rate` argument.

  True under the v0.6 API; False under v0.5, whose runner sets dropout in
  `init_model_fn` instead.
  """
  parameters = inspect.signature(workload_class.model_fn).parameters
  return 'dropout_rate' in parameters


class StatefulDict(dict):
  """A dict with `state_dict`/`load_state_dict`, for plain values (counters,
  flags) that a PyTorch submission keeps in its optimizer state.

  AlgoPerf's PyTorch checkpointing calls `state_dict()` on every value of
  the optimizer-state dict when it saves, and `load_state_dict()` on every
  value when it resumes; an int or a bool has neither, so it would not be
  saved and `--resume_last_run` would crash. Put such values in one of
  these, under one key of the optimizer state.
  """

  def state_dict(self) -> dict[str, Any]:
    return dict(self)

  def load_state_dict(self, state: Mapping[str, Any]) -> None:
    if set(state) != set(self):
      raise KeyError(
        f'saved values {sorted(state)} do not match {sorted(self)}; the '
        'checkpoint is from another version of the submission'
      )
    self.update(state)
