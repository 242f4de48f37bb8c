"""Bad input on the command line, one table for every command: each row is (command line, exit status, a
word the one-line message must contain, whether the check comes before the model loads).

A row's command runs in-process through `fusedlens.cli.main`. Rows marked "before" run with model loading
replaced by a failure, so they prove the check comes first; the others load a tiny random Llama folder
(context 128 tokens). Every failing row must print exactly one "error:" line and no traceback, and leave
no output folder behind. A new command adds rows here, not a new test style.

Placeholders: {t} a folder of prepared files (module fixture `files`), {m} the tiny model folder, {o} a
fresh output folder for the row.
"""
import json
import os

import pytest
import torch

from fusedlens import cli
from test_core_files import crafted_torch_file

B, A = True, False  # checked before / after the model loads

ROWS = [
    # --- security: no file runs code
    ("run pydoc --out {t}/run_crafted", 2, "refused", B),
    ("tuned train --out {t}/train_crafted", 2, "refused", B),
    ("patchscope --source abc --mapping {t}/crafted.pt --out {o}", 2, "refused", B),
    ("steer --prompt abc --vector-file {t}/crafted.pt --out {o}", 2, "refused", B),
    ("tuned eval --model {m} --lens {t}/lens_other", 2, "another model", A),
    # --- dla
    ("dla --prompt x --answer ' Mary' --counterfactual ' Mary' --out {o}", 2, "is the answer", B),
    ("dla --prompt x --top -1 --out {o}", 2, "top: expected >= 0", B),
    ("dla --prompt x --k -2 --out {o}", 2, "k: expected >= 0", B),
    ("dla --prompt x --components attn,foo --out {o}", 2, "components: unknown 'foo'", B),
    ("dla --out {o}", 2, "prompt: give at least one", B),
    ("dla --prompt x --counterfactual ' b' --out {o}", 2, "counterfactual: needs --answer", B),
    ("dla --prompts {t}/missing.jsonl --out {o}", 2, "missing.jsonl not found", B),
    ("dla --prompts {t}/folder --out {o}", 2, "is a folder", B),
    ("dla --prompts {t}/latin1.jsonl --out {o}", 2, "not UTF-8", B),
    ("dla --prompts {t}/bad.json --out {o}", 2, "not valid JSON", B),
    ("dla --prompts {t}/same_answers.jsonl --out {o}", 2, "the counterfactual is the answer", B),
    ("dla --prompt x --out {t}/file.txt", 2, "is a file, not a folder", B),
    ("dla --model {t}/file.txt --prompt x --out {o}", 2, "model: ", B),
    ("dla --model {t}/folder --prompt x --out {o}", 2, "holds no model", B),
    ("dla --model ./no/such/model --prompt x --out {o}", 2, "does not exist", B),
    ("demo --model ./no/such/model --out {o}", 2, "does not exist", A),
    ("demo --model gemma-3-270m --gguf-file x.gguf --out {o}", 2, "named model", A),
    ("dla --model {m} --prompt abc --answer a --counterfactual a --out {o}", 2, "is the answer", B),
    ("dla --model {m} --prompt abc --answer ab --out {o}", 2, "expected exactly one", A),
    # --- patch and knockout
    ("patch --clean abcdef --answer a --knockout-keys 5-2 --out {o}", 2, "runs backwards", B),
    ("patch --clean abcdef --answer a --knockout-queries 2 --knockout-keys 5-7 --out {o}", 2,
     "after every query", B),
    ("patch --clean abcdef --answer a --knockout-queries 1 --knockout-keys 0-1 --out {o}", 2, "every key", B),
    ("patch --clean abcdef --answer a --knockout-keys 1-3 --batch-size 0 --out {o}", 2, "batch_size", B),
    ("patch --clean abcdef --answer a --knockout-keys 1-x --out {o}", 2, "knockout_keys: expected positions", B),
    ("patch --clean abcdef --answer a --knockout-keys 1 --window 0 --out {o}", 2, "window", B),
    ("patch --clean abc --corrupted abc --answer a --out {o}", 2, "same prompt", B),
    ("patch --clean abc --corrupted abd --answer a --counterfactual a --out {o}", 2, "is the answer", B),
    ("patch --clean abc --corrupted abd --answer a --metric logit_diff --out {o}", 2, "needs --counterfactual", B),
    ("patch --clean abc --corrupted abd --answer a --kinds resid,foo --out {o}", 2, "kinds", B),
    ("patch --clean abc --answer a --out {o}", 2, "corrupted: required", B),
    ("patch --clean abc --corrupted abd --answer a --method exact,atp** --out {o}", 2, "method: expected some of", B),
    ("patch --clean abc --corrupted abd --answer a --method exact --kinds neuron --out {o}", 2, "kinds", B),
    ("patch --clean abc --corrupted abd --answer a --method atp --kinds mid --out {o}", 2, "kinds", B),
    ("patch --clean abc --corrupted abd --answer a --method exact,atp --kinds q --out {o}", 2,
     "none of 'q' is a kind --method exact computes", B),
    ("patch --clean abc --corrupted abd --answer a --method atp --verify -1 --out {o}", 2, "verify", B),
    ("patch --model {m} --clean abc --corrupted abcd --answer a --method atp* --out {o}", 2, "the same length", A),
    ("patch --model {m} --clean abcdef --answer a --knockout-queries 0 --knockout-keys -1 --out {o}", 2,
     "after every query", A),
    ("patch --model {m} --clean abc --corrupted abcd --answer a --out {o}", 2, "the same length", A),
    # --- patchscope
    ("patchscope --source abc --target 'no placeholder' --out {o}", 2, "placeholder", B),
    ("patchscope --source abc --n-tokens 0 --out {o}", 2, "n_tokens", B),
    ("patchscope --source '' --out {o}", 2, "source: required", B),
    ("patchscope --source abc --mapping {t}/missing.pt --out {o}", 2, "missing.pt not found", B),
    ("patchscope --source abc --mapping {t}/list.json --out {o}", 2, "cannot be read as a torch file", B),
    ("patchscope --source abc --target-model ./no/such --out {o}", 2, "target_model: ", B),
    ("patchscope --model {m} --source abc --n-tokens 100000 --out {o}", 2, "context", A),
    ("patchscope --model {m} --source abc --layers 7 --out {o}", 2, "layers", A),
    # --- refine
    ("refine --classes {t}/missing.json --out {o}", 2, "classes: ", B),
    ("refine --classes {t}/folder --out {o}", 2, "is a folder", B),
    ("refine --classes {t}/list.json --out {o}", 2, "holds a list", B),
    ("refine --classes {t}/one_class.json --out {o}", 2, "one class", B),
    ("refine --counts {t}/missing.json --out {o}", 2, "counts: ", B),
    ("refine --counts {t}/bad.json --out {o}", 2, "not valid JSON", B),
    ("refine --counts {t}/list.json --out {o}", 2, "holds a list", B),
    ("refine --counts {t}/counts_abc.json --out {o}", 2, "bad entry 'abc'", B),
    ("refine --answers {t}/missing.jsonl --out {o}", 2, "answers: ", B),
    ("refine --answers {t}/latin1.jsonl --out {o}", 2, "not UTF-8", B),
    ("refine --choices {t}/bad.json --out {o}", 2, "choices: ", B),
    ("refine --text {t}/latin1.jsonl --out {o}", 2, "text: ", B),
    ("refine --buckets 10,x --out {o}", 2, "buckets", B),
    ("refine --tuned {t}/missing --out {o}", 2, "tuned: ", B),
    ("refine --tokens 0 --out {o}", 2, "tokens", B),
    ("refine --model {m} --text {t}/small.txt --seq-len 200 --tokens 200 --buckets 5,50 --out {o}", 2, "context", A),
    # --- probe
    ("probe --targets-file {t}/missing.jsonl --out {o}", 2, "targets_file: ", B),
    ("probe --targets-file {t}/folder --out {o}", 2, "is a folder", B),
    ("probe --targets-file {t}/targets_logit.jsonl --out {o}", 2, "built-in target", B),
    ("probe --targets-file {t}/targets_one_class.jsonl --out {o}", 2, "one class", B),
    ("probe --targets-file {t}/targets_huge.jsonl --out {o}", 2, "too large", B),
    ("probe --targets-file {t}/latin1.jsonl --out {o}", 2, "not UTF-8", B),
    ("probe --targets-file {t}/targets_ok.jsonl --texts {t}/small.txt --out {o}", 2, "texts: ", B),
    ("probe --targets foo --out {o}", 2, "targets: expected distinct names", B),
    ("probe --where y --out {o}", 2, "where: ", B),
    ("probe --positions 5-2 --out {o}", 2, "positions", B),
    ("probe --folds 1 --out {o}", 2, "folds", B),
    ("probe --lag x --out {o}", 2, "invalid int value", B),  # argparse's own message
    ("probe --model {m} --text {t}/small.txt --seq-len 200 --train-tokens 300 --heldout-tokens 0 --folds 2 --out {o}",
     2,
     "context", A),
    # --- directions
    ("directions --labeled {t}/labeled_list.jsonl --out {o}", 2, "must be a string, a number or a boolean", B),
    ("directions --labeled {t}/labeled_true_and_1.jsonl --out {o}", 2, "found 3", B),
    ("directions --labeled {t}/labeled_01.jsonl --positive 2 --out {o}", 2, "positive", B),
    ("directions --pos {t}/missing.jsonl --neg {t}/missing.jsonl --out {o}", 2, "pos: ", B),
    ("directions --pairs {t}/bad.json --out {o}", 2, "pairs: ", B),
    ("directions --labeled {t}/labeled_01.jsonl --heldout 1.5 --out {o}", 2, "heldout", B),
    ("directions --labeled {t}/labeled_01.jsonl --lda-ridge -1 --out {o}", 2, "lda_ridge", B),
    ("directions --out {o}", 2, "give exactly one", B),
    # --- steer
    ("steer --prompt abc --coef nan --vector-file {t}/vec.pt --out {o}", 2, "coef: expected a finite number", B),
    ("steer --scan-sites resid.1 --scan-coefs 1,nan --vector-file {t}/vec.pt --out {o}", 2, "scan_coefs", B),
    ("steer --prompt abc --temperature 0 --sample --vector-file {t}/vec.pt --out {o}", 2, "temperature", B),
    ("steer --prompt abc --vector-file {t}/missing.pt --out {o}", 2, "vector_file: ", B),
    ("steer --prompt abc --vector-file {t}/nan_vec.pt --out {o}", 2, "NaN", B),
    ("steer --prompt abc --directions {t}/vec.pt --out {o}", 2, "directions: ", B),
    ("steer --prompt abc --out {o}", 2, "give exactly one of", B),
    ("steer --scan-sites 5-2 --vector-file {t}/vec.pt --out {o}", 2, "selects no layer", B),
    ("steer --model {m} --prompt abc --site resid.1 --vector-file {t}/vec.pt --n-tokens 1000 --out {o}", 2,
     "context", A),
    ("steer --model {m} --scan-sites resid.1 --vector-file {t}/vec.pt --seq-len 200 --eval-tokens 300 "
     "--eval-corpus {t}/small.txt --out {o}", 2, "context", A),
    ("steer --model {m} --prompt abc --site resid.9 --vector-file {t}/vec.pt --out {o}", 2, "site", A),
    # --- tuned
    ("tuned eval --lens {t}/missing", 2, "not a tuned lens folder", B),
    ("tuned eval --lens {t}/lens_bad_json", 2, "not valid JSON", B),
    ("tuned eval --lens {t}/lens_list", 2, "holds a list", B),
    ("tuned eval --lens {t}/lens_no_layers", 2, "num_hidden_layers", B),
    ("tuned eval --lens {t}/lens_other --tokens 0", 2, "tokens", B),
    ("tuned eval --model {m} --lens {t}/lens_truncated", 2, "cannot be read as a torch file", A),
    ("tuned eval --model {m} --lens {t}/lens_sites", 2, "sites", A),
    ("tuned eval --model {m} --lens {t}/lens_other --seq-len 200 --ignore-unembed-hash", 2, "context", A),
    ("tuned train --out {t}/lens_other", 2, "--overwrite", B),
    ("tuned train --steps 0 --out {o}", 2, "steps", B),
    ("tuned train --checkpoint-every 0 --out {o}", 2, "checkpoint_every", B),
    ("tuned train --model {m} --seq-len 200 --tokens-per-step 200 --out {o}", 2, "context", A),
    # --- run
    ("run pydoc --dla --out {t}/dla_results", 2, "holds the results of `fusedlens dla`", B),
    ("run pydoc --refine {t}/counts_abc.json --out {o}", 2, "refine: ", B),
    ("run pydoc --tuned {t}/missing --out {o}", 2, "tuned: ", B),
    ("run {t}/missing.txt --out {o}", 2, "missing.txt", B),
    ("run pydoc --seq-len 1 --out {o}", 2, "seq_len", B),
    ("run pydoc --model {m} --seq-len 200 --out {o}", 2, "context", A),
    # --- concepts
    ("concepts --concepts no_such_concept --out {o}", 2, "no_such_concept", B),
    ("concepts --concepts {t}/bad.json --out {o}", 2, "JSON", B),
    ("concepts --name a/b --out {o}", 2, "name", B),
    # --- view
    ("view {t}/missing", 2, "missing not found; give the --out folder", B),
    ("view {t}/folder", 2, "has no report.html; the commands write one into their --out folder", B),
]


