"""`python -m vlp_jax.convert` (see `vlp_jax.convert`)."""
import sys

from vlp_jax.convert import main

if __name__ == "__main__":
  sys.exit(main())
