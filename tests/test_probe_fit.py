"""fusedlens.probe end to end: tiny real architectures against materialised float64 fits (also of lagged,
filtered and one-hot designs), the real model via the CLI."""
import json

import numpy as np
import pytest
import torch

from fusedlens import cli, ops
from fusedlens.ops import reference
from fusedlens.core.capture import capture_residuals
from fusedlens.core.models import LensModel
from fusedlens.data.windows import windows
from fusedlens.probe import TARGETS
from fusedlens.probe import fit_probes as probe
from fusedlens.probe.user_targets import TargetFile
from ridge_bounds import fp32_gram_r2_bound
from tiny_models import VOCAB, tiny_model

TRAIN, HELD, SEQ = 150, 70, 40


def materialise(lm, ids):
    """Per split: residuals of every site [S, rows, d] (float64) and the targets (logit, logprob, entropy, loss,
    position) as the fused ops compute them, after checking those against the float64 reference."""
    out = []
    for lo, hi in ((0, TRAIN), (TRAIN, TRAIN + HELD)):
        xs, ys = [], []
        for w in windows(ids[lo:hi + 1], SEQ, overlap=1):
            res = capture_residuals(lm, w[None])
            keep = res.targets != -100
            h, tgt = res.hidden[-1:, keep], res.targets[keep]
            un = lm.unembed
            logit = ops.target_logit(lm.norm(h[0]), un.weight, tgt, un.bias, softcap=un.softcap).double()
            final = ops.lens_stats(h, lm.norm, un)
            lse, entropy = final.lse[0].double(), final.entropy[0].double()
            y = torch.stack([logit, logit - lse, entropy, lse - logit, res.position[keep].double()], 1)
            ref = reference.lens_stats(h, lm.norm, un, tgt)  # float64: the fp32 targets are right
            want = torch.stack([ref.target_logit[0], ref.target_logprob[0], ref.entropy[0], -ref.target_logprob[0]], 1)
            assert bool(((y[:, :4] - want).abs() <= 1e-4 + 1e-5 * want.abs()).all())
            ys.append(y)
            xs.append(res.hidden[:, keep].double())
        out.append((torch.cat(xs, 1).numpy(), torch.cat(ys).numpy()))
    return out


def r2_of_ridge(X, Y, Xh, Yh, alpha):
    """float64 ridge with an unpenalised intercept, λ = α·tr(Gc)/d: R² on train and held-out."""
    mx, my = X.mean(0), Y.mean(0)
    G = (X - mx).T @ (X - mx)
    w = np.linalg.solve(G + alpha * np.trace(G) / X.shape[1] * np.eye(X.shape[1]), (X - mx).T @ (Y - my))
    r2 = lambda Xv, Yv: 1 - ((Yv - (Xv - mx) @ w - my) ** 2).sum(0) / ((Yv - Yv.mean(0)) ** 2).sum(0)
    return r2(X, Y), r2(Xh, Yh)


@pytest.mark.parametrize("arch", ["gemma2", "llama"])  # softcap and Gemma's norm; an lm_head bias
def test_probe_matches_materialised_float64_ridge_on_tiny_models(arch):
    lm = LensModel.from_hf(tiny_model(arch, lm_head_bias=arch == "llama"))
    ids = torch.randint(0, VOCAB, (TRAIN + HELD + 1,))
    position = lambda res: res.position  # a function of the batch
    result = probe(lm, ids, train_tokens=TRAIN, heldout_tokens=HELD, seq_len=SEQ, targets=TARGETS,
                   extra_targets={"pos": position}, folds=3, alphas=[0.05], progress=False)
    assert result.sites == ["embed", "resid.0", "resid.1", "resid.2"]
    assert result.targets == [f"{t}@lag0" for t in list(TARGETS) + ["pos"]]
    (X, Y), (Xh, Yh) = materialise(lm, ids)
    for s, fits in enumerate(result.fits):
        r2_train, r2_held = r2_of_ridge(X[s], Y, Xh[s], Yh, 0.05)
        g_train, g_held, tol_train, tol_held = fp32_gram_r2_bound(X[s], Y, Xh[s], Yh, 0.05, TRAIN)
        np.testing.assert_allclose(g_train, r2_train, rtol=0, atol=1e-9)  # the Gram form is the same ridge
        np.testing.assert_allclose(g_held, r2_held, rtol=0, atol=1e-9)
        for j, fit in enumerate(fits):
            assert fit["n_train"] == TRAIN and fit["n_heldout"] == HELD and fit["rank"] == X.shape[2]
            assert abs(fit["r2_train"] - r2_train[j]) <= tol_train[j], (s, j, tol_train[j])
            assert abs(fit["r2_heldout"] - r2_held[j]) <= tol_held[j], (s, j, tol_held[j])
    assert result.fits[0][1]["r2_train"] == pytest.approx(result.fits[0][3]["r2_train"], abs=1e-9)  # loss = −logprob


