"""LogitLens end to end: text or ids → LensResult, against the float64 reference on the captured residuals."""
import json

import numpy as np
import pytest
import torch

from conftest import backends_here
from fusedlens import LensModel, LensResult, LogitLens, capture_residuals, report
from fusedlens.ops import reference
from fusedlens.core.checks import IGNORE_INDEX
from test_ops_lens_stats import assert_close_stats, float32_error, float64_logits
from tiny_models import VOCAB, tiny_model, tiny_tokenizer

ARCHS3 = ("llama", "gpt2", "gemma2")  # RMSNorm; LayerNorm with absolute positions; Gemma norm + soft-cap
FLOATS = ("lse", "entropy", "kl_to_final", "target_logit", "target_logprob")
TEXTS = ["The cat sat on the mat.", "A much longer second text,\nwith two lines and $ signs."]


@pytest.fixture(scope="module", params=ARCHS3)
def lm(request):
    return LensModel.from_hf(tiny_model(request.param), tiny_tokenizer())


def tokenize(lm, text):
    return torch.tensor(lm.tokenizer(text)["input_ids"])


def clear_top1(logits64, gap=1e-3):
    """Rows whose float64 top-1 leads the runner-up by more than float32 noise."""
    top2 = logits64.topk(2, -1).values
    return top2[..., 0] - top2[..., 1] > gap


