"""Concept geometry (seed 001): built-in and user concept lists (lists), words as single tokens (tokens),
the causal inner product and the cosine tables of embedding / unembedding differences (geometry), the
run over a model (run) and its result (result)."""
from .geometry import CausalInnerProduct, Geometry, concept_geometry, cosine_matrix, covariance, tied
from .lists import BUILTIN, builtin_names, load_json
from .result import ConceptsResult
from .run import concepts
from .tokens import token_pairs

__all__ = ["BUILTIN", "CausalInnerProduct", "ConceptsResult", "Geometry", "builtin_names", "concept_geometry",
           "concepts", "cosine_matrix", "covariance", "load_json", "tied", "token_pairs"]
