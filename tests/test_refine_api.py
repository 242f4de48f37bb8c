"""refine(): the corpus pass on a tiny real architecture (sums equal to a hand-built RefineSums; a tuned
lens at its identity init reads exactly as the logit lens), and `fusedlens refine` on the real model."""
import json

import pytest
import torch

from fusedlens import cli, ops
from fusedlens.core.capture import capture_residuals
from fusedlens.core.models import LensModel
from fusedlens.data.windows import windows
from fusedlens.refine import RefineSums, TokenCounts
from fusedlens.refine.api import refine
from fusedlens.tuned.lens import TunedLens
from tiny_models import VOCAB, tiny_model


def test_refine_pass_on_a_tiny_model():
    lm = LensModel.from_hf(tiny_model("llama"))
    ids = torch.randint(0, VOCAB, (300,))
    ids[::3] = 7  # a frequent token
    tuned = TunedLens.from_model(lm)  # identity translators: the same statistics as the logit lens
    classes = {i: ("even" if i % 2 == 0 else "odd") for i in range(0, lm.vocab_size, 1)}
    result = refine(lm, ids, tokens=120, seq_len=50, buckets=[2, 10], tuned=tuned, classes=classes, progress=False)
    assert result.buckets == ["1-2", "3-10", "11+"] and list(result.lenses) == ["logit", "tuned"]
    counts = TokenCounts(lm.vocab_size).update(ids[1:])  # the whole corpus' next tokens
    assert result.meta["corpus_tokens_counted"] == 299
    class_of = torch.arange(lm.vocab_size) % 2
    sums = RefineSums(len(result.sites), counts.buckets([2, 10]), 3, class_of, 2)
    for w in windows(ids[:121], 50, overlap=1):
        res = capture_residuals(lm, w[None])
        sums.update(ops.lens_stats(res.hidden, lm.norm, lm.unembed, res.targets, 1, token_sets=sums.token_sets()),
                    res.targets)
    want = sums.summary(result.sites, result.buckets, ["even", "odd"])
    assert result.lenses["logit"] == want
    assert result.lenses["tuned"]["top1_share"] == want["top1_share"]
    assert result.lenses["tuned"]["depth_to_correct_hist"] == want["depth_to_correct_hist"]
    assert result.lenses["logit"]["tokens"] == 120 and want["target_share"][0] > 0.3  # token 7 is 1-2
    by_class = result.lenses["logit"]["depth_by_class"]
    assert by_class["even"]["tokens"] + by_class["odd"]["tokens"] == 120
    assert [a + b for a, b in zip(by_class["even"]["hist"], by_class["odd"]["hist"])] == \
        result.lenses["logit"]["depth_to_correct_hist"]


def test_refine_from_a_start_token():
    # the tail read with start=-41 is the same window as the tail alone (counts from the whole corpus)
    lm = LensModel.from_hf(tiny_model("llama"))
    ids = torch.randint(0, VOCAB, (200,))
    counts = TokenCounts(lm.vocab_size).update(ids[1:])
    tail = refine(lm, ids, tokens=40, start=-41, seq_len=16, buckets=[5], counts=counts, progress=False)
    alone = refine(lm, ids[-41:], tokens=40, seq_len=16, buckets=[5], counts=counts, progress=False)
    head = refine(lm, ids, tokens=40, seq_len=16, buckets=[5], counts=counts, progress=False)
    assert tail.meta["start"] == 159 and tail.lenses == alone.lenses and tail.lenses != head.lenses


def test_refine_bad_inputs():
    lm = LensModel.from_hf(tiny_model("llama"))
    ids = torch.randint(0, VOCAB, (50,))
    with pytest.raises(ValueError, match="corpus: 50 tokens from 0, need 101"):
        refine(lm, ids, tokens=100, buckets=[5], progress=False)
    with pytest.raises(ValueError, match="corpus: 10 tokens from 40, need 21"):
        refine(lm, ids, tokens=20, start=-10, buckets=[5], progress=False)
    with pytest.raises(ValueError, match="start: expected an int in"):
        refine(lm, ids, tokens=20, start=50, buckets=[5], progress=False)
    with pytest.raises(ValueError, match="buckets"):
        refine(lm, ids, tokens=20, buckets=[10, 5], progress=False)


