"""intervene.attribution: AtP and AtP* on tiny random models of every family in float64.

AtP equals the first-order term (clean − corrupted) · ∂metric/∂node computed through write hooks
(intervene.hooks, a separate code path); where the model is linear in a node AtP is the exact patch,
and the QK fix is exact for queries and keys; GradDrop with nothing dropped is AtP, and dropping a
layer leaves the layers above it alone and silences its own nodes; a pair alone and in a batch agree.
"""
import json
import random

import pytest
import torch
from torch import nn

from fusedlens import cli
from fusedlens.core.models import LensModel, get_module
from fusedlens.core.structure import block_parts, n_heads, n_kv_heads
from fusedlens.intervene import Edit, Intervention
from fusedlens.intervene.attribution import KINDS, attribution_patch
from fusedlens.intervene.patching import metric_of
from tiny_models import ARCHS, tiny_model, tiny_tokenizer

TOK = tiny_tokenizer()


def tiny_lm(arch, seed=None):
    model = tiny_model(arch, seed=random.randint(0, 10_000) if seed is None else seed).double()
    return LensModel.from_hf(model, TOK)


def random_pair(n=7):
    letters = "abcdefghijklmnopqrstuvwxyz"
    clean = "".join(random.choices(letters, k=n))
    at = random.randint(1, n - 2)
    bad = clean[:at] + random.choice([c for c in letters.upper()]) + clean[at + 1:]
    return clean, bad


def ids_of(text):
    return torch.tensor(TOK(text)["input_ids"])[None]


def node_sites(lm, kinds):
    """(kind, index in the result's layout without the position, site name, width) of every node."""
    parts = block_parts(lm, heads=True, neurons=True)
    heads = n_heads(lm)
    kv = n_kv_heads(lm, heads)
    out = []
    for kind in kinds:
        if kind == "resid":
            out += [(kind, (0,), "embed")] + [(kind, (i + 1,), f"resid.{i}") for i in range(lm.n_layers)]
        elif kind in ("attn", "mlp"):
            out += [(kind, (i,), f"{kind}.{i}") for i in range(lm.n_layers)]
        else:
            count = {"head": heads, "q": heads, "k": kv, "v": kv}.get(kind)
            for i in range(lm.n_layers):
                n = count if count is not None else parts[i].mlp_down.weight.shape[
                    0 if type(parts[i].mlp_down).__name__ == "Conv1D" else 1]
                out += [(kind, (i, j), f"{kind}.{i}.{j}") for j in range(n)]
    return out


def taylor_reference(lm, clean, bad, a, b, kinds):
    """(clean − corrupted) · ∂metric/∂node at every node, through Intervention "apply" edits."""
    sites = node_sites(lm, kinds)
    seen = {}

    def record(site):
        def f(h):
            seen[site] = h.detach().clone()
            return h
        return f

    with torch.no_grad(), Intervention(lm, [Edit(s, "apply", record(s)) for _, _, s in sites]):
        lm.model(input_ids=ids_of(clean), use_cache=False)
    clean_states = dict(seen)
    deltas = {}

    def offset(site):
        def f(h):
            seen[site] = h.detach().clone()
            deltas[site] = torch.zeros_like(h, requires_grad=True)
            return h + deltas[site]
        return f

    with torch.enable_grad(), Intervention(lm, [Edit(s, "apply", offset(s)) for _, _, s in sites]):
        logits = lm.model(input_ids=ids_of(bad), use_cache=False).logits[:, -1]
        m = metric_of(logits, "logit_diff", a, b)[0]
        grads = torch.autograd.grad(m, [deltas[s] for _, _, s in sites])
    out = {}
    for (kind, index, site), g in zip(sites, grads):
        out[(kind, index)] = ((clean_states[site] - seen[site]) * g).sum(-1)[0]  # [T]
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_atp_is_the_first_order_term_for_every_node_kind(arch):
    lm = tiny_lm(arch)
    clean, bad = random_pair()
    a, b = TOK.convert_tokens_to_ids(list("ab"))
    r = attribution_patch(lm, clean, bad, "a", "b", kinds=KINDS)
    ref = taylor_reference(lm, clean, bad, a, b, KINDS)
    scale = max(float(v.abs().max()) for v in ref.values())
    assert scale > 0
    for (kind, index), want in ref.items():
        torch.testing.assert_close(r.estimate[kind][index], want, rtol=0, atol=1e-9 * scale, msg=f"{kind}{index}")
    assert r.estimate is r.signed and r.dropped is None


def linear_tail(lm):
    """The same model made linear after its last attention: the last MLP outputs zero, the last
    post-attention norm (Gemma) and the final norm are identities, no final soft-cap (Gemma 2)."""
    lm.model.config.final_logit_softcapping = None
    last = lm.layers[-1]
    parts = block_parts(lm, heads=True, neurons=True)[-1]
    with torch.no_grad():
        parts.mlp_down.weight.zero_()
        if getattr(parts.mlp_down, "bias", None) is not None:
            parts.mlp_down.bias.zero_()
    if parts.attn_post_norm is not None:
        last.post_attention_layernorm = nn.Identity()
    path = lm.paths["final_norm"]
    parent, name = (get_module(lm.model, path.rsplit(".", 1)[0]), path.rsplit(".", 1)[1]) if "." in path \
        else (lm.model, path)
    setattr(parent, name, nn.Identity())
    return lm


