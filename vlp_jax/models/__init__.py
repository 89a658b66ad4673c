"""Model families: each one a config, a module, an objective and evaluators (see `registry`)."""
from vlp_jax.models.registry import (Evaluator, ModelFamily, TrainableModel, family_names,
                                     get_family, register_family)

__all__ = ["Evaluator", "ModelFamily", "TrainableModel", "family_names", "get_family",
           "register_family"]
