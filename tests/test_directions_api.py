"""directions(): streamed vectors and held-out scores against float64 on residuals captured one text at a
time (tiny models of every family, the real model), invariance to batch size and process count, the
directions.pt contract, the scan, the CLI, and bad input."""
import json
import random
import string
from types import SimpleNamespace

import pytest
import torch

from tiny_models import ARCHS, tiny_model, tiny_tokenizer
from fusedlens.core.capture import ResidualCapture
from fusedlens.core.models import LensModel
from fusedlens.directions import KINDS, DirectionsResult, directions, read_pairs, split
from fusedlens.directions.solve import accuracy, auroc

TOK = tiny_tokenizer()
# a dozen pairs in 48 dimensions: the pooled covariance is singular, as the warning says (checked below)
pytestmark = pytest.mark.filterwarnings("ignore:directions. the pooled covariance is singular")


def random_pairs(n=14, span=False):
    """Fresh random texts; positives and negatives differ in a word, so the classes differ a little."""
    def text(word):
        words = ["".join(random.choices(string.ascii_lowercase, k=random.randint(1, 6)))
                 for _ in range(random.randint(1, 4))]
        words.insert(random.randint(0, len(words) - 1), word)  # never last: the last tokens vary
        return " ".join(words)

    out = []
    for _ in range(n):
        p, q = text("good"), text("bad")
        out.append({"pos": {"text": p, "span": [p.index("good"), p.index("good") + 4]},
                    "neg": {"text": q, "span": [q.index("bad"), q.index("bad") + 3]}}
                   if span else {"pos": p, "neg": q})
    return out


def captured_rows(lm, item, sites):
    """The selected residuals of one text run alone, float64 [S, rows, d]."""
    layers = [int(s.split(".")[1]) for s in sites if s.startswith("resid.")]
    res = ResidualCapture(lm, layers=layers, embed=True).run(item.ids[None])
    return res.hidden[:, item.select.to(res.hidden.device)].double().cpu()


def reference(lm, records, position, heldout, lam, sites):
    """Float64 statistics, vectors and held-out rows of the same contrast, one text per forward."""
    items, _ = read_pairs(lm.tokenizer, pairs=records, position=position)
    train, held = split(len(items), heldout, 0)
    P = [captured_rows(lm, items[i][0], sites) for i in train]
    N = [captured_rows(lm, items[i][1], sites) for i in train]
    xp, xn = torch.cat(P, 1), torch.cat(N, 1)
    mp, mn = xp.mean(1), xn.mean(1)
    D = torch.stack([p.mean(1) - q.mean(1) for p, q in zip(P, N)], 1)  # [S, pairs, d]
    cp, cn = xp - mp[:, None], xn - mn[:, None]
    cov = (cp.mT @ cp + cn.mT @ cn) / (xp.shape[1] + xn.shape[1] - 2)
    d = cov.shape[-1]
    tr = torch.diagonal(cov, dim1=-2, dim2=-1).sum(-1)
    spread = (tr > 0)[:, None]  # none (SmolLM2's embedding of the final "."): no direction at all
    ridge = torch.where(spread, lam * tr[:, None] / d, 1.0)[..., None] * torch.eye(d, dtype=torch.float64)
    # cov + ridge is symmetric positive definite: a Cholesky solve (LU's batched solve raised bad pivots here)
    lda = torch.cholesky_solve((mp - mn)[..., None], torch.linalg.cholesky(cov + ridge))[..., 0] * spread
    held_rows = [(captured_rows(lm, items[i][0], sites), captured_rows(lm, items[i][1], sites)) for i in held]
    return dict(mean_pos=mp, mean_neg=mn, moment=D.mT @ D, mean_diff=torch.nn.functional.normalize(mp - mn, dim=-1),
                lda=torch.nn.functional.normalize(lda, dim=-1), held=held_rows)


def _bounds(scores, labels, margin):
    """Accuracy and AUROC over every way the rows within `margin` of a decision could fall: the result's
    rows (batched fp32) and the reference's (float64, one text at a time) differ by rounding, so a score
    that close to the midpoint, or two scores that close to each other, may order either way."""
    sure = scores.abs() > margin
    right = ((scores > 0) == labels) & sure
    acc = (float(right.sum()) / len(labels), float((right | ~sure).sum()) / len(labels))
    diff = scores[labels][:, None] - scores[~labels][None, :]
    won, open_ = (diff > margin).double(), (diff.abs() <= margin).double()
    n = diff.numel()
    return acc, (float(won.sum()) / n, float((won + open_).sum()) / n)