def exact_effects(lm, clean, bad, a, b, cells):
    """The metric change of patching each (site, position) alone: one batched forward."""
    seen = {}
    sites = sorted({s for s, _ in cells})

    def record(site):
        def f(h):
            seen[site] = h.detach().clone()
            return h
        return f

    with torch.no_grad(), Intervention(lm, [Edit(s, "apply", record(s)) for s in sites]):
        base = metric_of(lm.model(input_ids=ids_of(clean), use_cache=False).logits[:, -1], "logit_diff", a, b)
    ids = ids_of(bad)
    edits = [Edit(s, "replace", seen[s][0, p], rows=[j + 1], positions=[p]) for j, (s, p) in enumerate(cells)]
    with torch.no_grad(), Intervention(lm, edits):
        got = metric_of(lm.model(input_ids=ids.expand(len(cells) + 1, -1), use_cache=False).logits[:, -1],
                        "logit_diff", a, b)
    del base
    return got[1:] - got[0]


@pytest.mark.parametrize("arch", ARCHS)
def test_linear_nodes_equal_the_exact_patch_and_the_qk_fix_is_exact(arch):
    lm = linear_tail(tiny_lm(arch))
    clean, bad = random_pair()
    a, b = TOK.convert_tokens_to_ids(list("ab"))
    last = lm.n_layers - 1
    kinds = ("resid", "attn", "head", "v", "q", "k")
    atp = attribution_patch(lm, clean, bad, "a", "b", kinds=kinds)
    fixed = attribution_patch(lm, clean, bad, "a", "b", kinds=("q", "k"), qk_fix=True)
    t = len(clean)
    heads, kv = n_heads(lm), n_kv_heads(lm, n_heads(lm))
    cells = [(f"resid.{last}", p) for p in range(t)] + [(f"attn.{last}", p) for p in range(t)]
    cells += [(f"head.{last}.{h}", p) for h in range(heads) for p in range(t)]
    cells += [(f"{k}.{last}.{h}", p) for k in ("v", "k") for h in range(kv) for p in range(t)]
    cells += [(f"q.{last}.{h}", p) for h in range(heads) for p in range(t)]
    exact = exact_effects(lm, clean, bad, a, b, cells)
    scale = float(exact.abs().max())
    assert scale > 1e-6
    for (site, p), want in zip(cells, exact):
        kind, *idx = site.split(".")
        index = (last + 1,) if kind == "resid" else tuple(int(i) for i in idx)
        if kind in ("q", "k"):
            got = float(fixed.estimate[kind][index + (p,)])
        else:
            got = float(atp.estimate[kind][index + (p,)])
        # the model's eager softmax runs in float32 (upcast), the fix in float64
        tol = (1e-5 if kind in ("q", "k") else 1e-6) * scale
        assert got == pytest.approx(float(want), abs=tol), (site, p, got, float(want), scale)
    # linearised through the softmax, queries and keys are not exact where the attention moves
    qk = [(s, p, w) for (s, p), w in zip(cells, exact) if s[0] in "qk"]
    worst = max(abs(float(atp.estimate[s[0]][(last, int(s.split(".")[2]), p)]) - float(w)) for s, p, w in qk)
    assert worst > 1e-4 * scale


@pytest.mark.parametrize("arch", ["llama", "gemma2", "opt"])
def test_graddrop(arch):
    lm = tiny_lm(arch)
    clean, bad = random_pair()
    kinds = ("resid", "attn", "mlp", "head", "neuron", "q", "k", "v")
    atp = attribution_patch(lm, clean, bad, "a", "b", kinds=kinds)
    gd = attribution_patch(lm, clean, bad, "a", "b", kinds=kinds, graddrop=True)
    star = attribution_patch(lm, clean, bad, "a", "b", kinds=kinds, method="atp*")
    assert star.meta["qk_fix"] and star.meta["graddrop"] and star.meta["backwards"] == lm.n_layers + 1
    for k in kinds:
        assert torch.equal(gd.signed[k], atp.signed[k]), k  # nothing dropped: AtP, bit for bit
        drops = gd.dropped[k]
        assert drops.shape == (lm.n_layers,) + atp.signed[k].shape
        first = 1 if k == "resid" else 0  # resid row j + 1 is block j's output
        for layer in range(lm.n_layers):
            for j in range(lm.n_layers):
                row = drops[layer, j + first]
                if j > layer or (k == "resid" and j == layer):  # the gradient never passes block `layer`
                    assert torch.equal(row, atp.signed[k][j + first]), (k, layer, j)
                elif j == layer:  # the node is inside the dropped block
                    assert not bool(row.any()), (k, layer, j)
        torch.testing.assert_close(gd.estimate[k], drops.abs().sum(0) / (lm.n_layers - 1), rtol=0, atol=0)
    assert not torch.equal(star.signed["k"], atp.signed["k"])  # the QK fix applies under atp*


