"""FunctionsConfig re-exported from ``envs/config.py`` (where every env config lives, so no import cycle)."""
from orchestra_jax.envs.config import HELDOUT_DOMAINS, TRAIN_DOMAINS, FunctionsConfig  # noqa: F401
