"""The tuned-lens pages: evaluate()'s rows stay a list and draw as per-site curves of both lenses (KL, cross-
entropy, top-1 agreement); `tuned train` writes the loss curve, `tuned eval` the curves and that loss curve."""
import json

import numpy as np
import torch

import fusedlens.data.windows
from fusedlens.cli import main
from fusedlens import LogitLens
from fusedlens.core.models import LensModel, load_model
from fusedlens.data.windows import split_tail
from fusedlens.report.page import REPORT, Vocab
from fusedlens.tuned.evaluate import evaluate
from fusedlens.tuned.lens import TunedLens
from test_report_page import decode, page_data
from test_report_probe import by_title
from tiny_models import VOCAB, tiny_model


def tuned_eval():
    lm = LensModel.from_hf(tiny_model("llama"))
    lens = TunedLens.from_model(lm)
    with torch.no_grad():
        for p in lens.parameters():
            p.normal_(0, 0.05)  # not the logit lens: two curves
    return evaluate(lm, lens, torch.randint(3, VOCAB, (120,)), seq_len=40)


def test_rows_stay_a_list_and_draw_per_site():
    rows = tuned_eval()
    assert isinstance(rows, list) and rows.meta == {"held_out_tokens": 120, "seq_len": 40}
    assert json.loads(json.dumps(rows)) == [{k: float(v) if k != "site" else v for k, v in r.items()} for r in rows]
    kl, ce, top1 = rows.views(Vocab())
    assert kl["x"] == [r["site"] for r in rows[:-1]] and kl["log"]  # the final site's KL is 0 by definition
    for view, key, shown in ((kl, "kl_bits", rows[:-1]), (ce, "ce_bits", rows), (top1, "top1_agreement", rows)):
        assert [s["name"] for s in view["series"]] == ["logit lens", "tuned lens"]
        for s, lens in zip(view["series"], ("logit", "tuned")):
            assert s["y"] == [r[f"{key}_{lens}"] for r in shown]
    assert 0 < kl["ymin"] <= min(min(s["y"]) for s in kl["series"])


def test_train_and_eval_write_their_reports(model_dir, tmp_path, monkeypatch, capsys):
    ids = torch.randint(3, VOCAB, (3000,))
    monkeypatch.setattr(fusedlens.data.windows, "corpus_ids", lambda tokenizer: ids)
    out = tmp_path / "lens"
    assert main(["tuned", "train", "--model", model_dir, "--out", str(out), "--steps", "3", "--tokens-per-step", "16",
                 "--seq-len", "16", "--eval-tokens", "500", "--no-progress"]) == 0
    train_page = page_data((out / REPORT).read_text())
    loss = by_title(train_page["views"], "training")["series"][0]["y"]
    assert len(loss) == 3 and all(v > 0 for v in loss)
    capsys.readouterr()
    assert main(["tuned", "eval", "--model", model_dir, "--lens", str(out), "--tokens", "60", "--seq-len", "30",
                 "--eval-tokens", "500", "--no-progress"]) == 0
    assert str(out / REPORT) in capsys.readouterr().out
    page = page_data((out / REPORT).read_text())
    saved = json.loads((out / "tuned_eval.json").read_text())
    kl = by_title(page["views"], "KL(final")
    np.testing.assert_allclose(kl["series"][1]["y"], [r["kl_bits_tuned"] for r in saved["layers"][:-1]], rtol=1e-12)
    assert by_title(page["views"], "training")["series"][0]["y"] == loss  # the lens' training, kept on the page
    assert page["meta"]["lens"] == str(out)
    # the held-out tokens' grids, logit and tuned lens side by side; the tuned one is the lens' own reading
    (grids,) = [v for v in page["views"] if v["type"] == "lens"]
    assert [L["name"] for L in grids["lenses"]] == ["logit lens", "tuned lens"] and len(grids["tokens"]) == 60
    lm = load_model(model_dir)
    lens = TunedLens.load(str(out), lm)
    tuned = LogitLens(lm, k=5, translate=lambda h: lens.translate_sites(h, grids["sites"])).run(
        split_tail(ids, 500)[1][:60], seq_len=30)
    assert np.array_equal(decode(grids["lenses"][1]["grid"]["topk"]["ids"]), tuned.stats.topk_ids.reshape(-1).numpy())
