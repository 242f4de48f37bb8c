"""The task probes of Gupta et al. 2025 (How Do LLMs Use Their Depth?), per site of a lens:
multi-token answers (depth to the correct answer for an answer's first token against the rest,
teacher-forced) and multiple choice (is the top-1 an option at all — the format — and is the most
probable option, by token-set mass, the right one).

answers JSONL: {"prompt": ..., "answer": ...} per line; choices JSONL: {"prompt": ..., "options":
["A", "B", ...], "answer": "B"} per line, each option one token of the model's vocabulary exactly as
written (write " A" if the option follows a space).
"""
from __future__ import annotations

import torch

from .. import ops
from ..core.capture import ResidualCapture
from ..data.windows import tokenize
from .aggregate import depth_summary, depth_to_correct


def answer_depths(lm, items: list[dict], stats_fn=None) -> dict:
    """Depth-to-correct histograms [sites + 1] of answers' first tokens and of their other tokens."""
    capture = ResidualCapture(lm)
    S = len(capture.sites)
    first, rest = torch.zeros(S + 1, dtype=torch.int64), torch.zeros(S + 1, dtype=torch.int64)
    for it in items:
        p, a = tokenize(lm.tokenizer, str(it["prompt"])), tokenize(lm.tokenizer, str(it["answer"]))
        if p.numel() == 0 or a.numel() == 0:
            raise ValueError(f"{it['_where']}: the prompt and the answer need at least one token each")
        ids = torch.cat([p, a])
        res = capture.run(ids[None])
        stats = (stats_fn or _logit_stats(lm))(res.hidden, res.targets)
        rows = torch.arange(p.numel() - 1, ids.numel() - 1)  # the positions that predict the answer's tokens
        depth = depth_to_correct(stats.top1[:, rows].cpu(), ids[rows + 1])
        first[depth[0]] += 1
        rest += torch.bincount(depth[1:], minlength=S + 1)
    return {"sites": capture.sites, "first_token": depth_summary(first), "later_tokens": depth_summary(rest)}


def multiple_choice(lm, items: list[dict], stats_fn=None) -> dict:
    """Per site: the share of prompts whose top-1 is one of their option tokens (format) and whose most
    probable option is the right one (answer)."""
    capture = ResidualCapture(lm)
    S = len(capture.sites)
    fmt, right = torch.zeros(S), torch.zeros(S)
    for it in items:
        opts = it["options"]
        if not isinstance(opts, list) or len(opts) < 2 or len(opts) > 16 or it["answer"] not in opts:
            raise ValueError(f"{it['_where']}: expected 2 to 16 options, the answer among them")
        token = []
        for o in opts:
            t = tokenize(lm.tokenizer, str(o))
            if t.numel() != 1:
                raise ValueError(f"{it['_where']}: option {o!r} is {t.numel()} tokens; each option must be "
                                 f"one token (mind the leading space)")
            token.append(int(t[0]))
        if len(set(token)) != len(token):
            raise ValueError(f"{it['_where']}: two options are the same token")
        sets = torch.full((lm.vocab_size,), -1, dtype=torch.long)
        sets[torch.tensor(token)] = torch.arange(len(token))
        ids = tokenize(lm.tokenizer, str(it["prompt"]))
        res = capture.run(ids[None])
        last = slice(ids.numel() - 1, ids.numel())
        stats = (stats_fn or _logit_stats(lm))(res.hidden[:, last], res.targets[last], token_sets=sets)
        top1 = stats.top1[:, 0].cpu()
        fmt += torch.isin(top1, torch.tensor(token)).double()
        right += (stats.set_mass[:, 0].cpu().argmax(-1) == opts.index(it["answer"])).double()
    n = len(items)
    return {"sites": capture.sites, "prompts": n, "format_share": (fmt / n).tolist(),
            "answer_share": (right / n).tolist()}


def _logit_stats(lm):
    return lambda hidden, targets, token_sets=None: ops.lens_stats(hidden, lm.norm, lm.unembed, targets, 1,
                                                                   token_sets=token_sets)

