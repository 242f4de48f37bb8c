"""Direct logit attribution in the corpus pass (`fusedlens run --dla`): each component's mean direct effect on the true
next token over the corpus, from the same forward as the lens (core.components hooks beside the residual
capture), summed in float64, checkpointed and all-reduced like every other sum."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..core.analysis import CorpusAnalysis, CorpusBatch, CorpusPass
from ..core.components import ComponentCapture, Frozen
from ..core.fields import option
from ..core.files import write_json
from ..report.page import array
from ..report.dla import head_heatmap, plot_block_bars, plot_head_matrix
from .attribution import component_names, contributions


@dataclass(kw_only=True)
class DLAOptions:
    dla: bool = option(False, "direct logit attribution: each block's and head's mean direct effect on the true "
                              "next token (dla.json, dla_heads.png, dla_blocks.png)")


class CorpusDLA(CorpusAnalysis):
    name = "dla"
    Options = DLAOptions

    @classmethod
    def build(cls, cfg, corpus_pass: CorpusPass) -> "CorpusDLA | None":
        return cls(corpus_pass.lm, corpus_pass.capture) if cfg.dla else None

    def __init__(self, lm, residual_capture=None):
        self.lm, self.residual_capture = lm, residual_capture
        self.capture = ComponentCapture(lm, heads=True)
        self.names = component_names(lm.n_layers, self.capture.n_heads, None)
        self.sums = torch.zeros(len(self.names), dtype=torch.float64)
        self.logit_sum = torch.zeros((), dtype=torch.float64)
        self.tokens = 0

    def forward_context(self):
        return self.capture  # the components' hooks ride along the same forward

    def update(self, batch: CorpusBatch) -> None:
        """After a forward run inside `forward_context()`: add the rows' effects on their next tokens."""
        targets = batch.residuals.targets
        forward = getattr(self.residual_capture, "forward_mask", None)  # a BOS in front is not a row
        comp = self.capture.collect((forward if forward is not None else batch.mask).bool())
        ids = targets.to(comp.final.device).masked_fill(targets.to(comp.final.device) < 0, -1)
        keep = ids >= 0
        c = contributions(comp, Frozen.of(self.lm.norm, comp.final), self.lm, ids)[:, keep]
        self.sums += c.double().sum(1).cpu()
        self.logit_sum += c[self._blocks()].double().sum().cpu()  # = the model's logits of the next tokens
        self.tokens += int(keep.sum())

    def _blocks(self) -> list[int]:
        return [j for j, n in enumerate(self.names) if n.split(".")[0] in ("embed", "attn", "mlp", "bias")]

    def state_dict(self) -> dict:
        return {"sums": self.sums, "logit_sum": self.logit_sum, "tokens": self.tokens}

    def load_state_dict(self, state: dict) -> None:
        self.sums, self.logit_sum, self.tokens = state["sums"], state["logit_sum"], state["tokens"]

    def merge(self, other: "CorpusDLA") -> None:
        self.sums += other.sums
        self.logit_sum += other.logit_sum
        self.tokens += other.tokens

    def all_reduce(self) -> None:
        import torch.distributed as dist

        packed = torch.cat([self.sums, self.logit_sum[None], torch.tensor([float(self.tokens)], dtype=torch.float64)])
        dist.all_reduce(packed)
        self.sums, self.logit_sum, self.tokens = packed[:-2], packed[-2], int(packed[-1])

    def means(self) -> torch.Tensor:
        return self.sums / max(self.tokens, 1)

    def _by_name(self) -> tuple[torch.Tensor, dict, torch.Tensor]:
        """The means, each component's index in them, and the heads' means as [layers, heads]."""
        m = self.means()
        L, H = self.lm.n_layers, self.capture.n_heads
        idx = {n: j for j, n in enumerate(self.names)}
        return m, idx, torch.tensor([[float(m[idx[f"head.{i}.{h}"]]) for h in range(H)] for i in range(L)])

    def write(self, out: str, summary: dict) -> None:
        m, idx, heads = self._by_name()
        L = self.lm.n_layers
        blocks = torch.tensor([[float(m[idx[f"attn.{i}"]]), float(m[idx[f"mlp.{i}"]])] for i in range(L)])
        write_json({"tokens": self.tokens, "target": "the true next token",
                    "mean_logit": float(self.logit_sum) / max(self.tokens, 1),
                    "mean_contribution": dict(zip(self.names, m.tolist()))}, os.path.join(out, "dla.json"))
        plot_head_matrix(heads.numpy(), os.path.join(out, "dla_heads.png"),
                         f"mean direct effect of each head on the true next token ({self.tokens} tokens)")
        plot_block_bars(blocks.numpy(), os.path.join(out, "dla_blocks.png"),
                        f"mean direct effect of each block on the true next token (embed {float(m[0]):.2f}, "
                        f"bias {float(m[idx['bias']]):.2f})")

    def views(self, summary: dict, vocab) -> list[dict]:
        m, idx, heads = self._by_name()
        blocks = [n for n in self.names if not n.startswith("head.") and not n.startswith("neuron.")]
        return [head_heatmap(heads, f"mean direct effect of each head on the true next token ({self.tokens} tokens)",
                             "mean direct effect (logits)", row_order="up"),
                {"type": "bars", "title": "mean direct effect of each block on the true next token",
                 "labels": blocks, "values": array(torch.stack([m[idx[n]] for n in blocks]))}]
