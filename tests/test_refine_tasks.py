"""refine.tasks on the real model: answers' depth (first token vs the rest) and multiple choice, the final
site's choice against the model's own logits in float64; bad files are errors naming the line."""
import json

import pytest
import torch

from fusedlens.core.capture import capture_residuals
from fusedlens.data.windows import tokenize
from fusedlens.core.files import read_jsonl
from fusedlens.refine.tasks import answer_depths, multiple_choice


def write(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_answers_and_choices(real_lm, tmp_path):
    lm = real_lm
    answers = read_jsonl("answers", write(tmp_path / "a.jsonl", [
        {"prompt": "The capital of France is", "answer": " Paris, a city on the Seine"},
        {"prompt": "Two plus two equals", "answer": " four"}]), ("prompt", "answer"))
    got = answer_depths(lm, answers)
    n_answer_tokens = sum(tokenize(lm.tokenizer, a["answer"]).numel() for a in answers)
    assert got["first_token"]["tokens"] == 2 and got["later_tokens"]["tokens"] == n_answer_tokens - 2
    assert len(got["first_token"]["hist"]) == len(got["sites"]) + 1
    items = [{"prompt": "Question: Is the sky blue? Options: A) yes B) no. Answer:", "options": [" A", " B"],
              "answer": " A"},
             {"prompt": "Question: Is fire cold? Options: A) yes B) no. Answer:", "options": [" A", " B"],
              "answer": " B"},
             {"prompt": "Pick C. Options: A, B, C, D. Answer:", "options": [" A", " B", " C", " D"], "answer": " C"}]
    choices = read_jsonl("answers", write(tmp_path / "c.jsonl", items), ("prompt", "options", "answer"))
    mc = multiple_choice(lm, choices)
    assert mc["prompts"] == 3 and len(mc["format_share"]) == len(mc["sites"])
    fmt = right = 0.0
    for it in items:  # the final site from the model's own head, in float64
        ids = tokenize(lm.tokenizer, it["prompt"])
        h = capture_residuals(lm, ids[None]).hidden[-1, -1:].double()
        z = (lm.norm(h) @ lm.unembed.weight.double().T)[0]
        opts = torch.tensor([int(tokenize(lm.tokenizer, o)[0]) for o in it["options"]])
        fmt += float(int(z.argmax()) in opts.tolist())
        right += float(int(z[opts].argmax()) == it["options"].index(it["answer"]))
    assert mc["format_share"][-1] == pytest.approx(fmt / 3) and mc["answer_share"][-1] == pytest.approx(right / 3)


@pytest.mark.parametrize("row, message", [
    ({"prompt": "Q:", "options": [" AB", " C"], "answer": " C"}, r"line 1: option ' AB' is 2 tokens"),
    ({"prompt": "Q:", "options": [" A"], "answer": " A"}, "line 1: expected 2 to 16 options"),
    ({"prompt": "Q:", "options": [" A", " B"], "answer": " C"}, "line 1: expected 2 to 16 options, the answer"),
])
def test_bad_choice_files(real_lm, tmp_path, row, message):
    if row["options"][0] == " AB" and tokenize(real_lm.tokenizer, " AB").numel() == 1:
        row = dict(row, options=[" ABCDXYZ", " C"])
        message = r"line 1: option ' ABCDXYZ' is \d+ tokens"
    items = read_jsonl("answers", write(tmp_path / "c.jsonl", [row]), ("prompt", "options", "answer"))
    with pytest.raises(ValueError, match=message):
        multiple_choice(real_lm, items)
    with pytest.raises(ValueError, match="line 1: expected an object with prompt, answer"):
        read_jsonl("answers", write(tmp_path / "a.jsonl", [{"prompt": "x"}]), ("prompt", "answer"))