def _write_lens(folder, lm, **config):
    from fusedlens.tuned.lens import TunedLens

    TunedLens.from_model(lm).save(str(folder))
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, **config}))


@pytest.fixture(scope="module")
def files(tmp_path_factory, lm):
    t = tmp_path_factory.mktemp("cli_errors")
    (t / "folder").mkdir()
    (t / "file.txt").write_text("hello")
    (t / "small.txt").write_text("The quick brown fox jumps over the lazy dog. " * 12)
    (t / "latin1.jsonl").write_bytes('{"prompt": "café", "answer": " x", "text": "café"}\n'.encode("latin-1"))
    (t / "bad.json").write_text('{"prompt": ')
    (t / "list.json").write_text("[1, 2]")
    (t / "one_class.json").write_text('{"a": "x", "b": "x"}')
    (t / "counts_abc.json").write_text('{"vocab_size": 10, "counts": {"abc": 3}}')
    (t / "same_answers.jsonl").write_text('{"prompt": "ab", "answer": " x", "counterfactual": " x"}\n')
    rows = lambda path, items: path.write_text("".join(json.dumps(r) + "\n" for r in items))  # noqa: E731
    rows(t / "targets_logit.jsonl", [{"text": "ab", "targets": {"logit": [1.0, 2.0]}}])
    rows(t / "targets_one_class.jsonl", [{"text": "ab", "label": "red"}, {"text": "cd", "label": "red"}])
    rows(t / "targets_ok.jsonl", [{"text": "ab", "label": "red"}, {"text": "cd", "label": "blue"}])
    (t / "targets_huge.jsonl").write_text('{"text": "ab", "targets": {"y": [1, 1' + "0" * 400 + ']}}\n')
    rows(t / "labeled_list.jsonl", [{"text": "a", "label": [1]}, {"text": "b", "label": 0}])
    rows(t / "labeled_true_and_1.jsonl", [{"text": c, "label": lab} for c, lab in zip("abcdef", [True, 1, 0] * 2)])
    rows(t / "labeled_01.jsonl", [{"text": c, "label": i % 2} for i, c in enumerate("abcdefgh")])
    torch.save(torch.randn(lm.d_model), t / "vec.pt")
    torch.save(torch.full((lm.d_model,), float("nan")), t / "nan_vec.pt")
    marker = t / "marker"
    crafted_torch_file(t / "crafted.pt", marker)
    (t / "run_crafted" / "checkpoint").mkdir(parents=True)
    crafted_torch_file(t / "run_crafted" / "checkpoint" / "rank0.pt", marker)
    (t / "train_crafted").mkdir()
    crafted_torch_file(t / "train_crafted" / "train_state.pt", marker)
    # tuned lens folders: one of another model (a trained lens without its training state, too), damaged ones
    from fusedlens.core.models import LensModel
    from tiny_models import tiny_model

    _write_lens(t / "lens_other", LensModel.from_hf(tiny_model("llama", seed=1)))
    for name, config in (("lens_bad_json", "{"), ("lens_list", "[]"),
                         ("lens_no_layers", json.dumps({"d_model": lm.d_model}))):
        (t / name).mkdir()
        (t / name / "config.json").write_text(config)
        (t / name / "params.pt").write_bytes(b"")
    _write_lens(t / "lens_truncated", lm)
    (t / "lens_truncated" / "params.pt").write_bytes((t / "lens_truncated" / "params.pt").read_bytes()[:300])
    _write_lens(t / "lens_sites", lm, fusedlens_sites=["embed", "resid.0", "mid.7"])
    (t / "dla_results").mkdir()
    (t / "dla_results" / ".fusedlens-command").write_text("dla\n")
    (t / "dla_results" / "dla.json").write_text("{}")
    return t


