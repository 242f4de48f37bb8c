"""Interventions: write hooks (hooks) and activation patching (patching) read out by the model's logits."""
from .hooks import Edit, Intervention, run_with

__all__ = ["Edit", "Intervention", "run_with"]
