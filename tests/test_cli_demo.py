"""The command line and the demo, on the real embedded model."""
import json
import subprocess
import sys

import pytest
import torch

from fusedlens import ops
from fusedlens.ops import reference
from fusedlens.core.capture import capture_residuals
from fusedlens.cli.demo import run_demo
from fusedlens.data.pydoc import pydoc_text


@pytest.mark.parametrize("cmd", [["fusedlens", "--help"], [sys.executable, "-m", "fusedlens", "--help"]])
def test_help_lists_commands(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    assert "demo" in out and "info" in out


def test_bad_argument_is_one_clear_line():
    r = subprocess.run(["fusedlens", "demo", "--tokens", "1"], capture_output=True, text=True)
    assert r.returncode == 2
    assert "n_tokens" in r.stderr and "Traceback" not in r.stderr


def test_real_model_float32_lens_matches_float64(real_lm):
    """The torch backend in float32 against the float64 oracle on SmolLM2's own residuals."""
    ids = real_lm.tokenizer(pydoc_text()[:400], return_tensors="pt").input_ids[:, :48]
    res = capture_residuals(real_lm, ids)
    got = ops.lens_stats(res.hidden, real_lm.norm, real_lm.unembed, res.targets, k=5, backend="torch")
    want = reference.lens_stats(res.hidden, real_lm.norm, real_lm.unembed, res.targets, k=5)
    for name in ("lse", "entropy", "kl_to_final"):
        err = (getattr(got, name).double() - getattr(want, name)).abs()
        assert bool((err <= 1e-4 + 1e-5 * getattr(want, name).abs()).all()), (name, float(err.max()))
    # top-1 and ranks exact except where float32 rounding creates or breaks a near-tie
    gap = want.topk_logits[..., 0] - want.topk_logits[..., 1]
    clear = gap > 1e-3
    assert torch.equal(got.top1[clear], want.top1[clear])
    assert clear.float().mean() > 0.95
    # the final layer's logits are the model's own
    logits = real_lm.model(ids).logits[0].double()
    torch.testing.assert_close(want.lse[-1], torch.logsumexp(logits, -1), rtol=0, atol=1e-4)


def test_demo_writes_table_json_png(real_lm, tmp_path, capsys):
    rows = run_demo(n_tokens=96, seq_len=40, out_dir=str(tmp_path), lm=real_lm)
    assert [r["site"] for r in rows] == ["embed"] + [f"resid.{i}" for i in range(30)]
    assert rows[-1]["kl_to_final"] == 0 and rows[-1]["top1_agreement"] == 1
    assert all(r["kl_to_final"] > 0 for r in rows[:-1])
    assert 0.05 < rows[-1]["next_token_accuracy"] < 1
    saved = json.loads((tmp_path / "demo.json").read_text())
    assert saved["tokens"] == 96 and len(saved["layers"]) == 31
    assert saved["mean_prediction_depth"] == pytest.approx(sum(1 - r["settled_fraction"] for r in rows))
    assert 0 < saved["mean_prediction_depth"] < 30
    assert (tmp_path / "demo_logit_lens.png").stat().st_size > 10_000
    assert (tmp_path / "demo_lens_grid.png").stat().st_size > 10_000
    assert "kl_to_final" in capsys.readouterr().out
