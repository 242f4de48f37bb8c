"""Corpora as streams of fixed-length token sequences, read lazily.

A source is a text file, a folder (every text / JSONL file under it, in sorted
order), a JSONL file (one document per line, text under `field`), a `datasets`
dataset saved with `save_to_disk` (read with pyarrow, one record batch at a time),
`-` for standard input, or `pydoc` for the English text that ships with Python.
Documents are tokenised one at a time and packed into sequences of `seq_len`
tokens, an end-of-text token between documents. Sequence i is the same whatever
the process, so shards (i mod world) and resume points (skip the first n) are
exact.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from typing import Iterator

import torch

TEXT_SUFFIXES = (".txt", ".text", ".md", ".rst", ".py")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
CHUNK_CHARS = 1 << 20  # long text files are read and tokenised about 1 MiB at a time


def _text_chunks(stream) -> Iterator[str]:
    """A text stream in pieces of about CHUNK_CHARS, cut after a newline."""
    buf, size = [], 0
    for line in stream:
        buf.append(line)
        size += len(line)
        if size >= CHUNK_CHARS:
            yield "".join(buf)
            buf, size = [], 0
    if buf:
        yield "".join(buf)


def _jsonl_texts(path: str, field: str) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"corpus: {path} line {n} is not JSON ({err.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get(field), str):
                raise ValueError(f"corpus: {path} line {n} has no text field {field!r}")
            yield record[field]


def _saved_dataset_texts(folder: str, field: str) -> Iterator[str]:
    import pyarrow as pa

    with open(os.path.join(folder, "state.json"), encoding="utf-8") as f:
        files = [d["filename"] for d in json.load(f)["_data_files"]]
    for name in files:
        with pa.memory_map(os.path.join(folder, name)) as source:
            reader = pa.ipc.open_stream(source)
            if field not in reader.schema.names:
                raise ValueError(f"corpus: dataset {folder} has no column {field!r} (columns: {reader.schema.names})")
            for batch in reader:
                yield from (t for t in batch.column(field).to_pylist() if t)


def _folder_files(folder: str) -> list[str]:
    out = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        out += [os.path.join(root, f) for f in sorted(files) if f.endswith(TEXT_SUFFIXES + JSONL_SUFFIXES)]
    return out


def iter_texts(source: str, field: str = "text") -> Iterator[str]:
    """The documents (or, for long text files, pieces of them) of `source`, in a fixed order."""
    if source == "pydoc":
        from .demo import pydoc_text

        yield pydoc_text()
    elif source == "-":
        yield from _text_chunks(sys.stdin)
    elif os.path.isdir(source):
        if os.path.exists(os.path.join(source, "state.json")):
            yield from _saved_dataset_texts(source, field)
            return
        files = _folder_files(source)
        if not files:
            raise ValueError(f"corpus: no text or JSONL files under {source}")
        for path in files:
            yield from iter_texts(path, field)
    elif os.path.isfile(source):
        if source.endswith(JSONL_SUFFIXES):
            yield from _jsonl_texts(source, field)
        else:
            with open(source, encoding="utf-8", errors="replace") as f:
                yield from _text_chunks(f)
    else:
        raise ValueError(f"corpus: {source!r} is not a file, a folder, '-' or 'pydoc'")


@dataclass
class Sequence:
    index: int             # position in the corpus' sequence order (0, 1, ...)
    ids: torch.Tensor      # [<= seq_len] token ids


def iter_sequences(tokenizer, sources: list[str], seq_len: int, *, field: str = "text", start: int = 0,
                   stop: int | None = None, rank: int = 0, world: int = 1) -> Iterator[Sequence]:
    """Sequences start <= i < stop of the packed corpus with i % world == rank.

    Skipped sequences are tokenised but not returned, so resuming at `start` gives
    exactly the sequences an uninterrupted run would have seen from there.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len: need at least 2 tokens, got {seq_len}")
    if not sources:
        raise ValueError("corpus: no source given")
    sep = tokenizer.eos_token_id
    buf: list[int] = []
    index, seen_text = 0, False

    def wanted(i):
        return i >= start and i % world == rank

    for source in sources:
        for text in iter_texts(source, field):
            seen_text = seen_text or bool(text.strip())
            buf += tokenizer(text, add_special_tokens=False)["input_ids"]
            if sep is not None:
                buf.append(sep)
            pos = 0
            while len(buf) - pos >= seq_len:
                if stop is not None and index >= stop:
                    return
                if wanted(index):
                    yield Sequence(index, torch.tensor(buf[pos:pos + seq_len], dtype=torch.long))
                pos += seq_len
                index += 1
            del buf[:pos]
    if not seen_text:
        raise ValueError(f"corpus: {', '.join(sources)} holds no text")
    if len(buf) >= 2 and (stop is None or index < stop) and wanted(index):
        yield Sequence(index, torch.tensor(buf, dtype=torch.long))
