"""Concept geometry (Park et al. 2024; Jiang et al. 2024): built-in and user concept lists (lists), words
as single tokens (tokens), the causal inner product and the cosine tables of embedding / unembedding
differences (geometry), `concept_geometry()` over a model (api) and its result (result)."""
from .api import concept_geometry
from .geometry import CausalInnerProduct, Geometry, cosine_matrix, covariance, geometry_tables, tied
from .lists import BUILTIN, builtin_names, load_json
from .result import ConceptsResult
from .tokens import token_pairs

__all__ = ["BUILTIN", "CausalInnerProduct", "ConceptsResult", "Geometry", "builtin_names", "concept_geometry",
           "cosine_matrix", "covariance", "geometry_tables", "load_json", "tied", "token_pairs"]