def assert_same_result(got, want, atol=1e-4, rtol=1e-5, clear=None):
    """Same rows; statistics equal up to float32 summation order; ids equal where there is no near-tie."""
    assert got.sites == want.sites
    for name in ("input_ids", "targets", "batch_index", "position"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name
    for name in FLOATS:
        torch.testing.assert_close(getattr(got.stats, name), getattr(want.stats, name), atol=atol, rtol=rtol,
                                   equal_nan=True, msg=name)
    clear = torch.ones_like(want.stats.top1, dtype=torch.bool) if clear is None else clear
    assert torch.equal(got.stats.top1[clear], want.stats.top1[clear])


CONFIGS = [dict(), dict(layers=[0], mid=True, embed=False)]


@pytest.mark.parametrize("backend,dtype", [(b, torch.float32) for b in backends_here()] + [("torch", torch.float64)],
                         ids=lambda v: str(v).removeprefix("torch."))
@pytest.mark.parametrize("config", CONFIGS, ids=["all", "mid"])
def test_stats_match_reference(lm, backend, dtype, config):
    ids = torch.randint(0, VOCAB, (3, 11))  # same length: LogitLens runs exactly this batch, so the rows are identical
    lens = LogitLens(lm, k=5, backend=backend, dtype=dtype, **config)
    got = lens.run(ids, batch_size=3)
    L = lm.n_layers
    assert got.sites == (["embed"] + [f"resid.{i}" for i in range(L)] if not config
                         else ["mid.0", "resid.0", f"mid.{L - 1}", f"resid.{L - 1}"])
    res = capture_residuals(lm, ids, **{**config, **({"layers": [0, L - 1]} if config else {})})
    assert res.sites == got.sites
    want = reference.lens_stats(res.hidden, lm.norm, lm.unembed, res.targets, 5)
    logits = float64_logits(res.hidden, lm.norm, lm.unembed)
    assert_close_stats(got.stats, want, logits, res.targets, float32_error(res.hidden, lm.norm, lm.unembed, logits))
    assert got.stats.lse.dtype == dtype
    assert torch.equal(got.targets, res.targets) and torch.equal(got.input_ids, ids.reshape(-1))
    assert got.batch_index.tolist() == [b for b in range(3) for _ in range(11)]
    assert got.position.tolist() == list(range(11)) * 3


@pytest.mark.parametrize("compute", ["auto", "fp32"])
def test_bfloat16_model_matches_reference(compute):
    # "auto" on a bf16 model multiplies in bf16 (the reference rounds the same operands).
    lm = LensModel.from_hf(tiny_model("llama").to(torch.bfloat16))
    ids = torch.randint(0, VOCAB, (2, 9))
    got = LogitLens(lm, k=4, compute=compute).run(ids)
    res = capture_residuals(lm, ids)
    assert res.hidden.dtype == torch.bfloat16
    mode = "bf16" if compute == "auto" else compute
    want = reference.lens_stats(res.hidden, lm.norm, lm.unembed, res.targets, 4, compute=mode)
    logits = float64_logits(res.hidden, lm.norm, lm.unembed, mode)
    assert_close_stats(got.stats, want, logits, res.targets,
                       float32_error(res.hidden, lm.norm, lm.unembed, logits, mode))


def test_text_equals_ids(lm):
    lens = LogitLens(lm, k=3)
    one = lens.run(TEXTS[1])
    assert torch.equal(one.input_ids, tokenize(lm, TEXTS[1]))
    assert_same_result(one, lens.run(tokenize(lm, TEXTS[1])), atol=0, rtol=0)
    # a list of texts = the tokenizer's own padded batch with its mask
    enc = lm.tokenizer(TEXTS, padding=True, return_tensors="pt")
    assert not bool(enc.attention_mask.all())
    assert_same_result(lens.run(TEXTS), lens.run(enc.input_ids, attention_mask=enc.attention_mask), atol=0, rtol=0)


def test_long_text_is_cut_into_sequences(lm):
    text = TEXTS[1]
    n = len(text)  # one token per character
    got = LogitLens(lm, k=2).run(text, seq_len=8, batch_size=2)
    starts = list(range(0, n, 8))
    assert got.batch_index.tolist() == [j for j, s in enumerate(starts) for _ in range(min(8, n - s))]
    assert got.position.tolist() == [p for s in starts for p in range(min(8, n - s))]
    ends = got.position == torch.tensor([min(8, n - s) - 1 for s in starts])[got.batch_index]
    assert torch.all(got.targets[ends] == IGNORE_INDEX) and torch.all(got.targets[~ends] >= 0)
    assert "".join(got.tokens(lm.tokenizer)) == text
    assert "".join(got.sequence(1).tokens(lm.tokenizer)) == text[8:16]


@torch.no_grad()
def test_padded_batch_equals_one_by_one(lm):
    lens = LogitLens(lm, k=5)
    batch = lens.run(TEXTS, batch_size=2)
    alone = [lens.run(t) for t in TEXTS]
    assert batch.batch_index.tolist() == [0] * len(TEXTS[0]) + [1] * len(TEXTS[1])
    stats = reference.LensStats.cat([a.stats for a in alone])
    joined = LensResult(sites=alone[0].sites, stats=stats, input_ids=torch.cat([a.input_ids for a in alone]),
                        targets=torch.cat([a.targets for a in alone]), batch_index=batch.batch_index,
                        position=torch.cat([a.position for a in alone]))
    hidden = torch.cat([capture_residuals(lm, tokenize(lm, t)).hidden for t in TEXTS], 1)
    assert_same_result(batch, joined, clear=clear_top1(lm.decode(hidden.double())))
    # Left padding given by the user (GPT-2 counts positions) gives the same as well.
    ids = torch.zeros(2, len(TEXTS[1]), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, text in enumerate(TEXTS):
        ids[row, -len(text):], mask[row, -len(text):] = tokenize(lm, text), 1
    assert_same_result(lens.run(ids, attention_mask=mask), joined, clear=clear_top1(lm.decode(hidden.double())))


@torch.no_grad()
def test_final_top1_is_the_model_argmax(lm):
    ids = torch.randint(0, VOCAB, (2, 13))
    got = LogitLens(lm, k=1).run(ids)
    logits = lm.model(input_ids=ids).logits.flatten(0, 1).double()
    clear = clear_top1(logits)
    assert clear.float().mean() > 0.9
    assert torch.equal(got.stats.top1[-1][clear], logits.argmax(-1)[clear])
    torch.testing.assert_close(got.stats.lse[-1].double(), torch.logsumexp(logits, -1), atol=1e-4, rtol=1e-5)
    assert torch.all(got.stats.kl_to_final[-1] == 0)


def test_summary_by_hand(lm):
    got = LogitLens(lm, k=2).run(TEXTS, seq_len=10, batch_size=3)
    st = {name: None if t is None else t.double().numpy() for name, t in got.stats.items()}
    top1 = got.stats.top1.numpy()
    tgt = got.targets.numpy()
    has = tgt >= 0
    rows = got.summary()
    assert [r["site"] for r in rows] == got.sites
    for i, r in enumerate(rows):
        want = {"kl_to_final": st["kl_to_final"][i].mean(), "entropy": st["entropy"][i].mean(),
                "top1_agreement": (top1[i] == top1[-1]).mean(),
                "next_token_accuracy": (top1[i][has] == tgt[has]).mean(),
                "target_logprob": st["target_logprob"][i][has].mean(),
                "target_rank_median": np.median(st["target_rank"][i][has]),
                "final_top1_rank_median": np.median(st["final_top1_rank"][i]),
                "settled_fraction": (st["prediction_depth"] <= i).mean()}
        assert set(r) == set(want) | {"site"}
        for key, value in want.items():
            assert r[key] == pytest.approx(float(value), rel=1e-12, abs=1e-12), (r["site"], key)
    # Prediction depth by its definition: the first site from which every later top-1 is the final one.
    depth = [next(s for s in range(len(top1)) if all(top1[u, t] == top1[-1, t] for u in range(s, len(top1))))
             for t in range(top1.shape[1])]
    assert got.stats.prediction_depth.tolist() == depth
    assert got.mean_prediction_depth == pytest.approx(np.mean(depth))
    assert got.mean_prediction_depth == pytest.approx(sum(1 - r["settled_fraction"] for r in rows))


def test_save_json_round_trip_and_sequence(lm, tmp_path):
    got = LogitLens(lm, k=3).run(TEXTS, seq_len=12)
    path = tmp_path / "lens.json"
    got.save_json(str(path))
    back = LensResult.load_json(str(path))
    assert back.sites == got.sites
    for name in ("input_ids", "targets", "batch_index", "position"):
        assert torch.equal(getattr(back, name), getattr(got, name))
    for name, t in got.stats.items():
        b = getattr(back.stats, name)
        if t is None:  # set_mass: no token sets were asked for
            assert b is None, name
            continue
        assert b.dtype == t.dtype and b.shape == t.shape
        torch.testing.assert_close(b, t, atol=0, rtol=0, equal_nan=True)
    assert json.loads(path.read_text())["summary"] == got.summary() == back.summary()
    one = got.sequence(2)
    rows = got.batch_index == 2
    assert torch.equal(one.position, torch.arange(int(rows.sum())))
    assert torch.equal(one.stats.lse, got.stats.lse[:, rows])
    assert torch.equal(one.stats.prediction_depth, got.stats.prediction_depth[rows])
    with pytest.raises(ValueError, match="format"):
        LensResult.from_dict({"sites": []})
    with pytest.raises(ValueError, match="seq"):
        got.sequence(got.n_sequences)


def test_progress_bar(lm, capsys):
    LogitLens(lm).run(TEXTS, progress=True)
    assert "logit lens" in capsys.readouterr().err


def test_grid_plot_writes_png(lm, tmp_path):
    import matplotlib.image

    got = LogitLens(lm, k=1).run(TEXTS)
    path = tmp_path / "grid.png"
    report.plot_lens_grid(got, lm.tokenizer, str(path), seq=1, max_positions=12)
    image = matplotlib.image.imread(str(path))
    assert image.shape[0] > 300 and image.shape[1] > 600 and image[..., :3].std() > 0.05
    with pytest.raises(ValueError, match="seq"):
        report.plot_lens_grid(got, lm.tokenizer, str(path), seq=2)
    with pytest.raises(ValueError, match="max_positions"):
        report.plot_lens_grid(got, lm.tokenizer, str(path), max_positions=0)


@pytest.mark.parametrize("make,run_kwargs,match", [
    (dict(), dict(inputs=""), "text 0 is empty"),
    (dict(), dict(inputs=["ok", "  "]), "text 1 is empty"),
    (dict(), dict(inputs=[]), "empty list"),
    (dict(), dict(inputs=3), "inputs"),
    (dict(), dict(inputs=torch.tensor([[1, 2, VOCAB]])), "outside"),
    (dict(), dict(inputs=torch.tensor([-1, 2])), "outside"),
    (dict(), dict(inputs=torch.tensor([1.0, 2.0])), "integer"),
    (dict(), dict(inputs=torch.zeros(1, 0, dtype=torch.long)), "empty"),
    (dict(), dict(inputs="text", attention_mask=torch.ones(4)), "attention_mask"),
    (dict(), dict(inputs=torch.ones(2, 3, dtype=torch.long), attention_mask=torch.ones(2, 2)), "attention_mask"),
    (dict(), dict(inputs=torch.ones(2, 3, dtype=torch.long), attention_mask=torch.tensor([[1, 1, 1], [0, 0, 0]])),
     "row 1 has no real token"),
    (dict(), dict(inputs=torch.ones(1, 3, dtype=torch.long), attention_mask=torch.tensor([[1, 0, 1]])), "between"),
    (dict(), dict(inputs="text", seq_len=0), "seq_len"),
    (dict(), dict(inputs="text", batch_size=0), "batch_size"),
    (dict(layers=[5]), None, "layers"),
    (dict(layers=[]), None, "layers"),
    (dict(layers="0"), None, "layers"),
    (dict(layers=[0.5]), None, "layers"),
    (dict(k=0), None, "k:"),
    (dict(k=33), None, "k:"),
    (dict(backend="cuda"), None, "backend"),
    (dict(dtype=torch.int32), None, "dtype"),
])
def test_bad_input(make, run_kwargs, match):
    lm = LensModel.from_hf(tiny_model("llama"), tiny_tokenizer())
    with pytest.raises(ValueError, match=match):
        LogitLens(lm, **make).run(**run_kwargs)


def test_text_without_tokenizer():
    lm = LensModel.from_hf(tiny_model("llama"))
    with pytest.raises(ValueError, match="tokenizer"):
        LogitLens(lm).run("some text")
    LogitLens(lm).run(torch.tensor([5, 6, 7]))  # ids need none


@torch.no_grad()
def test_real_model_final_site(real_lm):
    prompt = "The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is"
    got = LogitLens(real_lm, layers=[14], mid=True, k=5).run(prompt)  # a few sites: the GEMM is the cost here
    ids = real_lm.tokenizer(prompt, return_tensors="pt").input_ids
    assert 15 <= ids.shape[1] <= 30 and torch.equal(got.input_ids, ids[0])
    assert got.sites == ["embed", "mid.14", "resid.14", "mid.29", "resid.29"]
    logits = real_lm.model(ids).logits[0].double()
    clear = clear_top1(logits)
    assert clear.float().mean() > 0.9
    assert torch.equal(got.stats.top1[-1][clear], logits.argmax(-1)[clear])
    assert torch.all(got.stats.kl_to_final[-1] == 0)
    torch.testing.assert_close(got.stats.lse[-1].double(), torch.logsumexp(logits, -1), atol=1e-4, rtol=1e-5)
    assert real_lm.tokenizer.decode([int(got.stats.top1[-1, -1])]).strip() == "Rome"
