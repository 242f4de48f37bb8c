"""Interventions: write hooks (hooks), activation patching (patching), attribution patching
(attribution, with its exact check in verify) and patchscopes (patchscope)."""
from .attribution import AttributionResult, attribution_patch
from .hooks import Edit, Intervention, parse_site, run_with
from .patching import KnockoutResult, PatchResult, knockout, patch
from .patchscope import PatchscopeResult, generate, patchscope

__all__ = ["AttributionResult", "Edit", "Intervention", "KnockoutResult", "PatchResult", "PatchscopeResult",
           "attribution_patch", "generate", "knockout", "patch", "parse_site", "patchscope", "run_with"]
