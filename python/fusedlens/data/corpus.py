"""Corpora as streams of fixed-length token sequences, read lazily.

A source is a text file, a folder (every text / JSONL file under it, in sorted
order), a JSONL file (one document per line, text under `field`), a `datasets`
dataset saved with `save_to_disk` (read with pyarrow, one record batch at a time),
`-` for standard input, or `pydoc` for the English text that ships with Python.
Documents are tokenised one at a time and packed into sequences of `seq_len`
tokens, an end-of-text token between documents (none inside one: long text files are
read in ~1 MiB pieces, joined without inserting anything). Sequence i is the same whatever
the process, so shards (i mod world) and resume points (skip the first n) are
exact.

A `CorpusProgress` passed to `iter_sequences` counts the source bytes read so far
against the corpus size where it is known (everything but stdin), so a progress
bar can estimate the corpus' token count and the time left.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch

from .pydoc import pydoc_text

TEXT_SUFFIXES = (".txt", ".text", ".md", ".rst", ".py")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
CHUNK_CHARS = 1 << 20  # long text files are read and tokenised about 1 MiB at a time


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", errors="replace"))


@contextmanager
def _utf8(name: str):
    """Every source is read as strict UTF-8: a file that is not is refused, naming it, rather than
    decoded with replacement characters that would silently change the tokens."""
    try:
        yield
    except UnicodeDecodeError as err:
        raise ValueError(f"corpus: {name} is not UTF-8 text ({err.reason}: byte {err.object[err.start:err.start + 1]!r}); "
                         "convert it first, e.g. with iconv -f latin1 -t utf-8") from None


def read_text(path: str) -> str:
    """A whole UTF-8 text file (strict, as every corpus source)."""
    with _utf8(path), open(path, encoding="utf-8") as f:
        return f.read()


def _text_chunks(stream, name: str) -> Iterator[tuple[str, int, bool]]:
    """A text stream in pieces of about CHUNK_CHARS, cut after a newline, with their size in bytes;
    only the last piece ends the document (the packer inserts no end-of-text token between pieces)."""
    buf, size, ready = [], 0, None
    with _utf8(name):
        for line in stream:
            buf.append(line)
            size += len(line)
            if size >= CHUNK_CHARS:
                if ready is not None:
                    yield ready[0], ready[1], False
                text = "".join(buf)
                ready, buf, size = (text, _utf8_len(text)), [], 0
    if buf:
        if ready is not None:
            yield ready[0], ready[1], False
        text = "".join(buf)
        ready = (text, _utf8_len(text))
    if ready is not None:
        yield ready[0], ready[1], True


def _jsonl_texts(path: str, field: str) -> Iterator[tuple[str, int, bool]]:
    with _utf8(path), open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                yield "", _utf8_len(line), True
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"corpus: {path} line {n} is not JSON ({err.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get(field), str):
                raise ValueError(f"corpus: {path} line {n} has no text field {field!r}")
            yield record[field], _utf8_len(line), True


def _dataset_files(folder: str) -> list[str]:
    with open(os.path.join(folder, "state.json"), encoding="utf-8") as f:
        return [os.path.join(folder, d["filename"]) for d in json.load(f)["_data_files"]]


def _dataset_bytes(folder: str) -> int:
    """The record batches' size, which `_saved_dataset_texts` counts (memory-mapped: nothing is copied)."""
    import pyarrow as pa

    total = 0
    for path in _dataset_files(folder):
        with pa.memory_map(path) as source:
            total += sum(batch.nbytes for batch in pa.ipc.open_stream(source))
    return total


def _saved_dataset_texts(folder: str, field: str) -> Iterator[tuple[str, int]]:
    import pyarrow as pa

    for path in _dataset_files(folder):
        with pa.memory_map(path) as source:
            reader = pa.ipc.open_stream(source)
            if field not in reader.schema.names:
                raise ValueError(f"corpus: dataset {folder} has no column {field!r} (columns: {reader.schema.names})")
            for batch in reader:
                texts = [t or "" for t in batch.column(field).to_pylist()]
                # the batch's bytes, spread over its rows by their length
                chars = sum(map(len, texts)) or 1
                yield from ((t, batch.nbytes * len(t) / chars, True) for t in texts)


def _folder_files(folder: str) -> list[str]:
    out = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        out += [os.path.join(root, f) for f in sorted(files) if f.endswith(TEXT_SUFFIXES + JSONL_SUFFIXES)]
    return out


