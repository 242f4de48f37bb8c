"""The demo: logit lens of the embedded SmolLM2-135M over English text from pydoc_data."""
from __future__ import annotations

import os
import time

import torch

from . import ops, report
from .capture import ResidualCapture
from .models import LensModel, load_model
from .reference import LensStats


def pydoc_text() -> str:
    """Real English text that ships with Python: the pydoc help topics, in a fixed order."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


def token_batches(tokenizer, text: str, n_tokens: int, seq_len: int) -> torch.Tensor:
    """The first n_tokens of text, cut into sequences of at most seq_len tokens."""
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[0][:n_tokens]
    if ids.numel() == 0:
        raise ValueError("text: the corpus is empty")
    return [ids[i:i + seq_len] for i in range(0, ids.numel(), seq_len)]


def run_demo(n_tokens: int = 2048, seq_len: int = 512, out_dir: str = "fusedlens_out", k: int = 1,
             lm: LensModel | None = None, quiet: bool = False) -> list[dict]:
    say = (lambda *a: None) if quiet else print
    if n_tokens < 2 or seq_len < 2:
        raise ValueError(f"n_tokens, seq_len: need at least 2 tokens, got {n_tokens}, {seq_len}")
    t0 = time.perf_counter()
    lm = lm or load_model()
    say(f"model: {lm.describe()['model']} ({lm.n_layers} layers, d_model {lm.d_model}, vocab {lm.vocab_size}) "
        f"loaded in {time.perf_counter() - t0:.1f}s")
    capture = ResidualCapture(lm)
    parts, targets, n_seen = [], [], 0
    t1 = time.perf_counter()
    for seq in token_batches(lm.tokenizer, pydoc_text(), n_tokens, seq_len):
        res = capture.run(seq[None])
        parts.append(ops.lens_stats(res.hidden, lm.norm, lm.unembed, res.targets, k))
        targets.append(res.targets)
        n_seen += seq.numel()
    stats = LensStats.cat(parts)
    rows = report.per_layer_summary(stats, capture.sites, torch.cat(targets))
    say(f"logit lens over {n_seen} tokens of pydoc_data.topics in {time.perf_counter() - t1:.1f}s\n")
    say(report.format_table(rows))
    os.makedirs(out_dir, exist_ok=True)
    report.write_json({"model": lm.describe(), "tokens": n_seen, "layers": rows}, os.path.join(out_dir, "demo.json"))
    report.plot_layer_curves(rows, os.path.join(out_dir, "demo_logit_lens.png"),
                             title=f"logit lens, SmolLM2-135M-Instruct, {n_seen} tokens of pydoc text")
    say(f"\nwrote {out_dir}/demo.json and {out_dir}/demo_logit_lens.png")
    return rows
