"""concepts.lists and concepts.tokens: built-in and user concept lists, bad input, and words as single
tokens (space form first, bare form next; multi-token words skipped and counted)."""
import json

import pytest

from fusedlens.concepts.lists import BUILTIN, load_json, resolve
from fusedlens.concepts.tokens import single_token, token_pairs
from tiny_models import tiny_tokenizer


def test_builtin_lists_are_big_enough_and_clean():
    assert {"male→female", "singular→plural", "lower→capitalised", "base→comparative"} <= set(BUILTIN)
    for name, pairs in BUILTIN.items():
        assert len(pairs) >= 15, name
        assert len(set(pairs)) == len(pairs), f"{name}: a pair twice"
        assert all(len(p) == 2 and p[0] != p[1] and all(w.strip() == w and w for w in p) for p in pairs), name


def test_resolve_names_aliases_and_files(tmp_path):
    assert resolve(None) == BUILTIN
    assert list(resolve("male-female, verb->past")) == ["male→female", "verb→past"]
    assert list(resolve(["MALE-FEMALE", "English→French"])) == ["male→female", "English→French"]
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"hot→cold": [["hot", "cold"], ["warm", "cool"]]}))
    got = resolve([str(path), "singular-plural"])
    assert list(got) == ["hot→cold", "singular→plural"] and got["hot→cold"] == [("hot", "cold"), ("warm", "cool")]
    assert resolve({"a": [["x", "y"]]}) == {"a": [("x", "y")]}


@pytest.mark.parametrize("content, name", [
    ("{not json", "concepts"),
    ("[[\"a\", \"b\"]]", "concepts"),
    ("{}", "concepts"),
    ("{\"c\": [[\"a\"]]}", "concepts"),
    ("{\"c\": [[\"a\", 3]]}", "concepts"),
    ("{\"c\": []}", "concepts"),
    ("{\"c\": [[\"a\", \" \"]]}", "concepts"),
])
def test_malformed_json_is_one_line(tmp_path, content, name):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError) as e:
        resolve(str(path))
    assert str(e.value).startswith(name) and "\n" not in str(e.value)


def test_unknown_names_and_missing_files():
    for bad, words in (("male-femal", "unknown concept"), (["nope"], "unknown concept"), ("/no/such.json", "not a file"),
                       ([3], "expected"), (["verb-past", "verb→past"], "given twice"), ("", "no concept")):
        with pytest.raises(ValueError, match=words) as e:
            resolve(bad)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="not a file"):
        load_json("/no/such.json")


def test_token_pairs_with_a_character_tokenizer():
    tok = tiny_tokenizer()  # one token per character: " a" is two tokens, "a" one
    lists = {"case": [("a", "A"), ("b", "B"), ("cd", "CD"), ("q", "q")], "multi": [("xy", "z")]}
    used, skipped = token_pairs(tok, lists)
    assert [(p.x, p.y, p.form) for p in used] == [("a", "A", "bare"), ("b", "B", "bare")]
    assert used[0].x_id == tok.convert_tokens_to_ids("a") and used[0].y_id == tok.convert_tokens_to_ids("A")
    reasons = {(s["concept"], s["x"]): s["reason"] for s in skipped}
    assert len(skipped) == 3
    assert reasons[("case", "cd")] == "not one token: cd, CD"
    assert reasons[("case", "q")] == "the same token"
    assert reasons[("multi", "xy")] == "not one token: xy"
    used, skipped = token_pairs(tok, lists, form="space")
    assert used == [] and len(skipped) == 5  # never a crash, every pair counted
    assert single_token(tok, "a") is not None and single_token(tok, " a") is None


def test_token_pairs_bad_input():
    with pytest.raises(ValueError, match="^form:"):
        token_pairs(tiny_tokenizer(), {"c": [("a", "b")]}, form="spaces")
    with pytest.raises(ValueError, match="^tokenizer:"):
        token_pairs(None, {"c": [("a", "b")]})