def _pieces(source: str, field: str) -> Iterator[tuple[str, float, bool]]:
    """(text, source bytes it stands for, whether it ends a document) for each document or piece
    of `source`, in a fixed order."""
    if source == "pydoc":
        text = pydoc_text()
        yield text, _utf8_len(text), True
    elif source == "-":
        yield from _text_chunks(io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8"), "standard input")
    elif os.path.isdir(source):
        if os.path.exists(os.path.join(source, "state.json")):
            yield from _saved_dataset_texts(source, field)
            return
        files = _folder_files(source)
        if not files:
            raise ValueError(f"corpus: no text or JSONL files under {source}")
        for path in files:
            yield from _pieces(path, field)
    elif os.path.isfile(source):
        if source.endswith(JSONL_SUFFIXES):
            yield from _jsonl_texts(source, field)
        else:
            with open(source, encoding="utf-8") as f:
                yield from _text_chunks(f, source)
    else:
        raise ValueError(f"corpus: {source!r} is not a file, a folder, '-' or 'pydoc'")


def source_bytes(source: str) -> int | None:
    """The size in bytes of `source` as `_pieces` counts it; None for stdin."""
    if source == "pydoc":
        return _utf8_len(pydoc_text())
    if source == "-":
        return None
    if os.path.isdir(source):
        if os.path.exists(os.path.join(source, "state.json")):
            return _dataset_bytes(source)
        return sum(os.path.getsize(p) for p in _folder_files(source))
    return os.path.getsize(source) if os.path.isfile(source) else None


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return f"{os.path.getsize(path)}:{h.hexdigest()[:32]}"


def corpus_fingerprint(sources: list[str]) -> list:
    """What the corpus holds, per source file (size and content hash), so that a checkpoint is
    never resumed over an edited corpus. Standard input cannot be read twice: it is named only."""
    out = []
    for source in sources:
        if source == "pydoc":
            out.append(["pydoc", hashlib.sha256(pydoc_text().encode()).hexdigest()[:32]])
        elif source == "-":
            out.append(["stdin"])
        elif os.path.isdir(source):
            files = _dataset_files(source) if os.path.exists(os.path.join(source, "state.json")) \
                else _folder_files(source)
            out.append([source] + [[os.path.relpath(p, source), _file_digest(p)] for p in files])
        elif os.path.isfile(source):
            out.append([source, _file_digest(source)])
        else:
            raise ValueError(f"corpus: {source!r} is not a file, a folder, '-' or 'pydoc'")
    return out


class CorpusProgress:
    """Source bytes read so far and, where every source has a known size, the corpus' size."""

    def __init__(self, sources: list[str]):
        sizes = [source_bytes(s) for s in sources]
        self.total_bytes = None if any(n is None for n in sizes) else sum(sizes)
        self.read_bytes = 0.0

    def estimate_total(self, done: int) -> int | None:
        """Extrapolate a count `done` of something read so far (tokens) to the whole corpus."""
        if not self.total_bytes or self.read_bytes <= 0:
            return None
        return max(done, round(done * self.total_bytes / min(self.read_bytes, self.total_bytes)))


@dataclass
class Sequence:
    index: int             # position in the corpus' sequence order (0, 1, ...)
    ids: torch.Tensor      # [<= seq_len] token ids


def iter_sequences(tokenizer, sources: list[str], seq_len: int, *, field: str = "text", start: int = 0,
                   stop: int | None = None, max_tokens: int | None = None, rank: int = 0, world: int = 1,
                   progress: CorpusProgress | None = None) -> Iterator[Sequence]:
    """Sequences start <= i < stop of the packed corpus with i % world == rank.

    max_tokens cuts the packed corpus after that many tokens (the sequence it falls in is
    shortened), so a budget is met exactly. Skipped sequences are tokenised but not
    returned, so resuming at `start` gives exactly the sequences an uninterrupted run
    would have seen from there. `progress`, if given, is kept up to date with the bytes read.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len: need at least 2 tokens, got {seq_len}")
    if max_tokens is not None:
        if max_tokens < 1:
            raise ValueError(f"max_tokens: need at least 1, got {max_tokens}")
        last = -(-max_tokens // seq_len)  # sequences the budget touches
        stop = last if stop is None else min(stop, last)

    def cut(i: int, ids: list[int]) -> torch.Tensor:
        if max_tokens is not None and i * seq_len + len(ids) > max_tokens:
            ids = ids[:max_tokens - i * seq_len]
        return torch.tensor(ids, dtype=torch.long)

    if not sources:
        raise ValueError("corpus: no source given")
    sep = tokenizer.eos_token_id
    buf: list[int] = []
    index, seen_text = 0, False

    def wanted(i):
        return i >= start and i % world == rank

    for source in sources:
        for text, nbytes, ends_doc in _pieces(source, field):
            if not text:
                if progress is not None:
                    progress.read_bytes += nbytes
                continue
            seen_text = seen_text or bool(text.strip())
            held = len(buf)  # tokens left over from earlier pieces
            buf += tokenizer(text, add_special_tokens=False)["input_ids"]
            if sep is not None and ends_doc:
                buf.append(sep)
            piece_bytes, piece_tokens = (progress.read_bytes if progress else 0.0), len(buf) - held
            pos = 0
            while len(buf) - pos >= seq_len:
                if stop is not None and index >= stop:
                    return
                pos += seq_len
                if progress is not None:  # bytes read, pro rata within this piece
                    progress.read_bytes = piece_bytes + nbytes * max(pos - held, 0) / piece_tokens
                if wanted(index):
                    yield Sequence(index, cut(index, buf[pos - seq_len:pos]))
                index += 1
            if progress is not None:
                progress.read_bytes = piece_bytes + nbytes
            del buf[:pos]
    if not seen_text:
        raise ValueError(f"corpus: {', '.join(sources)} holds no text")
    if len(buf) >= 2 and (stop is None or index < stop) and wanted(index):
        yield Sequence(index, cut(index, buf))