def test_cli_refine_on_the_real_model(real_lm, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("fusedlens.core.models.load_model", lambda *a, **k: real_lm)
    answers, choices = tmp_path / "a.jsonl", tmp_path / "c.jsonl"
    answers.write_text(json.dumps({"prompt": "The capital of France is", "answer": " Paris, France"}) + "\n")
    choices.write_text(json.dumps({"prompt": "Is ice cold? A) yes B) no. Answer:", "options": [" A", " B"],
                                   "answer": " A"}) + "\n")
    rc = cli.main(["refine", "--tokens", "64", "--seq-len", "32", "--answers", str(answers), "--choices", str(choices),
                   "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "lens: logit" in printed and "top1 1-10" in printed and "never correct" in printed
    assert "function word:" in printed
    saved = json.loads((tmp_path / "refine.json").read_text())
    s = saved["lenses"]["logit"]
    assert saved["buckets"] == ["1-10", "11-100", "101-1,000", "1,001+"] and len(s["sites"]) == 31
    assert all(abs(sum(row) - 1) < 1e-9 for row in s["top1_share"]) and s["tokens"] == 64
    assert all(abs(sum(row) - 1) < 1e-4 for row in s["mass"])
    assert (tmp_path / "refine.png").stat().st_size > 20_000
    assert saved["tasks"]["logit"]["answers"]["first_token"]["tokens"] == 1
    assert len(saved["tasks"]["logit"]["choices"]["answer_share"]) == 31
    assert "multiple choice (1 prompts)" in printed and (tmp_path / "refine_tasks.png").stat().st_size > 10_000
    fw = s["depth_by_class"]["function word"]
    assert fw["tokens"] + s["depth_by_class"]["other"]["tokens"] == 64 and fw["tokens"] > 0
    assert cli.main(["refine", "--buckets", "10,x", "--out", str(tmp_path / "b")]) == 2


def test_class_maps(real_lm, tmp_path):
    from fusedlens.refine.classes import FUNCTION_WORDS, class_map

    tok = real_lm.tokenizer
    the = tok.convert_tokens_to_ids("Ġthe")
    classes, names = class_map("function_words", tok, real_lm.vocab_size)
    assert names == ["function word", "other"] and int(classes[the]) == 0 and "the" in FUNCTION_WORDS
    assert int(classes[tok.convert_tokens_to_ids("Ġcomputer")]) == 1
    path = tmp_path / "c.json"
    path.write_text('{"Ġthe": "det", "Ġa": "det", "Ġnot_a_token_at_all": "x", "Ġdog": "noun"}')
    with __import__("pytest").warns(UserWarning, match="1 of 4 entries name no token"):
        classes, names = class_map(str(path), tok, real_lm.vocab_size)
    assert names == ["det", "noun"] and int(classes[the]) == 0 and int((classes >= 0).sum()) == 3


def test_class_map_keys_name_tokens_one_way(lm, tmp_path):
    """A key "5" is the token "5" (JSON keys are strings); "id:5" is token id 5."""
    from fusedlens.refine.classes import class_map, read_class_map

    tok = lm.tokenizer  # character-level: the token "5" is not id 5
    five = tok.convert_tokens_to_ids("5")
    assert five != 5
    path = tmp_path / "classes.json"
    path.write_text(json.dumps({"5": "digit", "id:5": "by id", "a": "digit"}))
    classes, names = class_map(str(path), tok, lm.vocab_size)
    assert names == ["digit", "by id"] and int(classes[five]) == 0 and int(classes[5]) == 1
    assert int(classes[tok.convert_tokens_to_ids("a")]) == 0 and int((classes >= 0).sum()) == 3
    for content, message in (({"id:x": "a", "b": "c"}, "'id:x' is not a token id"), ({"a": "x"}, "names one class"),
                             ({"a": ["x"], "b": "y"}, "the class of 'a' must be a name"), ([1], "holds a list")):
        path.write_text(json.dumps(content))
        with pytest.raises(ValueError, match=f"^classes: .*{message}"):
            read_class_map(str(path))
