"""`fusedlens steer` on a saved tiny model: generation side by side from a tensor file, a directions file
and ActAdd prompts; a scan writing its JSON, picture and samples; bad input exits with status 2."""
import json
import random

import pytest
import torch

from fusedlens.cli import COMMANDS, main
from fusedlens.cli.steer import parse_sites
from fusedlens.core.models import load_model
from fusedlens.steer import generate, load_tensor
from fusedlens.steer.vectors import DIRECTIONS_FORMAT


def test_generation_from_each_source(tmp_path, model_dir, capsys):
    assert "steer" in COMMANDS
    d = 48
    torch.save(torch.randn(d), tmp_path / "v.pt")
    sites = ["embed", "resid.0", "resid.1", "resid.2"]
    torch.save({"format": DIRECTIONS_FORMAT, "model": "tiny", "sites": sites,
                "vectors": {k: torch.nn.functional.normalize(torch.randn(4, d), dim=-1) for k in ("mean_diff", "pca", "lda")},
                "mean_pos": torch.randn(4, d, dtype=torch.float64), "mean_neg": torch.randn(4, d, dtype=torch.float64),
                "lda_ridge": 0.1, "position": "last"}, tmp_path / "dirs.pt")
    coef = round(random.uniform(2, 8), 2)
    for i, source in enumerate((["--vector-file", str(tmp_path / "v.pt")],
                                ["--directions", str(tmp_path / "dirs.pt"), "--kind", "lda"],
                                ["--plus", "love", "--minus", "hate!"])):
        out = tmp_path / f"out{i}"
        assert main(["steer", "--model", model_dir, "--prompt", "hello world", "--site", "resid.1", "--coef", str(coef),
                     "--n-tokens", "4", "--out", str(out), *source]) == 0
        saved = json.loads((out / "steer.json").read_text())
        assert saved["coef"] == coef and len(saved["steered_ids"]) == 4
    printed = capsys.readouterr().out
    assert "unsteered" in printed and f"steered (+{coef:g})" in printed
    # the tensor-file run is the API's run
    lm = load_model(model_dir)
    r = generate(lm, "hello world", load_tensor(str(tmp_path / "v.pt"), lm), "resid.1", coef, n_tokens=4)
    assert json.loads((tmp_path / "out0" / "steer.json").read_text())["steered_ids"] == r.steered_ids


def test_scan(tmp_path, model_dir, corpus_file, capsys):
    out = tmp_path / "scan"
    assert main(["steer", "--model", model_dir, "--plus", "good", "--minus", "bad", "--scan-sites", "0-2",
                 "--scan-coefs=-2,0,3", "--eval-corpus", corpus_file, "--eval-tokens", "60", "--seq-len", "16",
                 "--sample-prompts", "once upon", "--sample-tokens", "3", "--out", str(out), "--no-progress"]) == 0
    saved = json.loads((out / "steer_scan.json").read_text())
    assert saved["sites"] == ["resid.0", "resid.1", "resid.2"] and saved["read_site"] == "resid.2"
    assert len(saved["ppl"]) == 3 and len(saved["ppl"][0]) == 3 and saved["predicted_tokens"] == 59
    assert abs(saved["ppl_ratio"][1][1] - 1) < 1e-5  # c = 0: the unsteered run (other batch rows: to rounding)
    assert (out / "steer_scan.png").stat().st_size > 1000 and "once upon" in (out / "steer_scan.txt").read_text()
    assert "perplexity ratio" in capsys.readouterr().out


def test_parse_sites():
    assert parse_sites("2-10:4") == ["resid.2", "resid.6", "resid.10"]
    assert parse_sites("embed,resid.3,mid.4,7") == ["embed", "resid.3", "mid.4", "resid.7"]
    for bad in ("", "5-2", "attn.3", "resid.x"):
        with pytest.raises(ValueError, match="^scan_sites:"):
            parse_sites(bad)


def test_bad_input_exits_2(tmp_path, model_dir, capsys):
    torch.save(torch.randn(47), tmp_path / "narrow.pt")
    torch.save(torch.tensor([float("nan")] * 48), tmp_path / "nan.pt")
    base = ["steer", "--model", model_dir, "--site", "resid.1", "--out", str(tmp_path / "o")]
    for args, message in ((["--prompt", "hi", "--vector-file", str(tmp_path / "narrow.pt")], "vector_file: width 47"),
                          (["--prompt", "hi", "--vector-file", str(tmp_path / "nan.pt")], "vector_file: contains"),
                          (["--prompt", "hi", "--plus", "a"], "plus, minus: ActAdd needs both"),
                          (["--prompt", "hi"], "vector: give exactly one of"),
                          (["--prompt", "", "--plus", "a", "--minus", "b"], "prompt: expected a non-empty text"),
                          (["--vector-file", str(tmp_path / "narrow.pt")], "prompt: required"),
                          (["--prompt", "hi", "--plus", "a", "--minus", "b", "--site", "resid.3"], "site: 'resid.3': layer 3"),
                          (["--plus", "a", "--minus", "b", "--scan-sites", "1,resid.7"], "scan_sites: 'resid.7': layer 7"),
                          (["--prompt", "hi", "--plus", "a", "--minus", "b", "--scan-sites", "x-y"], "scan_sites:"),
                          (["--prompt", "hi", "--plus", "a", "--minus", "b", "--positions", "q"], "positions:")):
        assert main(base + args) == 2, args
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "Loading weights" not in line]
        assert len(err) == 1 and err[0].startswith("fusedlens steer: error: ") and message in err[0], (args, err)
