"""Rematerialisation policies by name (`config.remat_policy`), shared by all model families."""
from collections.abc import Callable

import jax

_POLICIES: dict[str, Callable | None] = {
    "none": None,  # no remat: keep every activation
    "full": jax.checkpoint_policies.nothing_saveable,  # recompute everything
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    "save_everything": jax.checkpoint_policies.everything_saveable,
}


def remat_policy_names() -> list[str]:
  return sorted(_POLICIES)


def uses_remat(name: str) -> bool:
  """Whether blocks are wrapped in `nn.remat` for `config.remat_policy=name`."""
  remat_policy(name)
  return name != "none"


def remat_policy(name: str) -> Callable | None:
  """The `jax.checkpoint` policy for `name`; raises ValueError on an unknown name."""
  if name not in _POLICIES:
    raise ValueError(f"unknown remat policy {name!r}; known: {remat_policy_names()}")
  return _POLICIES[name]
