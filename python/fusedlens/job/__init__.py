"""The corpus job behind `fusedlens run`: one forward per batch, every site decoded once by the lens
kernel, and each registered analysis (analyses.ANALYSES) fed from that pass; checkpoints, per-token
records and the outputs a run leaves behind."""
from .corpus_job import RunConfig, run_corpus

__all__ = ["RunConfig", "run_corpus"]
