"""Loss terms beyond the model's own, by name (config.losses): term.py is their contract,
objective.py what the train step does with them. Importing this package registers the
built-in terms."""
# pylint: disable=unused-import  (each import registers its term by name)
from convae_jax.losses import adversarial, lpips
from convae_jax.losses.objective import Objective, adaptive_weight
from convae_jax.losses.term import TERMS, LossTerm, TermInputs
