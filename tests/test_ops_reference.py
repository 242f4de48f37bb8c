"""The float64 reference against direct computations (log_softmax, argsort, loops)."""
import pytest
import torch
import torch.nn.functional as F

from fusedlens.core.readout import FinalNorm, Unembed
from fusedlens.ops.reference import lens_stats, prediction_depth, stats_from_logits, topk_tie_lowest_id


def random_logits(sites, tokens, vocab, scale=3.0):
    return torch.randn(sites, tokens, vocab, dtype=torch.float64) * scale


@pytest.mark.parametrize("sites,tokens,vocab,k", [(1, 1, 7, 1), (3, 5, 101, 4), (5, 17, 257, 32), (2, 3, 40, 40)])
def test_stats_match_direct_computation(sites, tokens, vocab, k):
    z = random_logits(sites, tokens, vocab)
    targets = torch.randint(0, vocab, (tokens,))
    s = stats_from_logits(z, targets, k)
    logp = F.log_softmax(z, -1)
    torch.testing.assert_close(s.lse, torch.logsumexp(z, -1))
    torch.testing.assert_close(s.entropy, torch.distributions.Categorical(logits=z).entropy())
    order = torch.argsort(z, dim=-1, descending=True, stable=True)
    assert torch.equal(s.topk_ids, order[..., :k])
    torch.testing.assert_close(s.topk_logits, z.gather(-1, order[..., :k]))
    kl = F.kl_div(logp, logp[-1:].expand_as(logp), log_target=True, reduction="none").sum(-1)
    torch.testing.assert_close(s.kl_to_final, kl)
    assert torch.all(s.kl_to_final[-1] == 0)
    torch.testing.assert_close(s.target_logit, z[:, torch.arange(tokens), targets])
    torch.testing.assert_close(s.target_logprob, logp[:, torch.arange(tokens), targets])
    # Without ties, a token's rank is its position in the descending order.
    position = torch.argsort(order, -1)
    assert torch.equal(s.target_rank, position[:, torch.arange(tokens), targets])
    final_top1 = order[-1, :, 0]
    assert torch.equal(s.final_top1_rank, position[:, torch.arange(tokens), final_top1])
    assert torch.all(s.final_top1_rank[-1] == 0)


def test_tie_rule():
    z = torch.tensor([[[1.0, 5.0, 3.0, 5.0, 5.0, 0.0]]], dtype=torch.float64).repeat(2, 1, 1)
    z[0, 0, 4] = 7.0  # the lens site prefers id 4; the final site has a three-way tie
    s = stats_from_logits(z, torch.tensor([3]), k=4)
    assert s.topk_ids[1, 0].tolist() == [1, 3, 4, 2]  # equal logits: ascending id
    assert s.topk_ids[0, 0].tolist() == [4, 1, 3, 2]
    assert s.target_rank[:, 0].tolist() == [1, 0]  # tied tokens share the best rank
    assert s.final_top1_rank[:, 0].tolist() == [1, 0]


def test_topk_tie_lowest_id_on_many_ties():
    z = torch.randint(0, 3, (4, 50)).double()
    ids, values = topk_tie_lowest_id(z, 10)
    order = torch.argsort(z, dim=-1, descending=True, stable=True)[:, :10]
    assert torch.equal(ids, order)
    assert torch.equal(values, z.gather(-1, order))


def test_ignore_index_gives_nan_and_minus_one():
    z = random_logits(2, 4, 30)
    s = stats_from_logits(z, torch.tensor([3, -100, 7, -100]))
    assert torch.isnan(s.target_logit[:, 1]).all() and torch.isnan(s.target_logprob[:, 3]).all()
    assert (s.target_rank[:, [1, 3]] == -1).all()
    assert torch.isfinite(s.target_logit[:, [0, 2]]).all()


def test_prediction_depth_by_loop():
    sites, tokens = 6, 200
    top1 = torch.randint(0, 3, (sites, tokens))
    depth = prediction_depth(top1)
    for t in range(tokens):
        d = sites - 1
        while d > 0 and top1[d - 1, t] == top1[-1, t]:
            d -= 1
        assert depth[t] == d


@pytest.mark.parametrize("kind,offset,bias", [("layernorm", 0.0, True), ("rmsnorm", 0.0, False), ("rmsnorm", 1.0, False)])
@pytest.mark.parametrize("softcap", [None, 2.5])
def test_lens_stats_chunks_and_readout(kind, offset, bias, softcap):
    sites, tokens, d, vocab = 3, 11, 16, 61
    h = torch.randn(sites, tokens, d) * 4 + 1
    w = torch.randn(d)
    norm = FinalNorm(kind, w, torch.randn(d) if bias else None, 1e-5, offset)
    unembed = Unembed(torch.randn(vocab, d), torch.randn(vocab), softcap)
    targets = torch.randint(0, vocab, (tokens,))
    got = lens_stats(h, norm, unembed, targets, k=3, max_elements=sites * vocab * 2)  # 2 tokens per chunk
    # Direct: the norm and head written out once more, in float64.
    x = h.double()
    if kind == "layernorm":
        x = x - x.mean(-1, keepdim=True)
    x = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * (w.double() + offset)
    if bias:
        x = x + norm.bias.double()
    z = x @ unembed.weight.double().T + unembed.bias.double()
    if softcap:
        z = softcap * torch.tanh(z / softcap)
    want = stats_from_logits(z, targets, 3)
    for name, value in want.items():
        torch.testing.assert_close(getattr(got, name), value, msg=name)


@pytest.mark.parametrize("bad,match", [
    (lambda z, t: (z.masked_fill(z > 2, float("nan")), t), "NaN"),
    (lambda z, t: (z[0], t), "dimensions"),
    (lambda z, t: (z, t + 1000), "outside"),
    (lambda z, t: (z, t[:2]), "one per row"),
    (lambda z, t: (z, t.float()), "integer"),
    (lambda z, t: (z[:, :0], t[:0]), "empty"),
])
def test_bad_input_is_a_clear_error(bad, match):
    z, t = bad(random_logits(2, 4, 30), torch.randint(0, 30, (4,)))
    with pytest.raises(ValueError, match=match):
        stats_from_logits(z, t)


def test_bad_k_and_width():
    with pytest.raises(ValueError, match="k:"):
        stats_from_logits(random_logits(1, 2, 5), None, k=6)
    unembed = Unembed(torch.randn(9, 8))
    with pytest.raises(ValueError, match="d_model"):
        lens_stats(torch.randn(2, 3, 7), FinalNorm("rmsnorm", None, None, 1e-6), unembed)