def assert_same_heldout(got, want):
    """Held-out metrics of two runs whose vectors differ by fp32 rounding (batching, processes): the
    scores agree to that rounding, and accuracy and AUROC agree up to the rows (or pairs of rows)
    closer than the scores' difference, which may order either way."""
    assert torch.equal(got.heldout_labels, want.heldout_labels)
    scale = float(want.heldout_scores.abs().max())
    delta = (got.heldout_scores - want.heldout_scores).abs()
    assert float(delta.max()) <= 1e-4 * scale, float(delta.max())
    for s, (a, b) in enumerate(zip(got.heldout, want.heldout)):
        assert (a["n_heldout_pos"], a["n_heldout_neg"]) == (b["n_heldout_pos"], b["n_heldout_neg"])
        for k, kind in enumerate(KINDS):
            margin = 2 * float(delta[s, k].max()) + 1e-12
            (a0, a1), (u0, u1) = _bounds(want.heldout_scores[s, k], want.heldout_labels, margin)
            assert a0 - 1e-12 <= a[kind]["accuracy"] <= a1 + 1e-12, (got.sites[s], kind)
            assert u0 - 1e-12 <= a[kind]["auroc"] <= u1 + 1e-12, (got.sites[s], kind)


def check_against_reference(r, ref):
    scale = float(ref["mean_pos"].abs().max())
    torch.testing.assert_close(r.mean_pos, ref["mean_pos"], rtol=0, atol=2e-5 * scale)
    torch.testing.assert_close(r.mean_neg, ref["mean_neg"], rtol=0, atol=2e-5 * scale)
    # a unit vector along μ+ − μ−: the means' error over the gap's length (a small gap amplifies it)
    gap = (ref["mean_pos"] - ref["mean_neg"]).norm(dim=-1)
    amplify = (4e-5 * scale / gap.clamp_min(1e-30)).clamp(max=1.0)[:, None]
    md, lda = r.vectors["mean_diff"].double(), r.vectors["lda"].double()
    assert bool(((md - ref["mean_diff"]).abs() <= 1e-4 + amplify).all()), (md - ref["mean_diff"]).abs().amax(-1)
    assert bool(((lda - ref["lda"]).abs() <= 1e-3 + 10 * amplify).all()), (lda - ref["lda"]).abs().amax(-1)
    for s in range(len(r.sites)):  # the PCA vector is a top eigenvector of the float64 moment (gap or no gap)
        M, v = ref["moment"][s], r.vectors["pca"][s].double()
        top = float(torch.linalg.eigvalsh(M)[-1])
        assert float(v @ M @ v) >= top * (1 - 1e-4), r.sites[s]
        assert abs(float(v.norm()) - 1) < 1e-6
    # held-out scores from the float64 rows and the result's own vectors and midpoints
    V, mid = r.stacked().double(), r.midpoints()
    rows = torch.cat([torch.cat([p, q], 1) for p, q in ref["held"]], 1)
    labels = torch.cat([torch.cat([torch.ones(p.shape[1]), torch.zeros(q.shape[1])]) for p, q in ref["held"]]).bool()
    scores = torch.einsum("skd,snd->skn", V, rows) - mid[:, :, None]
    for s, h in enumerate(r.heldout):
        assert h["n_heldout_pos"] == int(labels.sum()) and h["n_heldout_neg"] == int((~labels).sum())
        margin = 1e-5 * float(rows[s].abs().max()) * rows.shape[-1] ** 0.5  # fp32 rows: |δx| · |v| ≤ that
        for k, kind in enumerate(KINDS):
            (a0, a1), (u0, u1) = _bounds(scores[s, k], labels, margin)
            assert a0 - 1e-12 <= h[kind]["accuracy"] <= a1 + 1e-12, (r.sites[s], kind)
            assert u0 - 1e-12 <= h[kind]["auroc"] <= u1 + 1e-12, (r.sites[s], kind)
            if a0 == a1:  # no row near the midpoint: the same number
                assert h[kind]["accuracy"] == pytest.approx(accuracy(scores[s, k], labels), abs=1e-12)


def tiny_lm(arch):
    return LensModel.from_hf(tiny_model(arch, seed=random.randint(0, 10_000)), TOK)


@pytest.mark.parametrize("arch", ARCHS)
def test_every_family_matches_float64_on_texts_run_alone(arch):
    lm = tiny_lm(arch)
    recs = random_pairs(14)
    r = directions(lm, pairs=recs, heldout=0.3, batch_size=5, progress=False)
    assert r.sites == ["embed"] + [f"resid.{i}" for i in range(lm.n_layers)]
    check_against_reference(r, reference(lm, recs, "last", 0.3, 0.1, r.sites))


