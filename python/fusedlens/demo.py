"""The demo: logit lens of the embedded SmolLM2-135M over English text from pydoc_data."""
from __future__ import annotations

import os
import time

import torch

from . import report
from .lens import LogitLens
from .models import LensModel, load_model


def pydoc_text() -> str:
    """Real English text that ships with Python: the pydoc help topics, in a fixed order."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


def first_tokens(tokenizer, text: str, n_tokens: int) -> torch.Tensor:
    """The first n_tokens token ids of text (no special tokens), as a 1-D tensor."""
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[0][:n_tokens]
    if ids.numel() == 0:
        raise ValueError("text: the corpus is empty")
    return ids


def token_batches(tokenizer, text: str, n_tokens: int, seq_len: int) -> list[torch.Tensor]:
    """The first n_tokens of text, cut into sequences of at most seq_len tokens."""
    ids = first_tokens(tokenizer, text, n_tokens)
    return [ids[i:i + seq_len] for i in range(0, ids.numel(), seq_len)]


def run_demo(n_tokens: int = 2048, seq_len: int = 512, out_dir: str = "fusedlens_out", k: int = 1,
             lm: LensModel | None = None, quiet: bool = False, grid_positions: int = 24) -> list[dict]:
    say = (lambda *a: None) if quiet else print
    if n_tokens < 2 or seq_len < 2:
        raise ValueError(f"n_tokens, seq_len: need at least 2 tokens, got {n_tokens}, {seq_len}")
    t0 = time.perf_counter()
    lm = lm or load_model()
    say(f"model: {lm.describe()['model']} ({lm.n_layers} layers, d_model {lm.d_model}, vocab {lm.vocab_size}) "
        f"loaded in {time.perf_counter() - t0:.1f}s")
    t1 = time.perf_counter()
    result = LogitLens(lm, k=k).run(first_tokens(lm.tokenizer, pydoc_text(), n_tokens), seq_len=seq_len,
                                    batch_size=1, progress=not quiet)  # one sequence a forward: a moving bar, less memory
    rows = result.summary()
    say(f"logit lens over {result.n_tokens} tokens of pydoc_data.topics in {time.perf_counter() - t1:.1f}s\n")
    say(report.format_table(rows))
    say(f"\nmean prediction depth: {result.mean_prediction_depth:.2f} (sites, 0 = embedding)")
    os.makedirs(out_dir, exist_ok=True)
    report.write_json({"model": lm.describe(), "tokens": result.n_tokens,
                       "mean_prediction_depth": result.mean_prediction_depth, "layers": rows},
                      os.path.join(out_dir, "demo.json"))
    report.plot_layer_curves(rows, os.path.join(out_dir, "demo_logit_lens.png"),
                             title=f"logit lens, SmolLM2-135M-Instruct, {result.n_tokens} tokens of pydoc text")
    report.plot_lens_grid(result, lm.tokenizer, os.path.join(out_dir, "demo_lens_grid.png"), seq=0,
                          max_positions=grid_positions,
                          title=f"logit lens of the first {grid_positions} tokens of the pydoc text (bold = true next token)")
    say(f"wrote {out_dir}/demo.json, {out_dir}/demo_logit_lens.png and {out_dir}/demo_lens_grid.png")
    return rows
