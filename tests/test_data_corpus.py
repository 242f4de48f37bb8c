"""data/corpus.py: corpus sources packed into sequences, progress estimates, errors."""
import json

import pytest
import torch

from fusedlens.data.corpus import CorpusProgress, iter_sequences


def sequences(lm, sources, seq_len, **kw):
    return [(s.index, s.ids.tolist()) for s in iter_sequences(lm.tokenizer, sources, seq_len, **kw)]


def test_corpus_sources_agree(lm, tmp_path, text, corpus_file):
    docs = [text[:2500], text[2500:]]
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "a.txt").write_text(docs[0])
    (tmp_path / "folder" / "b.md").write_text(docs[1])
    (tmp_path / "docs.jsonl").write_text("\n".join(json.dumps({"body": d, "id": i}) for i, d in enumerate(docs)))
    import datasets

    datasets.Dataset.from_dict({"body": docs}).save_to_disk(str(tmp_path / "saved"))
    want = sequences(lm, [str(tmp_path / "folder")], 100)
    assert want == sequences(lm, [str(tmp_path / "docs.jsonl")], 100, field="body")
    assert want == sequences(lm, [str(tmp_path / "saved")], 100, field="body")
    # packing: every token of both documents, an end-of-text token after each
    flat = [t for _, ids in want for t in ids]
    eos = lm.tokenizer.eos_token_id
    assert flat.count(eos) == 2 and len(flat) == len(text) + 2
    # shards and resume points partition the same sequence order
    shards = sequences(lm, [corpus_file], 64, rank=0, world=2) + sequences(lm, [corpus_file], 64, rank=1, world=2)
    assert sorted(shards) == sequences(lm, [corpus_file], 64)
    assert sequences(lm, [corpus_file], 64, start=7, stop=11) == sequences(lm, [corpus_file], 64)[7:11]


@pytest.mark.parametrize("kind", ["file", "folder", "jsonl", "saved", "pydoc"])
def test_corpus_progress_estimates_the_token_count(lm, tmp_path, text, kind):
    import datasets

    docs = [text[:2500], text[2500:4000], text[4000:]]
    source = {"file": tmp_path / "a.txt", "folder": tmp_path / "folder", "jsonl": tmp_path / "docs.jsonl",
              "saved": tmp_path / "saved", "pydoc": "pydoc"}[kind]
    if kind == "file":
        source.write_text(text)
    elif kind == "folder":
        source.mkdir()
        for i, d in enumerate(docs):
            (source / f"{i}.txt").write_text(d)
    elif kind == "jsonl":
        source.write_text("\n".join(json.dumps({"text": d}) for d in docs) + "\n\n")
    elif kind == "saved":
        datasets.Dataset.from_dict({"text": docs}).save_to_disk(str(source))
    progress = CorpusProgress([str(source)])
    assert progress.total_bytes > 0 and progress.estimate_total(0) is None
    seqs = iter_sequences(lm.tokenizer, [str(source)], 50, stop=None if kind != "pydoc" else 400, progress=progress)
    lengths = [len(s.ids) for s in seqs]
    total = sum(lengths)
    if kind == "pydoc":  # a budget stops early: the estimate is of the whole corpus, well past it
        assert progress.read_bytes < progress.total_bytes / 10
        return
    assert progress.read_bytes == pytest.approx(progress.total_bytes, rel=0.05)
    seqs = iter_sequences(lm.tokenizer, [str(source)], 50, progress=(progress := CorpusProgress([str(source)])))
    done = sum(len(next(seqs).ids) for _ in range(len(lengths) // 3))  # a third of the way in
    assert progress.estimate_total(done) == pytest.approx(total, rel=0.1)


def test_corpus_errors(lm, tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\nnot json\n')
    (tmp_path / "empty").mkdir()
    (tmp_path / "blank.txt").write_text("   \n")
    for source, match in [(str(tmp_path / "bad.jsonl"), "line 2"), (str(tmp_path / "empty"), "no text"),
                          (str(tmp_path / "missing.txt"), "not a file"), (str(tmp_path / "blank.txt"), "holds no text")]:
        with pytest.raises(ValueError, match=match):
            list(iter_sequences(lm.tokenizer, [source], 16))


def test_long_text_files_get_no_end_of_text_inside(lm, tmp_path, text, monkeypatch):
    # 0.1 cut text files into ~1 MiB pieces and appended an end-of-text token after each piece
    import fusedlens.data.corpus as corpus

    monkeypatch.setattr(corpus, "CHUNK_CHARS", 500)  # many pieces from a 6,000-character file
    path = tmp_path / "long.txt"
    path.write_text(text)
    ids = torch.cat([s.ids for s in iter_sequences(lm.tokenizer, [str(path)], 64)])
    eos = lm.tokenizer.eos_token_id
    assert (ids == eos).sum() == 1 and ids[-1] == eos  # one document: one end-of-text, at its end


@pytest.mark.parametrize("kind", ["txt", "jsonl", "folder"])
def test_non_utf8_is_refused_naming_the_file(lm, tmp_path, kind):
    # 0.1 decoded text files with replacement characters, silently (JSONL was strict): now every source is
    bad = "caf\u00e9 au lait\n".encode("latin-1")
    if kind == "jsonl":
        path = tmp_path / "docs.jsonl"
        path.write_bytes(b'{"text": "ok"}\n{"text": "' + bad.strip() + b'"}\n')
    else:
        folder = tmp_path / "docs" if kind == "folder" else tmp_path
        folder.mkdir(exist_ok=True)
        path = folder / "latin1.txt"
        path.write_bytes(b"plain ascii\n" * 10 + bad)
    source = str(path.parent if kind == "folder" else path)
    with pytest.raises(ValueError, match=rf"corpus: {path} is not UTF-8 text"):
        list(iter_sequences(lm.tokenizer, [source], 16))
    from fusedlens.data.corpus import read_text

    with pytest.raises(ValueError, match="is not UTF-8 text"):
        read_text(str(path))
