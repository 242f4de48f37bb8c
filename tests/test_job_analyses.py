"""job.analyses: every analysis registered with the corpus pass keeps additive sums behind one interface.

Fed the batches of a corpus in two halves by two instances, merged, each gives the state of one
instance fed every batch; a state saved and loaded into a fresh instance is the same state; and a
registered analysis brings its options into `fusedlens run`'s config."""
import dataclasses

import pytest
import torch

from fusedlens.core.analysis import CorpusAnalysis, CorpusBatch, CorpusPass
from fusedlens.core.capture import ResidualCapture
from fusedlens.data.corpus import iter_sequences
from fusedlens.data.windows import batched, pad_right
from fusedlens.job import RunConfig
from fusedlens.job.analyses import ANALYSES
from fusedlens.refine import TokenCounts
from fusedlens import ops


def _flat(state):
    """A state as a list of (path, value) leaves, tensors compared exactly."""
    if isinstance(state, dict):
        return [(f"{k}.{p}", v) for k in sorted(state, key=str) for p, v in _flat(state[k])]
    if isinstance(state, (list, tuple)):
        return [(f"{i}.{p}", v) for i, s in enumerate(state) for p, v in _flat(s)]
    return [("", state)]


# Sums merged in another order round differently only where a batch's sums are taken in float32
# (the probes' Gram matrices): there the merge holds to float32 accuracy of the largest entry.
RTOL = {"probes": 1e-5}


def assert_same_state(a, b, rtol=0.0):
    fa, fb = _flat(a), _flat(b)
    assert [p for p, _ in fa] == [p for p, _ in fb]
    for (path, x), (_, y) in zip(fa, fb):
        if isinstance(x, torch.Tensor):
            x, y = x.double(), y.double()
            scale = float(y[torch.isfinite(y)].abs().max()) if bool(torch.isfinite(y).any()) else 0.0
            assert torch.allclose(x, y, rtol=1e-12, atol=1e-9 + rtol * scale, equal_nan=True), path
        elif isinstance(x, float) and rtol:
            assert x == pytest.approx(y, rel=rtol * 10, abs=rtol * 10, nan_ok=True), path
        else:
            assert x == y, path


@pytest.fixture(scope="module")
def batches(lm, corpus_file):
    capture = ResidualCapture(lm)
    corpus_pass = CorpusPass(lm, capture, lambda res, k, token_sets=None: ops.lens_stats(
        res.hidden, lm.norm, lm.unembed, res.targets, k, token_sets=token_sets))
    out = []
    for batch in batched(iter_sequences(lm.tokenizer, [corpus_file], 24, stop=12), 2):
        ids, mask = pad_right([s.ids for s in batch])
        out.append((ids, mask, torch.tensor([s.index for s in batch])))
    return corpus_pass, out


def _feed(analysis, corpus_pass, batches):
    for ids, mask, seq in batches:
        with analysis.forward_context():
            res = corpus_pass.capture.run(ids, mask)
        stats = corpus_pass.decode(res, 3, analysis.token_sets)
        analysis.update(CorpusBatch(res, stats, mask, seq[res.batch_index]))


def _config(tmp_path, lm):
    counts = TokenCounts(lm.vocab_size).update(torch.randint(0, lm.vocab_size, (500,)))
    counts.save(str(tmp_path / "counts.json"))
    return RunConfig(corpus=["unused"], out=str(tmp_path / "out"), probes=["logit", "entropy"], probe_lags=[0, -1],
                     token_counts=True, refine=str(tmp_path / "counts.json"), buckets="5,50", dla=True, records=False)


@pytest.mark.parametrize("kind", [a for a in ANALYSES if a.name != "records"], ids=lambda a: a.name)
def test_two_halves_merged_are_the_whole(kind, batches, lm, tmp_path):
    corpus_pass, data = batches
    cfg = _config(tmp_path, lm)
    whole, first, second = (kind.build(cfg, corpus_pass) for _ in range(3))
    assert isinstance(whole, CorpusAnalysis) and whole.name == kind.name
    _feed(whole, corpus_pass, data)
    _feed(first, corpus_pass, data[:3])
    _feed(second, corpus_pass, data[3:])
    first.merge(second)
    rtol = RTOL.get(kind.name, 0.0)
    assert_same_state(first.state_dict(), whole.state_dict(), rtol)
    rows_a, rows_b = [{} for _ in corpus_pass.sites], [{} for _ in corpus_pass.sites]
    assert_same_state([first.summary(rows_a), rows_a], [whole.summary(rows_b), rows_b], rtol)
    fresh = kind.build(cfg, corpus_pass)
    fresh.load_state_dict(whole.state_dict())
    assert_same_state(fresh.state_dict(), whole.state_dict())


def test_an_analysis_not_asked_for_is_not_built(batches, tmp_path):
    corpus_pass, _ = batches
    cfg = RunConfig(corpus=["unused"], out=str(tmp_path / "out"))
    assert [a.name for a in ANALYSES if a.build(cfg, corpus_pass) is not None] == ["lens"]


def test_every_analysis_has_a_name_and_its_options_in_the_run_config():
    names = [a.name for a in ANALYSES]
    assert len(set(names)) == len(names) and all(names)
    assert not set(names) & {"seconds", "next_sequence", "tokens", "done", "fingerprint"}  # the job's own keys
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    for a in ANALYSES:
        if a.Options is not None:
            assert {f.name for f in dataclasses.fields(a.Options)} <= fields, a.name
