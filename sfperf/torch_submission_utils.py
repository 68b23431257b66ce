"""PyTorch mechanics the submission modules share: the DDP-aware mean loss.

Under DDP each process holds a slice of the global batch; the training loss
is the global sum over the global example count, so gradients are scaled as
for one large batch, as AlgoPerf's own baselines do.
"""

from typing import Any, Optional

import torch
import torch.distributed.nn as dist_nn

from sfperf.api import spec
from sfperf.submission_utils import train_loss_terms


def distributed() -> bool:
  """Whether a torch.distributed process group is initialized."""
  return torch.distributed.is_available() and torch.distributed.is_initialized()


def global_mean_loss(
  loss_dict: dict[str, Any], all_reduce: Optional[bool] = None
) -> torch.Tensor:
  """summed / n_valid_examples over the global batch, differentiably.

  Args:
    loss_dict: a workload's `loss_fn` output, with 'summed' and
      'n_valid_examples' for this process's slice of the batch.
    all_reduce: whether to sum both over processes first; None means
      `distributed()`.
  """
  summed_loss = loss_dict['summed']
  n_valid_examples = loss_dict['n_valid_examples']
  if all_reduce is None:
    all_reduce = distributed()
  if all_reduce:
    # Differentiable all-reduce. torch 2.13 marks this function deprecated
    # (FutureWarning); it is what the 2024 entries and AlgoPerf's baselines
    # call, so it stays until they move.
    summed_loss = dist_nn.all_reduce(summed_loss)
    n_valid_examples = dist_nn.all_reduce(n_valid_examples)
  return summed_loss / n_valid_examples


def closure_step(
  optimizer: torch.optim.Optimizer, *loss_args: Any, **loss_kwargs: Any
) -> spec.ModelAuxiliaryState:
  """`optimizer.step(closure)`, the closure's loss the global mean loss.

  For optimizers that evaluate the gradient at a point of their own (y of
  Schedule-Free) inside `step`. The closure zeroes the gradients, runs
  `train_loss_terms(*loss_args, **loss_kwargs)` and back-propagates
  `global_mean_loss` of it.

  Returns:
    The model_state of the closure's (last) forward pass.
  """
  new_model_state = None

  def closure() -> torch.Tensor:
    nonlocal new_model_state
    optimizer.zero_grad()
    loss_dict, new_model_state = train_loss_terms(*loss_args, **loss_kwargs)
    loss = global_mean_loss(loss_dict)
    loss.backward()
    return loss

  optimizer.step(closure)
  return new_model_state
