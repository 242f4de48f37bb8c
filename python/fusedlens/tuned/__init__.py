"""The tuned lens (Belrose et al.): per-site affine translators, their training with the fused KL loss,
and the held-out comparison with the logit lens."""
from .lens import TunedLens, standard_sites

__all__ = ["TunedLens", "standard_sites"]
