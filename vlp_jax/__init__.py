"""vlp_jax: vision-language pretraining in JAX/Flax."""
