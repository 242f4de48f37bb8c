"""Exact patches that rerun only what a patch can reach.

A patch at block ℓ and position p changes nothing below block ℓ and nothing before position p. So
the corrupted run is made once, keeping its key/value cache and every block's output; a patch then
runs only positions p… (the cache cropped to the first p positions stands for the rest), and
blocks below the first one the patch can touch are skipped, their outputs at p… taken from the
corrupted run. A cell costs (L − ℓ)(T − p) block-positions instead of L·T. Cells are grouped by
position and, within one, by their first block, `batch_size` rows per forward.

The numbers are the full forward's to float32 accuracy, not bit for bit: shorter sequences and the
cache change the order of the sums (tests: against the full grid in float64 on every family).
"""
from __future__ import annotations

from collections import defaultdict
from contextlib import nullcontext

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache

from ..core.attention_tap import AttentionTap
from ..core.models import LensModel
from .hooks import Edit, Intervention, parse_site


MIN_CHUNKS = 2  # per position: the upper chunks start higher and skip more blocks


def first_block(lm: LensModel, site: str) -> int:
    """The lowest block a patch of `site` must run: the embedding's is block 0; a block's output is
    written by a hook on that block, which can be skipped (its output hook still fires)."""
    kind, layer, _ = parse_site(site, lm)
    if kind == "embed":
        return 0
    return layer + 1 if kind == "resid" else layer


class SuffixRuns:
    """The corrupted prompt `ids` [T] run once; `metrics(cells, read)` patches each cell (site, value,
    position) alone and returns read(last-position logits [rows, vocab]) per cell."""

    def __init__(self, lm: LensModel, ids: torch.Tensor):
        self.lm, self.ids = lm, ids.reshape(-1)
        outputs: dict[int, torch.Tensor] = {}
        handles = [b.register_forward_hook(lambda _m, _a, out, i=i: outputs.__setitem__(i, out.detach()))
                   for i, b in enumerate(lm.layers)]
        try:
            with torch.no_grad(), AttentionTap(lm) as tap:
                lm.model(input_ids=self.ids[None].to(lm.device), use_cache=False, logits_to_keep=1)
        finally:
            for h in handles:
                h.remove()
        if not all(isinstance(outputs.get(i), torch.Tensor) for i in range(lm.n_layers)):
            raise TypeError("suffix runs: a decoder block returned something other than its hidden state")
        # every position's keys and values as the attention saw them (a sliding-window cache keeps
        # only the last window, so the cache of a shorter prefix is rebuilt from these)
        self.keys = [(tap.calls[i].k.detach(), tap.calls[i].v.detach()) for i in range(lm.n_layers)]
        self.outputs = [outputs[i] for i in range(lm.n_layers)]
        self.forwards = 0  # batched suffix forwards run so far

    def metrics(self, cells: list[tuple[str, torch.Tensor, int]], read, batch_size: int = 32,
                progress: bool = False) -> torch.Tensor:
        by_position = defaultdict(list)
        for j, (site, value, pos) in enumerate(cells):
            by_position[pos].append((first_block(self.lm, site), j, site, value))
        chunks = []
        for pos, group in sorted(by_position.items()):
            group.sort(key=lambda g: (g[0], g[1]))
            # at least two chunks a position: the upper one starts higher and skips more blocks
            size = -(-len(group) // max(min(MIN_CHUNKS, len(group)), -(-len(group) // batch_size)))
            chunks += [(pos, group[i:i + size]) for i in range(0, len(group), size)]
        out = torch.empty(len(cells), dtype=torch.float64)
        for pos, chunk in tqdm(chunks, desc="patch", unit="batch", disable=not progress):
            got = self._run(pos, chunk[0][0], [(site, value) for _, _, site, value in chunk], read)
            out[[j for _, j, _, _ in chunk]] = got.double().cpu()
        self.forwards += len(chunks)
        return out

    @torch.no_grad()
    def _run(self, pos: int, start: int, patches, read) -> torch.Tensor:
        rows = len(patches)
        cache = DynamicCache(config=self.lm.model.config)
        if pos > 0:
            for i, (k, v) in enumerate(self.keys):
                cache.update(k[:, :, :pos].expand(rows, -1, -1, -1).contiguous(),
                             v[:, :, :pos].expand(rows, -1, -1, -1).contiguous(), i)
        blocks = self.lm.layers
        for i in range(start):  # below the first block a patch reaches: the corrupted run's outputs
            kept = self.outputs[i][:, pos:].expand(rows, -1, -1)
            blocks[i].forward = lambda *_a, kept=kept, **_k: kept
        edits = [Edit(site, "replace", value, rows=[j], positions=[0])
                 for j, (site, value) in enumerate(patches) if site[0] not in "kv"]
        # keys and values reach the attention function with the cached ones in front (a sliding
        # window's cache keeps fewer): the suffix's first is the (T − pos)-th from the end
        kv = [(j, *parse_site(site, self.lm), value) for j, (site, value) in enumerate(patches) if site[0] in "kv"]
        suffix = self.ids.numel() - pos

        def edit_kv(layer, q, k, v):
            got = {"k": k, "v": v}
            for j, kind, i, head, value in kv:
                if i == layer:
                    x = got[kind].clone() if got[kind] is k or got[kind] is v else got[kind]
                    x[j, head, x.shape[2] - suffix] = value.to(x.dtype)
                    got[kind] = x
            return q, got["k"], got["v"]

        try:
            with Intervention(self.lm, edits), (AttentionTap(self.lm, edit_kv, keep=False) if kv else nullcontext()):
                logits = self.lm.model(input_ids=self.ids[None, pos:].expand(rows, -1).to(self.lm.device),
                                       past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
        finally:
            for i in range(start):
                del blocks[i].forward
        return read(logits)
