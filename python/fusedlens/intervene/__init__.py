"""Interventions: write hooks (hooks) and activation patching (patching) read out by the model's logits."""
from .hooks import Edit, Intervention, run_with
from .patching import PatchResult, patch

__all__ = ["Edit", "Intervention", "PatchResult", "patch", "run_with"]
