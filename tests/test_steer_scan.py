"""steer.scan on tiny random models of every family: each cell's perplexity against a float64 computation
from the logits of a hand-hooked run (one window at a time), each cell's mean projection against the
hand-captured read-site residuals, the unsteered baseline, samples, the result files and bad input."""
import json
import math
import random

import pytest
import torch

from fusedlens import steer
from fusedlens.core.structure import mid_norm
from fusedlens.core.models import LensModel
from fusedlens.data.windows import windows
from fusedlens.intervene import generate as generate_with
from fusedlens.report.steer import format_scan_samples, format_scan_table, write_scan_outputs
from tiny_models import ARCHS, VOCAB, tiny_model, tiny_tokenizer
from test_steer_generate import _hand_add


def _read_hook(lm, site, store):
    kind, *idx = site.split(".")
    if kind == "embed":
        return lm.layers[0].register_forward_pre_hook(
            lambda m, args, kwargs: store.append((args[0] if args else kwargs["hidden_states"])[0].clone()),
            with_kwargs=True)
    if kind == "mid":
        return mid_norm(lm.layers[int(idx[0])]).register_forward_pre_hook(
            lambda m, args: store.append(args[0].reshape(-1, lm.d_model).clone()))
    return lm.layers[int(idx[0])].register_forward_hook(
        lambda m, a, out: store.append((out if torch.is_tensor(out) else out[0])[0].clone()))


def _hand_cell(lm, wins, vec, site, coef, read_site, read_dir, positions=None):
    """float64 perplexity and mean projection of one cell, each window run alone with our own hooks."""
    nll, n, proj, m = 0.0, 0, 0.0, 0
    for w in wins:
        handles = []
        if site is not None:
            hand_positions = list(range(vec.shape[0])) if vec.dim() == 2 else positions
            handles.append(_hand_add(lm, site, (coef * vec).float(), hand_positions))
        store = []
        handles.append(_read_hook(lm, read_site, store))  # after the add: it reads the steered state
        with torch.no_grad():
            logits = lm.model(input_ids=w[None], use_cache=False).logits[0].double()
        for h in handles:
            h.remove()
        lp = torch.log_softmax(logits[:-1], -1).gather(-1, w[1:, None])[:, 0]
        nll, n = nll - float(lp.sum()), n + lp.numel()
        proj, m = proj + float((store[0].double() @ read_dir).sum()), m + w.numel()
    return math.exp(nll / n), proj / m


@pytest.mark.parametrize("arch", ARCHS)
def test_perplexity_and_projection_equal_a_float64_hand_computation(arch):
    lm = LensModel.from_hf(tiny_model(arch))
    ids = torch.randint(0, VOCAB, (random.randint(30, 45),))
    sites = ["embed", f"resid.{random.randrange(lm.n_layers)}", "mid.1"]
    coefs = [round(random.uniform(-4, -0.5), 3), 0.0, round(random.uniform(0.5, 4), 3)]
    vecs = {s: torch.randn(lm.d_model, dtype=torch.float64) * 2 for s in sites}
    seq_len = random.randint(5, 9)
    r = steer.scan(lm, vecs, sites, coefs, corpus=ids, eval_tokens=ids.numel(), seq_len=seq_len, prompts=[ids[:4]],
                   n_tokens=3, batch_size=random.randint(3, 7))
    wins = windows(ids, seq_len, overlap=1)
    assert r.read_site == "mid.1" and r.meta["predicted_tokens"] == ids.numel() - 1
    u = vecs["mid.1"] / vecs["mid.1"].norm()
    base_ppl, base_proj = _hand_cell(lm, wins, None, None, 0.0, "mid.1", u)
    # fp32 forwards of other batch compositions and the fp32 fused log-prob: ~1e-6 relative per token
    assert r.base_ppl == pytest.approx(base_ppl, rel=1e-4) and r.base_projection == pytest.approx(base_proj, rel=1e-4, abs=1e-4)
    for i, s in enumerate(sites):
        for j, c in enumerate(coefs):
            ppl, proj = _hand_cell(lm, wins, vecs[s], s, c, "mid.1", u)
            assert float(r.ppl[i, j]) == pytest.approx(ppl, rel=1e-4), (arch, s, c)
            assert float(r.projection[i, j]) == pytest.approx(proj, rel=1e-4, abs=1e-4), (arch, s, c)
        assert float(r.ppl_ratio[i, 1]) == pytest.approx(1.0, rel=1e-5)  # c = 0 is the unsteered run
    # the samples: row 0 unsteered, each cell its own edit (batched rows), as generate gives them alone
    assert r.base_samples[0] == " ".join(str(int(t)) for t in generate_with(lm, ids[:4], [], 3))
    i, j = 1, 2
    alone = generate_with(lm, ids[:4], [steer.steer_edit(lm, vecs[sites[i]], sites[i], coefs[j])], 3)
    assert r.samples[0][i][j] == " ".join(str(int(t)) for t in alone)


