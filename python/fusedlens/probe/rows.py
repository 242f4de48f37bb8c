"""Which rows a probe target has: lags within a sequence and position selection.

A batch's rows are its real tokens in sequence-major order (`Residuals`): row r is
position p of a sequence of n rows. A missing value is NaN everywhere here: a lag K
gives row r the value of position p + K of the same sequence, NaN when that position
does not exist (the first |K| rows for K < 0, the last K for K > 0: dropped, never
padded or wrapped), and a row outside the selected positions gets NaN in every
column. Rows whose columns are all NaN are no rows at all (folds.Folds).
"""
from __future__ import annotations

import re

import torch


def sequence_lengths(sequence: torch.Tensor) -> torch.Tensor:
    """Per row, the number of rows of its sequence (sequence ids of consecutive rows, each sequence contiguous)."""
    _, inverse, counts = torch.unique_consecutive(sequence, return_inverse=True, return_counts=True)
    return counts[inverse]


def lagged(values: torch.Tensor, position: torch.Tensor, length: torch.Tensor, lag: int) -> torch.Tensor:
    """values [rows, m] → the values of position + lag in each row's own sequence, NaN where there is none."""
    if lag == 0:
        return values
    rows = values.shape[0]
    out = torch.full_like(values, float("nan"))
    inside = (position + lag >= 0) & (position + lag < length)
    src = torch.arange(rows, device=values.device)[inside] + lag  # sequences are contiguous: p + K is row r + K
    out[inside] = values[src]
    return out


def parse_position_ranges(spec: str | None) -> list[tuple[int, int | None]] | None:
    """'0', '-1' (the last row of each sequence), '5-' (5 on), '2-10' (2 to 10), or a comma list of them →
    [(first, last or None)] with negative positions counted from each sequence's end; None: every row."""
    if spec is None or str(spec).strip() in ("", "all"):
        return None
    out = []
    for part in str(spec).split(","):
        single = re.fullmatch(r"\s*(-?\d+)\s*", part)
        span = re.fullmatch(r"\s*(-?\d+)-(-?\d+)?\s*", part)
        if single:
            out.append((int(single.group(1)), int(single.group(1))))
        elif span:
            first, last = int(span.group(1)), None if span.group(2) is None else int(span.group(2))
            if last is not None and (first >= 0) == (last >= 0) and last < first:
                raise ValueError(f"positions: the range {part.strip()!r} is empty")
            out.append((first, last))
        else:
            raise ValueError(f"positions: expected e.g. '0', '-1', '5-', '2-10' or a comma list of them, got {spec!r}")
    return out


def position_mask(ranges, position: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """Rows whose position is in one of the parsed ranges (negatives from each sequence's end)."""
    if ranges is None:
        return torch.ones_like(position, dtype=torch.bool)
    keep = torch.zeros_like(position, dtype=torch.bool)
    for first, last in ranges:
        lo = length + first if first < 0 else torch.full_like(length, first)
        hi = length - 1 if last is None else length + last if last < 0 else torch.full_like(length, last)
        keep |= (position >= lo) & (position <= hi)
    return keep


def lag_names(names: list[str], lags: list[int]) -> list[str]:
    """Column names of every (target, lag): the lag is in every name."""
    return [f"{name}@lag{lag}" for lag in lags for name in names]


def check_lags(lags) -> list[int]:
    """Distinct integer lags, in the order given."""
    try:
        given = [int(k) for k in lags]
    except (TypeError, ValueError):
        raise ValueError(f"lags: expected integers, got {lags!r}") from None
    if not given or any(isinstance(k, bool) or int(k) != k for k in lags):
        raise ValueError(f"lags: expected one or more integers, got {list(lags)!r}")
    return list(dict.fromkeys(given))
