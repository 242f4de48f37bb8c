"""The lens page: every number the grid, its tooltips and its curves show is the LensResult's."""
import numpy as np
import pytest
import torch

from fusedlens import LensModel, LogitLens
from fusedlens.ops.stats import LensStats
from fusedlens.report.lens import lens_view
from fusedlens.report.page import Vocab, page_html
from test_report_page import decode, page_data
from tiny_models import tiny_model, tiny_tokenizer

TEXTS = ["The cat sat on the mat.", "A second text,\nwith two lines."]


@pytest.fixture(scope="module")
def result():
    lm = LensModel.from_hf(tiny_model("llama"), tiny_tokenizer())
    return LogitLens(lm, k=7).run(TEXTS, batch_size=2)


def test_the_grid_shows_the_result(result):
    vocab = Vocab(result.tokenizer)
    v = lens_view({"logit lens": result}, vocab)
    S, T = len(result.sites), result.n_tokens
    assert v["sites"] == result.sites and v["tokens"] == [result.tokenizer.decode([i]) for i in result.input_ids.tolist()]
    assert v["next"] == [result.tokenizer.decode([i]) if i >= 0 else "–" for i in result.targets.tolist()]
    grid = v["lenses"][0]["grid"]
    layers = {l["name"]: decode(l["values"]).reshape(S, T) for l in grid["layers"]}
    st = result.stats
    assert np.array_equal(layers["rank of the final top-1"], st.final_top1_rank.float().numpy())
    p = layers["p(next token)"]
    want = torch.exp(st.target_logprob.double()).float().numpy()
    q = 0.5 / 65534  # probabilities travel to 1/65534
    assert np.array_equal(np.isnan(p), np.isnan(want)) and np.abs(p[~np.isnan(p)] - want[~np.isnan(want)]).max() <= q
    assert np.array_equal(layers["entropy (nats)"], st.entropy.float().numpy())
    assert np.array_equal(layers["KL to the final site (nats)"], st.kl_to_final.float().numpy())
    k = grid["topk"]["k"]
    assert k == 5  # the tooltip's five of the run's seven
    ids = decode(grid["topk"]["ids"]).reshape(S, T, k)
    assert np.array_equal(ids, st.topk_ids[..., :k].numpy())
    assert grid["cell_text_topk"]  # cells show the top-1 of the tooltips' ids
    probs = decode(grid["topk"]["probs"]).reshape(S, T, k)
    assert np.abs(probs - torch.exp(st.topk_logits[..., :k].double() - st.lse[..., None].double()).numpy()).max() <= q
    assert np.all(np.diff(probs, axis=-1) <= 0)  # in rank order
    assert set(vocab.ids) == set(ids.reshape(-1).tolist()) | set(result.input_ids.tolist()) | set(
        t for t in result.targets.tolist() if t >= 0)


def test_side_by_side_needs_the_same_tokens(result):
    other = result.sequence(1)
    with pytest.raises(ValueError, match="lenses: 'b' read other sites or tokens"):
        lens_view({"a": result, "b": other}, Vocab())
    v = lens_view({"a": result, "b": result}, Vocab(), max_tokens=5)
    assert [L["name"] for L in v["lenses"]] == ["a", "b"] and len(v["tokens"]) == 5
    assert v["note"] == f"the first 5 of {result.n_tokens} tokens"


def test_save_html_and_notebook_show_the_same_page(result, tmp_path):
    path = result.save_html(str(tmp_path / "lens.html"))
    data = page_data(open(path, encoding="utf-8").read())
    assert data["views"][0]["type"] == "lens" and data["views"][0]["tokens"][0] == TEXTS[0][0]
    assert "fl-data" in result._repr_html_()
    assert result.sequence(0).tokenizer is result.tokenizer  # a piece keeps its token strings


def test_a_2048_token_run_stays_a_few_mb():
    """SmolLM2's 31 sites over 2,048 tokens, top-5 tooltips: the page's size, not the vocabulary's."""
    S, T, k, V = 31, 2048, 5, 49_152
    g = torch.Generator().manual_seed(0)
    stats = LensStats(lse=torch.rand(S, T, generator=g) + 10, entropy=torch.rand(S, T, generator=g) * 8,
                      topk_ids=torch.randint(0, V, (S, T, k), generator=g),
                      topk_logits=-torch.rand(S, T, k, generator=g).cumsum(-1) + 10,
                      target_logit=torch.randn(S, T, generator=g), target_logprob=-torch.rand(S, T, generator=g) * 9,
                      target_rank=torch.randint(0, V, (S, T), generator=g), kl_to_final=torch.rand(S, T, generator=g),
                      final_top1_rank=torch.randint(0, V, (S, T), generator=g),
                      prediction_depth=torch.randint(0, S, (T,), generator=g))
    from fusedlens import LensResult

    r = LensResult(sites=[f"resid.{i}" for i in range(S)], stats=stats, input_ids=torch.randint(0, V, (T,), generator=g),
                   targets=torch.randint(0, V, (T,), generator=g), batch_index=torch.zeros(T, dtype=torch.long),
                   position=torch.arange(T))
    vocab = Vocab()
    size = len(page_html("x", r.views(vocab), vocab).encode())
    print(f"page size {size / 1e6:.2f} MB")
    assert size < 6e6, size


def test_logit_and_tuned_side_by_side():
    """A tuned lens at its identity start reads what the logit lens reads: two grids with the same numbers."""
    from fusedlens.lens import LensComparison
    from fusedlens.tuned import TunedLens

    lm = LensModel.from_hf(tiny_model("llama"), tiny_tokenizer())
    logit = LogitLens(lm, k=5).run(TEXTS)
    lens = TunedLens.from_model(lm)
    tuned = LogitLens(lm, k=5, translate=lambda h: lens.translate_sites(h, logit.sites)).run(TEXTS)
    assert tuned.lens == "tuned lens"
    both = LensComparison({"logit lens": logit, "tuned lens": tuned})
    (v,) = both.views(Vocab(both.tokenizer))
    assert [L["name"] for L in v["lenses"]] == ["logit lens", "tuned lens"]
    assert v["lenses"][0]["grid"]["topk"]["ids"] == v["lenses"][1]["grid"]["topk"]["ids"]
    with pytest.raises(ValueError, match="results: expected a dict of name -> LensResult"):
        LensComparison({"a": 1})
