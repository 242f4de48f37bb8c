"""Interventions: write hooks (hooks), activation patching (patching) and patchscopes (patchscope)."""
from .hooks import Edit, Intervention, run_with
from .patching import KnockoutResult, PatchResult, knockout, patch
from .patchscope import PatchscopeResult, generate, patchscope

__all__ = ["Edit", "Intervention", "KnockoutResult", "PatchResult", "PatchscopeResult", "generate", "knockout", "patch", "patchscope",
           "run_with"]
