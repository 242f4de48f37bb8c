"""Target files (JSONL, Parquet) aligned to the real tokenizer's tokens; their errors name the line."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from fusedlens.probe.user_targets import read_target_file


@pytest.fixture(scope="module")
def tok(real_lm):
    return real_lm.tokenizer


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_per_token_lists_spans_and_labels(tok, tmp_path):
    text = "The Eiffel Tower stands in Paris."
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    n = len(enc["input_ids"])
    start = text.index("Eiffel Tower")
    path = write_jsonl(tmp_path / "t.jsonl", [
        {"text": text, "targets": {"pos": list(range(n)), "odd": [1.5 if i % 2 else None for i in range(n)]},
         "spans": [{"char_start": start, "char_end": start + len("Eiffel Tower"), "name": "entity", "value": 1}],
         "label": "fact"},
        {"text": "Cats sleep.", "label": "other"}])
    tf = read_target_file(path, tok)
    assert tf.names == ["pos", "odd", "entity", "label"] and tf.classes == {"label": ["fact", "other"]}
    assert torch.equal(tf.sequences[0], torch.tensor(enc["input_ids"]))
    assert tf.values["pos"][0].tolist() == list(range(n))
    assert torch.isnan(tf.values["odd"][0][0::2]).all() and (tf.values["odd"][0][1::2] == 1.5).all()
    # the span's tokens: exactly those whose characters overlap "Eiffel Tower" (a multi-token name)
    want = [i for i, (s, e) in enumerate(enc["offset_mapping"]) if s < start + 12 and e > start]
    assert len(want) >= 2
    assert (~torch.isnan(tf.values["entity"][0])).nonzero()[:, 0].tolist() == want
    assert torch.isnan(tf.values["entity"][1]).all() and torch.isnan(tf.values["pos"][1]).all()
    assert (tf.values["label"][0] == 0).all() and (tf.values["label"][1] == 1).all()


def test_parquet_form(tok, tmp_path):
    texts = write_jsonl(tmp_path / "texts.jsonl", [{"text": "One two three."}, {"text": "Four five."}])
    pq.write_table(pa.table({"sequence": [0, 0, 1], "position": [0, 2, 1], "name": ["y", "y", "y"],
                             "value": [1.0, 3.0, 5.0]}), tmp_path / "t.parquet")
    tf = read_target_file(str(tmp_path / "t.parquet"), tok, texts=texts)
    assert tf.values["y"][0][[0, 2]].tolist() == [1.0, 3.0] and torch.isnan(tf.values["y"][0][1])
    assert tf.values["y"][1][1] == 5.0
    with pytest.raises(ValueError, match="needs the texts"):
        read_target_file(str(tmp_path / "t.parquet"), tok)
    pq.write_table(pa.table({"sequence": [0], "position": [99], "name": ["y"], "value": [1.0]}), tmp_path / "b.parquet")
    with pytest.raises(ValueError, match=r"b.parquet row 0: position 99 is outside sequence 0's"):
        read_target_file(str(tmp_path / "b.parquet"), tok, texts=texts)


@pytest.mark.parametrize("row, message", [
    ({"text": "Hello world", "targets": {"y": [1.0]}}, r"line 2: target 'y' has 1 values, the text has \d+ tokens"),
    ({"text": "Hello world", "spans": [{"char_start": 3, "char_end": 99, "name": "s", "value": 1}]},
     r"line 2: span \[3, 99\) is not a non-empty range"),
    ({"text": "Hello", "targets": {"y": [float("nan")]}}, "line 2: target 'y' has a non-finite value"),
    ({"text": "Hello", "targets": {"y": [True]}}, "line 2: target 'y': expected a number, a string"),
    ({"text": "", "label": 1}, 'line 2: expected an object with a non-empty "text"'),
    ({"text": "Hello", "labels": 1}, r"line 2: unknown key\(s\) \['labels'\]"),
])
def test_misaligned_or_bad_files_are_errors_naming_the_line(tok, tmp_path, row, message):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "Fine.", "targets": {"y": [0.0] * len(tok("Fine.")["input_ids"])}},
                                              row])
    with pytest.raises(ValueError, match=message):
        read_target_file(path, tok)


def test_a_span_covering_no_token_is_an_error(tmp_path):
    def trimmed(text, add_special_tokens=False, return_offsets_mapping=False):  # offsets without the spaces
        words = text.split(" ")
        starts = [sum(len(w) + 1 for w in words[:i]) for i in range(len(words))]
        return {"input_ids": list(range(len(words))), "offset_mapping": [(s, s + len(w)) for s, w in zip(starts, words)]}

    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "ab cd", "spans": [{"char_start": 2, "char_end": 3, "name": "s",
                                                                           "value": 1}]}])
    with pytest.raises(ValueError, match=r"line 1: span \[2, 3\) of 's' covers no token"):
        read_target_file(path, trimmed)


def test_mixed_kinds_and_conflicts(tok, tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "A b", "label": "x"}, {"text": "C d", "label": 2}])
    with pytest.raises(ValueError, match="target 'label' mixes numbers and strings"):
        read_target_file(path, tok)
    path = write_jsonl(tmp_path / "u.jsonl", [{"text": "Alpha beta", "spans": [
        {"char_start": 0, "char_end": 5, "name": "s", "value": 1}, {"char_start": 0, "char_end": 3, "name": "s",
                                                                    "value": 2}]}])
    with pytest.raises(ValueError, match="target 's' gets two values"):
        read_target_file(path, tok)