@pytest.mark.parametrize("position", ["all", "span"])
def test_positions_all_and_span_match_float64(position):
    lm = tiny_lm("llama")
    recs = random_pairs(12, span=position == "span")
    with pytest.warns(UserWarning, match="singular") if position == "span" else _nothing():
        r = directions(lm, pairs=recs, position=position, heldout=0.25, lda_ridge=0.3, batch_size=4, progress=False)
    check_against_reference(r, reference(lm, recs, position, 0.25, 0.3, r.sites))
    assert r.facts[1]["n_pos"] > 9  # several rows per text


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def test_invariant_to_batch_size_and_layer_choice():
    lm = tiny_lm("qwen2")
    recs = random_pairs(11)
    runs = [directions(lm, pairs=recs, heldout=0.3, batch_size=b, progress=False) for b in (1, 4, 11)]
    for r in runs[1:]:
        for k in KINDS:
            torch.testing.assert_close(r.vectors[k], runs[0].vectors[k], rtol=0, atol=1e-4)
        assert_same_heldout(r, runs[0])
    one = directions(lm, pairs=recs, heldout=0.3, layers=[1], progress=False)
    assert one.sites == ["embed", "resid.1"]
    torch.testing.assert_close(one.vectors["lda"][1], runs[0].vectors["lda"][2], rtol=0, atol=1e-4)


def _dist_worker(rank, world, init_file, model_dir, recs, out):
    import torch.distributed as dist

    from fusedlens.core.models import load_model

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    r = directions(load_model(model_dir), pairs=recs, heldout=0.3, batch_size=2, progress=False)
    torch.save({"vectors": r.vectors, "mean_pos": r.mean_pos, "heldout": r.heldout,
                "heldout_scores": r.heldout_scores, "heldout_labels": r.heldout_labels}, f"{out}.{rank}")
    dist.destroy_process_group()


def test_two_processes_give_the_single_process_result(tmp_path, model_dir, lm):
    recs = random_pairs(13)
    torch.multiprocessing.spawn(_dist_worker, args=(2, str(tmp_path / "init"), model_dir, recs,
                                                    str(tmp_path / "out")), nprocs=2)
    one = directions(lm, pairs=recs, heldout=0.3, batch_size=2, progress=False)
    for rank in range(2):
        got = torch.load(str(tmp_path / f"out.{rank}"), weights_only=False)
        torch.testing.assert_close(got["mean_pos"], one.mean_pos, rtol=0, atol=1e-5 * float(one.mean_pos.abs().max()))
        for k in KINDS:
            torch.testing.assert_close(got["vectors"][k], one.vectors[k], rtol=0, atol=1e-4)
        assert_same_heldout(SimpleNamespace(sites=one.sites, **{k: got[k] for k in
                                                               ("heldout", "heldout_scores", "heldout_labels")}), one)


def test_save_contract_load_and_scan(tmp_path):
    lm = tiny_lm("gemma2")
    r = directions(lm, pairs=random_pairs(10), heldout=0.2, progress=False)
    pt, js = r.save(str(tmp_path / "out"))
    obj = torch.load(pt, weights_only=True)
    S, d = len(r.sites), lm.d_model
    assert obj["format"] == "fusedlens.directions/1" and isinstance(obj["model"], str)
    assert obj["sites"] == r.sites and obj["position"] == "last" and obj["lda_ridge"] == 0.1
    assert set(obj["vectors"]) == set(KINDS)
    for k in KINDS:
        v = obj["vectors"][k]
        assert v.dtype == torch.float32 and v.shape == (S, d)
        torch.testing.assert_close(v.double().norm(dim=1), torch.ones(S, dtype=torch.float64), rtol=0, atol=1e-6)
    for name in ("mean_pos", "mean_neg"):
        assert obj[name].dtype == torch.float64 and obj[name].shape == (S, d)
    back = DirectionsResult.load(pt)
    assert torch.equal(back.midpoints(), r.midpoints())
    data = json.loads(open(js).read())
    assert [row["site"] for row in data["sites"]] == r.sites
    assert set(data["sites"][2]["lda"]) == {"accuracy", "auroc"} and data["sites"][2]["n_pairs"] == 8
    text = "a good bad text"
    scan = back.scan(lm, text, "lda")
    h = captured_rows(lm, read_pairs(TOK, pairs=[{"pos": text, "neg": "x"}], position="all")[0][0][0], r.sites)
    raw = torch.einsum("sd,std->st", r.vectors["lda"].double(), h) - r.midpoints()[:, 2, None]
    torch.testing.assert_close(scan["raw"], raw, rtol=0, atol=1e-5 * float(raw.abs().max()))
    torch.testing.assert_close(scan["values"], raw / r.half_gaps()[:, 2, None], rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="kind"):
        back.scan(lm, text, "ica")