def test_batch_invariance_and_averages():
    lm = tiny_lm("mistral")
    pairs = [random_pair(8) for _ in range(3)]
    answers, counters = ["a", "c", "e"], ["b", "d", "f"]
    kinds = ("resid", "head", "neuron", "k")
    alone = [attribution_patch(lm, c, r, x, y, kinds=kinds, method="atp*") for (c, r), x, y in zip(pairs, answers, counters)]
    batched = attribution_patch(lm, [c for c, _ in pairs], [r for _, r in pairs], answers, counters, kinds=kinds,
                                method="atp*", batch_size=2)
    assert batched.meta["pairs"] == 3
    assert batched.clean == pytest.approx(sum(x.clean for x in alone) / 3, rel=1e-12)
    for k in kinds:
        mean = sum(x.signed[k] for x in alone) / 3
        torch.testing.assert_close(batched.signed[k], mean, rtol=1e-9, atol=1e-12)
        drops = sum(x.dropped[k] for x in alone) / 3
        torch.testing.assert_close(batched.dropped[k], drops, rtol=1e-9, atol=1e-12)
    summed = attribution_patch(lm, [c for c, _ in pairs], [r for _, r in pairs], answers, counters, kinds=("head",),
                               reduce="sum")
    torch.testing.assert_close(summed.signed["head"], sum(x.signed["head"] for x in alone), rtol=1e-9, atol=1e-12)


def test_bad_input():
    lm = tiny_lm("llama", seed=1)
    with pytest.raises(ValueError, match="kinds: expected distinct kinds"):
        attribution_patch(lm, "abc", "abd", "a", kinds=("neurons",))
    with pytest.raises(ValueError, match="method: expected one of"):
        attribution_patch(lm, "abc", "abd", "a", method="exact")
    with pytest.raises(ValueError, match="logit_diff needs a counterfactual"):
        attribution_patch(lm, "abc", "abd", "a", metric="logit_diff")
    with pytest.raises(ValueError, match="prompts of \\[3, 4\\] tokens"):
        attribution_patch(lm, "abc", "abcd", "a")
    with pytest.raises(ValueError, match="answer: 'ab' is 2 tokens"):
        attribution_patch(lm, "abc", "abd", "ab")
    with pytest.raises(ValueError, match="corrupted: 2 given for 3 prompt pairs"):
        attribution_patch(lm, ["abc"] * 3, ["abd"] * 2, "a")
    with pytest.raises(ValueError, match="counterfactual: the same token as the answer"):
        attribution_patch(lm, "abc", "abd", "a", "a")
    with pytest.raises(ValueError, match="reduce: expected 'mean' or 'sum'"):
        attribution_patch(lm, "abc", "abd", "a", reduce="max")
    with pytest.raises(ValueError, match="verify: expected a non-negative integer"):
        attribution_patch(lm, "abc", "abd", "a", verify=-2)


def test_the_real_model_and_the_cli(real_lm, tmp_path, monkeypatch):
    """SmolLM2 on the Eiffel pair: AtP's resid grid follows the exact one; the CLI writes both, the
    comparison and a verification."""
    clean, bad = "The Eiffel Tower is in the city of", "The Colosseum is in the city of"
    monkeypatch.setattr("fusedlens.core.models.load_model", lambda *a, **k: real_lm)
    assert cli.main(["patch", "--clean", clean, "--corrupted", bad, "--answer", " Paris", "--counterfactual", " Rome",
                     "--kinds", "resid,attn,k", "--method", "exact,atp,atp*", "--verify", "3", "--batch-size", "96",
                     "--out", str(tmp_path), "--no-progress"]) == 0
    exact = json.loads((tmp_path / "patch.json").read_text())
    atp = json.loads((tmp_path / "attribution_atp.json").read_text())
    star = json.loads((tmp_path / "attribution_atp_star.json").read_text())
    assert atp["clean"] == pytest.approx(exact["clean"], abs=1e-4)
    assert atp["corrupted"] == pytest.approx(exact["corrupted"], abs=1e-4)
    # the last position's final residual is the logits' only input there: AtP is nearly exact
    assert atp["estimate"]["resid"][-1][-1] == pytest.approx(exact["values"]["resid"][-1][-1] - exact["corrupted"],
                                                             rel=0.2)
    assert len(star["estimate"]["k"]) == real_lm.n_layers and star["verification"]["k"]["top"]
    versus = json.loads((tmp_path / "attribution_vs_exact.json").read_text())
    assert set(versus["methods"]) == {"atp", "atp*"} and set(versus["methods"]["atp"]) == {"resid", "attn"}
    assert versus["methods"]["atp*"]["attn"]["spearman"] > 0.5
    assert (tmp_path / "attribution_vs_exact.png").stat().st_size > 10_000
