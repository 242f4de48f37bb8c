"""Direct logit attribution (seed 004): components captured in one forward (components), their exact
shares of the logits (attribution), the run over prompts (run) and its result (result)."""
from .attribution import component_names
from .components import ComponentCapture, Components
from .result import DLAResult
from .run import dla

__all__ = ["ComponentCapture", "Components", "DLAResult", "component_names", "dla"]