def test_user_tensor_target_and_layer_choice():
    lm = LensModel.from_hf(tiny_model("llama"))
    ids = torch.randint(0, VOCAB, (TRAIN + HELD + 1,))
    (X, _), _ = materialise(lm, ids)
    w = torch.randn(X.shape[2], 2).double()
    site = 2  # resid.1
    pre = torch.cat([torch.from_numpy(X[site]) @ w, torch.zeros(HELD, 2)]).float()  # exact linear targets on train
    result = probe(lm, ids, train_tokens=TRAIN, heldout_tokens=HELD, seq_len=SEQ, layers=[1], embed=False,
                   targets=(), extra_targets={"lin": pre}, folds=2, alphas=[0.0, 1.0], progress=False)
    assert result.sites == ["resid.1"] and result.targets == ["lin.0@lag0", "lin.1@lag0"]
    for fit in result.fits[0]:
        assert fit["alpha"] == 0.0 and fit["r2_train"] > 1 - 1e-6


def test_bad_probe_arguments_are_clear_errors():
    lm = LensModel.from_hf(tiny_model("llama"))
    ids = torch.randint(0, VOCAB, (100,))
    with pytest.raises(ValueError, match="corpus: 100 tokens, need"):
        probe(lm, ids, train_tokens=90, heldout_tokens=20, progress=False)
    with pytest.raises(ValueError, match="targets: expected distinct names"):
        probe(lm, ids, train_tokens=40, heldout_tokens=20, targets=("logits",), progress=False)
    with pytest.raises(ValueError, match=r"extra_targets\['t'\]: expected \[60\]"):
        probe(lm, ids, train_tokens=40, heldout_tokens=20, extra_targets={"t": torch.zeros(59)}, progress=False)
    with pytest.raises(ValueError, match=r"extra_targets\['f'\]: the function gave shape \(3,\)"):
        probe(lm, ids, train_tokens=40, heldout_tokens=20, seq_len=16, extra_targets={"f": lambda res: torch.zeros(3)},
              folds=2, progress=False)
    with pytest.raises(ValueError, match="folds: 3 folds need at least 3 training sequences"):
        probe(lm, ids, train_tokens=40, heldout_tokens=20, seq_len=32, folds=3, progress=False)
    with pytest.raises(ValueError, match="corpus: text needs a model with a tokenizer"):
        probe(lm, "some text", train_tokens=4, heldout_tokens=2, folds=2, progress=False)


