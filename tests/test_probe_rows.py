"""probe.rows: lags within each sequence (never across, never wrapped) and position selection."""
import pytest
import torch

from fusedlens.probe.rows import check_lags, lagged, parse_position_ranges, position_mask, sequence_lengths


def test_lag_and_position_rows():
    seq = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    position, length = torch.tensor([0, 1, 2, 0, 1, 0, 1, 2, 3]), sequence_lengths(seq)
    v = torch.arange(9.0)[:, None]
    nan = float("nan")
    torch.testing.assert_close(lagged(v, position, length, -1)[:, 0],
                               torch.tensor([nan, 0, 1, nan, 3, nan, 5, 6, 7]), equal_nan=True)
    torch.testing.assert_close(lagged(v, position, length, 2)[:, 0],
                               torch.tensor([2, nan, nan, nan, nan, 7, 8, nan, nan]), equal_nan=True)
    assert position_mask(parse_position_ranges("-1"), position, length).nonzero()[:, 0].tolist() == [2, 4, 8]
    assert position_mask(parse_position_ranges("0,2-"), position, length).nonzero()[:, 0].tolist() == [0, 2, 3, 5, 7, 8]
    assert position_mask(parse_position_ranges("1-2"), position, length).nonzero()[:, 0].tolist() == [1, 2, 4, 6, 7]
    assert position_mask(parse_position_ranges("1--2"), position, length).nonzero()[:, 0].tolist() == [1, 6, 7]
    assert parse_position_ranges(None) is None and parse_position_ranges("all") is None
    for bad in ("last", "3-1", "1-2-3"):
        with pytest.raises(ValueError, match="positions"):
            parse_position_ranges(bad)


def test_lags_are_distinct_integers():
    assert check_lags((0, -1, 0)) == [0, -1]
    for bad in ((), ("a",), (0.5,), (True,)):
        with pytest.raises(ValueError, match="lags"):
            check_lags(bad)
