"""Direct logit attribution (Elhage et al. 2021): each component's exact share of the logits
(attribution), `direct_logit_attribution()` over prompts (api), its result (result) and its part in the
corpus pass (corpus_pass). The components themselves are captured by core.components."""
from .api import direct_logit_attribution, parse_components
from .attribution import component_names
from .result import DLAResult

__all__ = ["DLAResult", "component_names", "direct_logit_attribution", "parse_components"]
