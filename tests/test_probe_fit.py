"""fusedlens.probe end to end: tiny real architectures against materialised float64 fits, the real model via the CLI."""
import json

import numpy as np
import pytest
import torch

from fusedlens import cli, ops
from fusedlens.ops import reference
from fusedlens.core.capture import capture_residuals
from fusedlens.core.models import LensModel
from fusedlens.data.windows import windows
from fusedlens.probe import TARGETS, probe
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
    assert result.targets == list(TARGETS) + ["pos"]
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
    assert result.sites == ["resid.1"] and result.targets == ["lin.0", "lin.1"]
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
    with pytest.raises(ValueError, match="folds: 3 folds need at least 3 training windows"):
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
    assert saved["targets"] == list(TARGETS) and len(saved["layers"]) == 31
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
