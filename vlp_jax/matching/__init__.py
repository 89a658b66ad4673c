"""Bipartite matching for set prediction."""
from vlp_jax.matching.hungarian import hungarian_match

__all__ = ["hungarian_match"]
