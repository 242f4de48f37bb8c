"""Per-token lens records as Parquet: one row per token, one list entry per site.

Columns: sequence, position, token, target (-100: none), then per site (fixed-size
lists of length `sites`): kl_to_final, entropy, target_rank, target_logprob,
final_top1_rank, and topk_ids / topk_logprobs (sites x k). A run writes one part
file per checkpoint interval, named by its first sequence, so a resumed run
rewrites exactly the part it had not finished.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass

import numpy as np
import torch

from ..core.analysis import CorpusAnalysis, CorpusBatch, CorpusPass
from ..core.fields import option
from ..ops.stats import LensStats


def _fixed_lists(values: np.ndarray):
    """[N, *shape] array -> nested fixed-size list column of length N."""
    import pyarrow as pa

    arr = pa.array(values.reshape(-1))
    for size in reversed(values.shape[1:]):
        arr = pa.FixedSizeListArray.from_arrays(arr, size)
    return arr


def token_table(stats: LensStats, sequence: torch.Tensor, position: torch.Tensor, token: torch.Tensor,
                targets: torch.Tensor, sites: list[str]):
    """A pyarrow Table of one batch's tokens (stats [sites, N])."""
    import pyarrow as pa

    def per_token(t, dtype):  # [S, N, ...] -> [N, S, ...]
        return t.detach().cpu().movedim(0, 1).contiguous().numpy().astype(dtype)

    nan = torch.full_like(stats.lse, float("nan"))
    minus = torch.full_like(stats.final_top1_rank, -1)
    cols = {
        "sequence": pa.array(sequence.cpu().numpy().astype(np.int64)),
        "position": pa.array(position.cpu().numpy().astype(np.int32)),
        "token": pa.array(token.cpu().numpy().astype(np.int32)),
        "target": pa.array(targets.cpu().numpy().astype(np.int32)),
        "kl_to_final": _fixed_lists(per_token(stats.kl_to_final, np.float32)),
        "entropy": _fixed_lists(per_token(stats.entropy, np.float32)),
        "target_rank": _fixed_lists(per_token(stats.target_rank if stats.target_rank is not None else minus, np.int32)),
        "target_logprob": _fixed_lists(per_token(stats.target_logprob if stats.target_logprob is not None else nan,
                                                 np.float32)),
        "final_top1_rank": _fixed_lists(per_token(stats.final_top1_rank, np.int32)),
        "topk_ids": _fixed_lists(per_token(stats.topk_ids, np.int32)),
        "topk_logprobs": _fixed_lists(per_token(stats.topk_logits - stats.lse[..., None], np.float32)),
    }
    return pa.table(cols, metadata={b"sites": ",".join(sites).encode()})


class RecordWriter:
    """Parquet parts under folder/: part-r{rank}-s{first sequence}.parquet."""

    def __init__(self, folder: str, rank: int = 0):
        self.folder, self.rank = folder, rank
        self._writer = None
        self._path = None
        os.makedirs(folder, exist_ok=True)

    def write(self, table, first_sequence: int) -> None:
        import pyarrow.parquet as pq

        if self._writer is None:
            self._path = os.path.join(self.folder, f"part-r{self.rank}-s{first_sequence:09d}.parquet")
            self._writer = pq.ParquetWriter(self._path + ".tmp", table.schema, compression="zstd")
        self._writer.write_table(table)

    def close_part(self) -> None:
        """Finish the current part (at a checkpoint): it is complete from here on."""
        if self._writer is not None:
            self._writer.close()
            os.replace(self._path + ".tmp", self._path)
            self._writer = None

    def drop_unfinished(self) -> None:
        """Remove parts a killed run left half-written (they are redone on resume)."""
        for path in glob.glob(os.path.join(self.folder, f"part-r{self.rank}-*.parquet.tmp")):
            os.remove(path)


@dataclass(kw_only=True)
class RecordOptions:
    records: bool = option(False, "also write per-token records as Parquet")


class CorpusRecords(CorpusAnalysis):
    """The per-token records as an analysis of the pass: a part file per checkpoint interval, no sums."""

    name = "records"
    Options = RecordOptions

    def __init__(self, folder: str, corpus_pass: CorpusPass):
        self.sites = corpus_pass.sites
        self.writer = RecordWriter(folder, corpus_pass.rank)
        self.writer.drop_unfinished()

    @classmethod
    def build(cls, cfg, corpus_pass: CorpusPass) -> "CorpusRecords | None":
        return cls(os.path.join(cfg.out, "records"), corpus_pass) if cfg.records else None

    def update(self, batch: CorpusBatch) -> None:
        res = batch.residuals
        self.writer.write(token_table(batch.stats, batch.sequence, res.position, res.input_ids, res.targets, self.sites),
                          int(batch.sequence[0]))

    def on_checkpoint(self) -> None:
        self.writer.close_part()

    def state_dict(self) -> None:
        return None  # the parts on disk are the state; a resumed run rewrites the unfinished one

    def load_state_dict(self, state) -> None:
        pass

    def merge(self, other: "CorpusRecords") -> None:
        pass  # parts of different runs stay separate files

    def all_reduce(self) -> None:
        pass


def read_records(folder: str):
    """All finished parts of a run as one pyarrow Table, in sequence order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = sorted(glob.glob(os.path.join(folder, "part-*.parquet")))
    if not paths:
        raise ValueError(f"records: no Parquet parts in {folder}")
    table = pa.concat_tables([pq.read_table(p) for p in paths])
    return table.sort_by([("sequence", "ascending"), ("position", "ascending")])