@pytest.fixture
def no_model_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr("fusedlens.core.models.load_model", refuse)


def _argv(line: str, files, model_dir, out) -> list[str]:
    import shlex

    return [a.format(t=files, m=model_dir, o=out) for a in shlex.split(line)]


@pytest.mark.parametrize("line, code, word, before", ROWS, ids=[r[0][:60] for r in ROWS])
def test_bad_input_is_one_line(line, code, word, before, files, model_dir, tmp_path, capsys, request):
    if before:
        request.getfixturevalue("no_model_load")
    out = tmp_path / "out" / "sub"
    argv = _argv(line, files, model_dir, out)
    try:
        got = cli.main(argv)
    except SystemExit as exit_:  # argparse's own errors
        got = exit_.code
    err = capsys.readouterr().err
    assert got == code, (line, err)
    assert "Traceback" not in err, err
    assert sum("error:" in ln for ln in err.splitlines()) == 1, err
    message = next(ln for ln in err.splitlines() if "error:" in ln)
    assert word.format(t=files) in message, (word, message)
    assert not os.path.exists(tmp_path / "out"), "a failed command left its output folder behind"
    assert not (files / "marker").exists(), "a crafted file ran code"
    assert not (files / "missing").exists(), "a failed command created the folder it was to read"


def test_every_command_has_rows():
    commands = {r[0].split()[0] for r in ROWS}
    assert commands >= set(cli.COMMANDS) - {"demo", "info"}, set(cli.COMMANDS) - commands


def test_a_command_never_writes_into_another_commands_folder(files, model_dir, tmp_path, capsys):
    """A folder is stamped by the command that wrote it; another command is refused there, the same
    command (a rerun, a resume) is not."""
    from fusedlens.core.checks import OWNER_FILE, check_output_dir

    folder = str(tmp_path / "results")
    check_output_dir("out", folder, "dla")
    assert open(os.path.join(folder, OWNER_FILE)).read().strip() == "dla"
    check_output_dir("out", folder, "dla")  # the same command again: fine
    with pytest.raises(ValueError, match=r"^out: .* holds the results of `fusedlens dla`; `fusedlens run` would"):
        check_output_dir("out", folder, "run")
    assert cli.main(["refine", "--model", model_dir, "--text", str(files / "small.txt"), "--tokens", "60",
                     "--seq-len", "32", "--classes", "none", "--out", folder]) == 2
    assert "holds the results of `fusedlens dla`" in capsys.readouterr().err
