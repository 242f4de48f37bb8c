"""Interventions: write hooks (hooks), activation patching (patching) and patchscopes (patchscope)."""
from .hooks import Edit, Intervention, run_with
from .patching import PatchResult, patch
from .patchscope import PatchscopeResult, patchscope

__all__ = ["Edit", "Intervention", "PatchResult", "PatchscopeResult", "patch", "patchscope", "run_with"]
