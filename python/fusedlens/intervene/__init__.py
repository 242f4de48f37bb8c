"""Interventions: write hooks (hooks), activation patching (patching) and patchscopes (patchscope)."""
from .hooks import Edit, Intervention, parse_site, run_with
from .patching import KnockoutResult, PatchResult, knockout, patch
from .patchscope import PatchscopeResult, generate, patchscope

__all__ = ["Edit", "Intervention", "KnockoutResult", "PatchResult", "PatchscopeResult", "generate", "knockout", "patch", "parse_site",
           "patchscope", "run_with"]
