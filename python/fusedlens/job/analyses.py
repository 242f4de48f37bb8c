"""The analyses `fusedlens run` feeds, in the order they see each batch. An analysis joins the corpus
pass by implementing core.analysis.CorpusAnalysis in its own package and being named here."""
from ..dla.corpus_pass import CorpusDLA
from ..lens.corpus_pass import CorpusLens
from ..probe.corpus_pass import CorpusProbes
from ..refine.corpus_pass import CorpusRefine, CorpusTokenCounts
from .records import CorpusRecords

ANALYSES = (CorpusLens, CorpusTokenCounts, CorpusRefine, CorpusDLA, CorpusProbes, CorpusRecords)