def test_bad_input_is_one_line(tmp_path):
    lm = tiny_lm("llama")
    broken = tiny_model("llama")
    with torch.no_grad():
        broken.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    recs = random_pairs(6)
    with pytest.raises(ValueError, match=r"residuals: \d+ NaN/Inf value\(s\) at site\(s\) resid.1, resid.2"):
        directions(LensModel.from_hf(broken, TOK), pairs=recs, progress=False)
    for kw, msg in ((dict(pos=["a", "b"], neg=["c"]), "neg: 1 examples but pos has 2"),
                    (dict(pairs=recs, lda_ridge=-1), "lda_ridge"), (dict(pairs=recs, batch_size=0), "batch_size"),
                    (dict(pairs=recs[:2], heldout=0.5), "heldout"), (dict(pairs=recs, layers=[7]), "layers"),
                    (dict(labeled=[{"text": "a", "label": "x"}] * 3), "labeled: expected two classes"),
                    (dict(pairs=[{"pos": "a" * 200, "neg": "b"}] * 4), r"\(pos\): 200 tokens, more than the model's")):
        with pytest.raises(ValueError, match=msg):
            directions(lm, progress=False, **kw)


def run_cli_with_scan(model_dir, tmp_path):
    """`fusedlens directions` on 10 random pairs with a PCA scan of a short text; returns its output folder."""
    from fusedlens.cli import main

    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in random_pairs(10)))
    out = tmp_path / "out"
    assert main(["directions", "--model", model_dir, "--pairs", str(path), "--out", str(out), "--scan-text",
                 "good and bad", "--scan-kind", "pca", "--heldout", "0.3", "--no-progress"]) == 0
    return out


def test_cli_writes_everything_and_bad_input_exits_2(tmp_path, model_dir, capsys):
    from fusedlens.cli import main

    out = run_cli_with_scan(model_dir, tmp_path)
    for name in ("directions.pt", "directions.json", "directions.png", "directions_scan.png"):
        assert (out / name).stat().st_size > 0, name
    assert "held-out accuracy" in capsys.readouterr().out
    (tmp_path / "pos.jsonl").write_text('{"text": "x"}\n{"text": "y"}\n')
    (tmp_path / "neg.jsonl").write_text('{"text": "z"}\n')
    assert main(["directions", "--model", model_dir, "--pos", str(tmp_path / "pos.jsonl"), "--neg",
                 str(tmp_path / "neg.jsonl"), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # (after the model loader's own progress)
    assert err == ("fusedlens directions: error: neg: 1 examples but pos has 2: the PCA of paired differences "
                   "needs one negative per positive")


def test_real_model_matches_float64(real_lm):
    """SmolLM2 on 16 of the committed sentiment pairs, three layers: streamed = float64 run one text at a time."""
    lines = open("bench/data/sentiment_pairs.jsonl").read().splitlines()
    recs = [json.loads(x) for x in random.sample(lines, 16)]
    r = directions(real_lm, pairs=recs, layers=[3, 14, 29], heldout=0.25, batch_size=8, progress=False)
    assert r.sites == ["embed", "resid.3", "resid.14", "resid.29"]
    check_against_reference(r, reference(real_lm, recs, "last", 0.25, 0.1, r.sites))


def test_the_three_input_forms_give_the_same_vectors(tmp_path):
    """pos + neg files, pairs and a labeled file of the same contrast: the same batches, bit for bit."""
    lm = tiny_lm("phi3")
    recs = random_pairs(9)
    pos, neg = tmp_path / "pos.jsonl", tmp_path / "neg.jsonl"
    pos.write_text("".join(json.dumps({"text": r["pos"]}) + "\n" for r in recs))
    neg.write_text("".join(json.dumps({"text": r["neg"]}) + "\n" for r in recs))
    labeled = [x for r in recs for x in ({"text": r["neg"], "s": "minus"}, {"text": r["pos"], "s": "plus"})]
    runs = [directions(lm, pairs=recs, progress=False),
            directions(lm, pos=str(pos), neg=str(neg), progress=False),
            directions(lm, labeled=labeled, label_key="s", positive="plus", progress=False)]
    for r in runs[1:]:
        for k in KINDS:
            assert torch.equal(r.vectors[k], runs[0].vectors[k])
        assert r.heldout == runs[0].heldout
    assert runs[2].meta["positive"] == "plus"


def test_one_token_texts_and_one_layer():
    lm = tiny_lm("mistral")
    letters = random.sample(string.ascii_letters, 20)
    recs = [{"pos": letters[i], "neg": letters[10 + i]} for i in range(10)]
    r = directions(lm, pairs=recs, layers=[-1], heldout=0.3, batch_size=3, progress=False)
    assert r.sites == ["embed", f"resid.{lm.n_layers - 1}"] and r.facts[0]["n_pos"] == 7
    check_against_reference(r, reference(lm, recs, "last", 0.3, 0.1, r.sites))