def test_actadd_blocks_front_positions_and_read_site(tmp_path):
    lm = LensModel.from_hf(tiny_model("qwen2"), tiny_tokenizer())
    sites = ["resid.0", "resid.2"]
    vecs = steer.actadd_vectors(lm, "good", "bad!!", sites + ["embed"])
    text = "".join(random.choice("abcdefgh ij.\n") for _ in range(60))
    ids = torch.tensor(lm.tokenizer(text, add_special_tokens=False)["input_ids"])
    coefs = [random.uniform(1, 3)]
    r = steer.scan(lm, vecs, sites, coefs, corpus=text, eval_tokens=40, seq_len=10, read_site="embed",
                   prompts=["hello world"], n_tokens=4, batch_size=5)
    wins = windows(ids[:40], 10, overlap=1)
    u = steer.unit(vecs["embed"])
    for i, s in enumerate(sites):
        ppl, proj = _hand_cell(lm, wins, vecs[s], s, coefs[0], "embed", u)
        assert float(r.ppl[i, 0]) == pytest.approx(ppl, rel=1e-4)
        # the read site comes before every steered one: the projection is the unsteered one
        # (summed in another order: equal to rounding)
        assert float(r.projection[i, 0]) == pytest.approx(r.base_projection, rel=1e-12, abs=1e-12)
        assert float(r.projection[i, 0]) == pytest.approx(proj, rel=1e-5, abs=1e-5)
    assert r.meta["positions"] == "front"
    # results: JSON round trip, table, samples, picture
    paths = write_scan_outputs(r, str(tmp_path))
    back = steer.ScanResult.load(paths[0])
    assert torch.equal(back.ppl, r.ppl) and back.samples == r.samples and back.sites == sites
    assert json.loads(r.to_json())["ppl_ratio"] == r.ppl_ratio.tolist()
    assert "resid.2" in format_scan_table(r) and "hello world" in format_scan_samples(r)
    assert (tmp_path / "steer_scan.png").stat().st_size > 1000


def test_bad_input(lm):
    v = torch.randn(lm.d_model)
    ids = torch.randint(0, VOCAB, (40,))
    ok = dict(corpus=ids, eval_tokens=30, seq_len=8, prompts=[ids[:3]], n_tokens=2)
    for args, kw, message in (((v, [], [1.0]), {}, "^sites: expected a non-empty list"),
                              ((v, ["resid.0"], []), {}, "^coefs: expected a non-empty list"),
                              ((v, ["resid.9"], [1.0]), {}, "^sites: .*out of range"),
                              ((v, ["resid.0"], [float("nan")]), {}, "^coefs: expected a finite number"),
                              ((v, ["resid.0"], [1.0]), dict(read_site="head.0.1"), "^read_site:"),
                              ((torch.randn(5), ["resid.0"], [1.0]), {}, "^vector: width"),
                              (({"resid.1": v}, ["resid.0"], [1.0]), {}, "^vector: no vector for site 'resid.0'"),
                              ((torch.randn(12, lm.d_model), ["resid.0"], [1.0]), {}, "^seq_len: 9 token"),
                              ((v, ["resid.0"], [1.0]), dict(eval_tokens=41), "^corpus: 40 tokens, need 41"),
                              ((v, ["resid.0"], [1.0]), dict(batch_size=0), "^batch_size:")):
        with pytest.raises(ValueError, match=message):
            steer.scan(lm, *args, **(ok | kw))
