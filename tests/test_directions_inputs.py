"""directions.inputs: pos/neg, pairs and labeled files (or records) → token pairs with their rows selected;
the deterministic split; bad input as one-line ValueErrors naming the argument."""
import json

import pytest
import torch

from tiny_models import tiny_tokenizer
from fusedlens.directions.inputs import read_pairs, split

TOK = tiny_tokenizer()  # one token per character: positions are character indices


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_pos_neg_files_pair_line_by_line(tmp_path):
    pos = write(tmp_path / "p.jsonl", [{"text": "good day"}, {"text": "fine"}])
    neg = write(tmp_path / "n.jsonl", [{"text": "bad day"}, {"text": "awful!"}])
    pairs, info = read_pairs(TOK, pos=pos, neg=neg)
    assert len(pairs) == 2 and info["source"] == "pos/neg" and info["file"] == [pos, neg]
    p, n = pairs[1]
    assert TOK.decode(p.ids) == "fine" and TOK.decode(n.ids) == "awful!"
    assert p.select.tolist() == [False, False, False, True]  # last token
    assert "line 2" in n.where


def test_positions_all_and_span():
    pairs, _ = read_pairs(TOK, pairs=[{"pos": "abc", "neg": "xy"}], position="all")
    assert pairs[0][0].select.all() and pairs[0][1].select.numel() == 2
    recs = [{"pos": {"text": "the cat sat", "span": [4, 7]}, "neg": {"text": "a dog", "span": [1, 3]}}]
    pairs, _ = read_pairs(TOK, pairs=recs, position="span")
    assert pairs[0][0].select.nonzero()[:, 0].tolist() == [4, 5, 6]
    assert pairs[0][1].select.nonzero()[:, 0].tolist() == [1, 2]


def test_labeled_file_picks_the_positive_class(tmp_path):
    rows = [{"text": f"t{i}", "label": lab} for i, lab in enumerate(["neg", "pos", "pos", "neg"])]
    path = write(tmp_path / "l.jsonl", rows)
    pairs, info = read_pairs(TOK, labeled=path)
    assert info["positive"] == "pos" and info["negative"] == "neg"
    assert [TOK.decode(p.ids) for p, _ in pairs] == ["t1", "t2"]
    assert [TOK.decode(q.ids) for _, q in pairs] == ["t0", "t3"]
    pairs, info = read_pairs(TOK, labeled=path, positive="neg")
    assert [TOK.decode(p.ids) for p, _ in pairs] == ["t0", "t3"]
    rows = [{"text": "a", "y": 1}, {"text": "b", "y": 0}]
    pairs, info = read_pairs(TOK, labeled=rows, label_key="y")
    assert info["positive"] == 1 and TOK.decode(pairs[0][0].ids) == "a"
    for given, want in (("0", 0), ("1", 1)):  # the command line's text names a JSON number or boolean
        assert read_pairs(TOK, labeled=rows, label_key="y", positive=given)[1]["positive"] == want
    flags = [{"text": "a", "ok": True}, {"text": "b", "ok": False}]
    assert read_pairs(TOK, labeled=flags, label_key="ok", positive="false")[1]["positive"] is False


def test_split_is_deterministic_disjoint_and_sized():
    for n in (2, 3, 10, 97):
        for h in (0.0, 0.2, 0.5):
            if n - (max(1, round(h * n)) if h else 0) < 2:
                with pytest.raises(ValueError, match="heldout"):
                    split(n, h)
                continue
            train, held = split(n, h, seed=3)
            assert (train, held) == split(n, h, seed=3)
            assert sorted(train + held) == list(range(n))
            assert len(held) == (max(1, round(h * n)) if h else 0)
    assert split(50, 0.2, seed=0) != split(50, 0.2, seed=1)


def test_bad_input_is_one_line(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    pos = write(tmp_path / "p.jsonl", [{"text": "a"}, {"text": "b"}, {"text": "c"}])
    neg = write(tmp_path / "n.jsonl", [{"text": "x"}, {"text": "y"}])
    cases = [
        (dict(pos=pos, neg=neg), "neg: 2 examples but pos has 3"),
        (dict(pos=str(empty), neg=neg), "pos: .*no lines"),
        (dict(pairs=str(empty)), "pairs: .*no lines"),
        (dict(pos=pos), "neg: pos and neg come together"),
        (dict(pos=pos, neg=neg, pairs=[{"pos": "a", "neg": "b"}]), "inputs: give exactly one"),
        (dict(), "inputs: give exactly one"),
        (dict(pos=str(tmp_path / "missing.jsonl"), neg=neg), "pos: .*missing.jsonl not found"),
        (dict(labeled=[{"text": "a", "label": 1}, {"text": "b", "label": 1}]), "labeled: expected two classes"),
        (dict(labeled=[{"text": "a", "label": 1}, {"text": "b", "label": 0}, {"text": "c", "label": 2}]),
         "labeled: expected two classes"),
        (dict(labeled=[{"text": "a", "label": 1}, {"text": "b", "label": 0}, {"text": "c", "label": 0}]),
         "has 1: the PCA"),
        (dict(labeled=[{"text": "a", "label": 1}, {"text": "b", "label": 0}], positive=5), "positive: 5"),
        (dict(pairs=[{"pos": {"text": "abc", "span": [1, 1]}, "neg": "x"}], position="span"), "span"),
        (dict(pairs=[{"pos": {"text": "abc", "span": [0, 2]}, "neg": "xy"}], position="span"), r"\(neg\).*span"),
        (dict(pairs=[{"pos": {"text": "abc", "span": [0, 2]}, "neg": "xy"}]), "has a \"span\" but position"),
        (dict(pairs=[{"pos": "", "neg": "x"}]), "non-empty text"),
        (dict(pairs=[{"pos": "a"}]), "pairs: record 0"),
        (dict(pairs=[{"pos": "a", "neg": "b"}], position="first"), "position: expected one of"),
    ]
    for kw, msg in cases:
        with pytest.raises(ValueError, match=msg) as err:
            read_pairs(TOK, **kw)
        assert "\n" not in str(err.value), kw
    # without a tokenizer: every check but the tokens (the command line's, before the model loads)
    assert read_pairs(None, pairs=[{"pos": "a", "neg": "b"}])[0] == [(None, None)]


def test_span_covering_no_token_is_an_error():
    """A span over characters no token overlaps (a tokenizer that drops spaces) is a clear error."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "ab": 1, "cd": 2}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    recs = [{"pos": {"text": "ab   cd", "span": [3, 4]}, "neg": {"text": "ab cd", "span": [0, 2]}}]
    with pytest.raises(ValueError, match=r"span \[3, 4\) covers no token"):
        read_pairs(fast, pairs=recs, position="span")
    recs[0]["pos"]["span"] = [1, 6]
    pairs, _ = read_pairs(fast, pairs=recs, position="span")
    assert pairs[0][0].select.tolist() == [True, True] and torch.equal(pairs[0][0].ids, torch.tensor([1, 2]))