def test_cli_probe_on_the_real_model(real_lm, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("fusedlens.core.models.load_model", lambda *a, **k: real_lm)
    assert "probe" in cli.build_parser().format_help()
    rc = cli.main(["probe", "--train-tokens", "120", "--heldout-tokens", "60", "--seq-len", "40", "--folds", "2",
                   "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "R2 held-out" in printed and "resid.29" in printed and "claim:" in printed
    saved = json.loads((tmp_path / "probe.json").read_text())
    assert saved["targets"] == [f"{t}@lag0" for t in TARGETS] and len(saved["layers"]) == 31
    final = saved["layers"][-1]["targets"]
    for fit in final.values():
        assert fit["n_train"] == 120 and fit["n_heldout"] == 60 and np.isfinite(fit["r2_heldout"])
        assert fit["r2_train"] >= fit["r2_val"]  # 120 rows in 576 dimensions: the fit is optimistic in-sample
    assert set(saved["claim"]) >= {"statement", "holds", "min_r2_heldout"}
    assert (tmp_path / "probe_r2.png").stat().st_size > 10_000
    assert cli.main(["probe", "--targets", "logit,nope", "--out", str(tmp_path)]) == 2
    assert "targets" in capsys.readouterr().err


def test_probe_layers_out_of_range_are_errors():
    # 0.1 took i % n_layers: layers=[7] on a 3-layer model probed layer 1
    lm = LensModel.from_hf(tiny_model("llama"))
    ids = torch.randint(0, VOCAB, (100,))
    for layers in ([7], [-4], [0, 3]):
        with pytest.raises(ValueError, match=r"layers: expected block indices in \[-3, 3\)"):
            probe(lm, ids, train_tokens=40, heldout_tokens=20, layers=layers, folds=2, progress=False)


def test_cli_probe_with_lags_and_a_targets_file_on_the_real_model(real_lm, tmp_path, capsys, monkeypatch):
    """Both lags' tables and claims; a JSONL of sentences with a class label, probed at each
    sentence's last token."""
    monkeypatch.setattr("fusedlens.core.models.load_model", lambda *a, **k: real_lm)
    rc = cli.main(["probe", "--lag", "0", "--lag", "-1", "--targets", "logit", "--train-tokens", "120",
                   "--heldout-tokens", "60", "--seq-len", "40", "--folds", "2", "--out", str(tmp_path / "lags"),
                   "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "held logit@lag-1" in printed and printed.count("claim:") == 2 and "'logit@lag-1'" in printed
    saved = json.loads((tmp_path / "lags" / "probe.json").read_text())
    assert saved["targets"] == ["logit@lag0", "logit@lag-1"] and saved["lags"] == [0, -1]
    n_windows = 3  # 120 training tokens in windows of 40: lag -1 drops each window's first row
    lag1 = saved["layers"][5]["targets"]["logit@lag-1"]
    assert lag1["n_train"] == 120 - n_windows and saved["layers"][5]["targets"]["logit@lag0"]["n_train"] == 120

    animals = ["The cat sleeps on the warm mat.", "A dog runs across the green field.",
               "The horse eats fresh hay slowly.", "My bird sings every single morning."]
    cities = ["Paris is the capital of France.", "Rome has many old churches.",
              "Berlin is a large German city.", "Tokyo is busy and very bright."]
    lines = []
    for i in range(12):
        text, label = (animals[i % 4], "animal") if i % 2 == 0 else (cities[i % 4], "city")
        lines.append({"text": text, "label": label})
    path = tmp_path / "sentences.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    rc = cli.main(["probe", "--targets-file", str(path), "--targets", "entropy", "--positions", "-1",
                   "--train-tokens", "40", "--heldout-tokens", "20", "--folds", "2", "--out", str(tmp_path / "file"),
                   "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "acc label@lag0" in printed and "F1 label@lag0" in printed
    saved = json.loads((tmp_path / "file" / "probe.json").read_text())
    assert saved["classes"] == {"label@lag0": ["animal", "city"]}
    assert saved["targets"] == ["entropy@lag0"] and saved["positions"] == "-1"
    row = saved["layers"][-1]
    assert row["classes"]["label@lag0"]["n_heldout"] >= 2 and 0 <= row["classes"]["label@lag0"]["accuracy"] <= 1
    assert (tmp_path / "file" / "probe_r2.png").stat().st_size > 10_000


# lags, missing values and classes: a tiny llama, windows of 40, one penalty
LTRAIN, LHELD, LSEQ, ALPHA = 160, 80, 40, 0.05


@pytest.fixture(scope="module")
def llama():
    return LensModel.from_hf(tiny_model("llama"))


def window_data(llama, ids):
    """Per split, per window: the residuals [S, n, d] (float64) and the correct-token logit [n] of its rows."""
    out = []
    for lo, hi in ((0, LTRAIN), (LTRAIN, LTRAIN + LHELD)):
        part = []
        for w in windows(ids[lo:hi + 1], LSEQ, overlap=1):
            res = capture_residuals(llama, w[None])
            keep = res.targets != -100
            y = ops.target_logit(llama.norm(res.hidden[-1, keep]), llama.unembed.weight, res.targets[keep],
                                 llama.unembed.bias).double()
            part.append((res.hidden[:, keep].double(), y))
        out.append(part)
    return out


def shifted(part, lag):
    """The hand-shifted design of one split: row t of each window against y[t + lag] of the same window."""
    xs, ys = [], []
    for x, y in part:
        n = y.numel()
        rows = torch.arange(max(0, -lag), min(n, n - lag))
        xs.append(x[:, rows])
        ys.append(y[rows + lag])
    return torch.cat(xs, 1).numpy(), torch.cat(ys)[:, None].numpy()


@pytest.mark.parametrize("lag", [-1, 2])
def test_lagged_targets_equal_a_hand_shifted_design(llama, lag):
    ids = torch.randint(0, VOCAB, (LTRAIN + LHELD + 1,))
    result = probe(llama, ids, train_tokens=LTRAIN, heldout_tokens=LHELD, seq_len=LSEQ, targets=("logit",),
                   lags=(0, lag), folds=2, alphas=[ALPHA], progress=False)
    assert result.targets == ["logit@lag0", f"logit@lag{lag}"]
    assert [c["target"] for c in result.claims()] == result.targets
    train, held = window_data(llama, ids)
    for j, k in enumerate((0, lag)):
        (X, Y), (Xh, Yh) = shifted(train, k), shifted(held, k)
        windows_train = -(-LTRAIN // LSEQ)
        assert X.shape[1] == LTRAIN - abs(k) * windows_train
        for s, fits in enumerate(result.fits):
            _, _, tol_train, tol_held = fp32_gram_r2_bound(X[s], Y, Xh[s], Yh, ALPHA, LSEQ)
            r2_train, r2_held = _ridge_r2(X[s], Y, Xh[s], Yh, ALPHA)
            fit = fits[j]
            assert fit["n_train"] == X.shape[1] and fit["n_heldout"] == Xh.shape[1]
            assert abs(fit["r2_train"] - r2_train) <= tol_train[0], (k, s)
            assert abs(fit["r2_heldout"] - r2_held) <= tol_held[0], (k, s)


def _ridge_r2(X, Y, Xh, Yh, alpha):
    mx, my = X.mean(0), Y.mean(0)
    G = (X - mx).T @ (X - mx)
    w = np.linalg.solve(G + alpha * np.trace(G) / X.shape[1] * np.eye(X.shape[1]), (X - mx).T @ (Y - my))
    r2 = lambda Xv, Yv: 1 - ((Yv - (Xv - mx) @ w - my) ** 2).sum() / ((Yv - Yv.mean(0)) ** 2).sum()
    return r2(X, Y), r2(Xh, Yh)


def _file(llama, n_seq=12, length=20, seed=0):
    """A target file of random sequences: a numeric target with nulls (NaN) on a third of the tokens, and a
    3-class label that is a linear function of the last site's residual, so that a probe can get it."""
    g = torch.Generator().manual_seed(seed)
    seqs = [torch.randint(0, VOCAB, (length,), generator=g) for _ in range(n_seq)]
    proj = torch.randn(llama.d_model, 3, generator=g)
    num, label = [], []
    for s in seqs:
        h = capture_residuals(llama, s[None]).hidden[-1].double()
        v = h[:, 0] * 2 + torch.randn(length, generator=g, dtype=torch.float64) * 0.1
        v[torch.rand(length, generator=g) < 1 / 3] = float("nan")
        num.append(v)
        label.append((h.float() @ proj).argmax(1).double())
    return TargetFile(seqs, {"num": num, "label": label}, {"label": ["a", "b", "c"]}, "test")


def _design(llama, tf, seqs, column, site):
    xs, ys = [], []
    for i in seqs:
        res = capture_residuals(llama, tf.sequences[i][None])
        y = tf.values[column][i]
        keep = ~torch.isnan(y)
        xs.append(res.hidden[site, keep].double())
        ys.append(y[keep])
    return torch.cat(xs).numpy(), torch.cat(ys).numpy()


def test_nulls_drop_rows_and_classes_match_a_float64_one_hot_ridge(llama):
    tf = _file(llama)
    result = probe(llama, user_targets=tf, train_tokens=160, heldout_tokens=80, seq_len=64, targets=("logit",),
                   folds=2, alphas=[ALPHA], progress=False)
    train, held = range(8), range(8, 12)
    assert result.targets == ["logit@lag0", "num@lag0"] and list(result.classes) == ["label@lag0"]
    site = len(result.sites) - 1
    X, Y = _design(llama, tf, train, "num", site)
    Xh, Yh = _design(llama, tf, held, "num", site)
    fit = result.fits[site][1]
    assert fit["n_train"] == len(Y) < 160 and fit["n_heldout"] == len(Yh)  # each target keeps its own rows
    assert result.fits[site][0]["n_train"] == 160 - 8  # the logit: every token but each sequence's last
    r2_train, r2_held = _ridge_r2(X, Y[:, None], Xh, Yh[:, None], ALPHA)
    _, _, tol_train, tol_held = fp32_gram_r2_bound(X, Y[:, None], Xh, Yh[:, None], ALPHA, 20)
    assert abs(fit["r2_train"] - r2_train) <= tol_train[0] and abs(fit["r2_heldout"] - r2_held) <= tol_held[0]
    # the class target: float64 one-hot ridge on the training tokens, argmax on the held-out ones
    for s in range(len(result.sites)):
        X, lab = _design(llama, tf, train, "label", s)
        Xh, lab_h = _design(llama, tf, held, "label", s)
        onehot = np.eye(3)[lab.astype(int)]
        mx, my = X.mean(0), onehot.mean(0)
        G = (X - mx).T @ (X - mx)
        w = np.linalg.solve(G + ALPHA * np.trace(G) / X.shape[1] * np.eye(X.shape[1]), (X - mx).T @ (onehot - my))
        pred = ((Xh - mx) @ w + my).argmax(1)
        got = result.classes["label@lag0"]["sites"][s]
        assert got["n_heldout"] == len(lab_h) and got["n_train"] == len(lab)
        scores = np.sort((Xh - mx) @ w + my, 1)
        clear = scores[:, -1] - scores[:, -2] > 1e-3  # fp32 sums may flip a near tie
        want = (pred == lab_h)
        assert abs(got["accuracy"] - want.mean()) <= (~clear).mean() + 1e-12, s
    assert result.classes["label@lag0"]["sites"][-1]["accuracy"] > 0.6  # linear in the last site: well above 1/3


def test_positions_and_where_select_rows(llama):
    tf = _file(llama)
    last = probe(llama, user_targets=tf, train_tokens=160, heldout_tokens=80, seq_len=64, targets=("entropy",),
                 positions="-1", folds=2, alphas=[ALPHA], progress=False)
    assert last.fits[0][0]["n_train"] == 8 and last.fits[0][0]["n_heldout"] == 4  # one row per sequence
    only = probe(llama, user_targets=tf, train_tokens=160, heldout_tokens=80, seq_len=64, targets=("entropy",),
                 where="num", folds=2, alphas=[ALPHA], progress=False)
    n_num = sum(int((~torch.isnan(tf.values["num"][i])).sum()) for i in range(8))
    assert only.fits[0][0]["n_train"] == n_num == only.fits[0][1]["n_train"]


def test_bad_lag_position_and_class_inputs_are_clear_errors(llama):
    ids = torch.randint(0, VOCAB, (LTRAIN + LHELD + 1,))
    kw = dict(train_tokens=LTRAIN, heldout_tokens=LHELD, seq_len=LSEQ, folds=2, progress=False)
    with pytest.raises(ValueError, match=r"lags: \[0, 40\] leave no rows in sequences of at most 40 rows"):
        probe(llama, ids, lags=(0, 40), **kw)
    with pytest.raises(ValueError, match="lags: expected integers"):
        probe(llama, ids, lags=("a",), **kw)
    with pytest.raises(ValueError, match="positions: expected e.g."):
        probe(llama, ids, positions="last", **kw)
    with pytest.raises(ValueError, match=r"positions / where: the selection \('60-'"):
        probe(llama, ids, positions="60-", **kw)
    with pytest.raises(ValueError, match="where: expected the name of a target of the target file"):
        probe(llama, ids, where="num", **kw)
    with pytest.raises(ValueError, match=r"extra_targets\['t'\]: 1 NaN/Inf"):
        t = torch.zeros(LTRAIN + LHELD)
        t[5] = float("nan")
        probe(llama, ids, extra_targets={"t": t}, **kw)
    tf = _file(llama)
    for i in range(8, 12):  # class 'c' only in the held-out sequences
        tf.values["label"][i][:] = 2
    for i in range(8):
        tf.values["label"][i][tf.values["label"][i] == 2] = 0
    with pytest.raises(ValueError, match=r"target 'label@lag0': class\(es\) \['c'\] appear in the held-out part"):
        probe(llama, user_targets=tf, train_tokens=160, heldout_tokens=80, seq_len=64, folds=2, progress=False)
    with pytest.raises(ValueError, match="corpus: a target file brings its own sequences"):
        probe(llama, ids, user_targets=tf, **kw)
