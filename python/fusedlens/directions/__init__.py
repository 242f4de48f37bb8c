"""Reading vectors from streamed class statistics (representation engineering, Zou et al. 2023): per-class
means, the pooled within-class scatter and the paired differences' second moment of every site in one
pass (`ClassStats`, on `probe.RidgeAccumulator`); difference-of-means, paired-difference PCA (RepE/LAT)
and ridge-regularised Fisher/LDA directions; held-out accuracy and AUROC; LAT scans; `directions()`."""
from .inputs import POSITIONS, read_pairs, split
from .result import FORMAT, DirectionsResult
from .api import directions
from .solve import KINDS, auroc, site_directions
from .stats import ClassStats, SiteStats

__all__ = ["FORMAT", "KINDS", "POSITIONS", "ClassStats", "DirectionsResult", "SiteStats", "auroc", "directions",
           "read_pairs", "site_directions", "split"]
