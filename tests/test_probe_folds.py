"""probe/folds.py: the one fold scheme (bucket rules, fit = cross_validate of its buckets, state)."""
import pytest
import torch

from fusedlens.probe.accumulator import RidgeAccumulator
from fusedlens.probe.folds import Folds
from fusedlens.probe.solve import cross_validate


def test_bucket_rules():
    assert [Folds.after_training(i, 3, False) for i in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    assert Folds.after_training(5, 3, True) == 3
    assert [Folds.interleaved(i, 3) for i in range(9)] == [0, 1, 2, 3, 0, 1, 2, 3, 0]


def test_fit_is_cross_validation_of_the_buckets_and_state_round_trips():
    folds = Folds(3, 2, 6, 1)
    accs = [RidgeAccumulator(2, 6, 1) for _ in range(4)]
    assert not folds.complete
    for i in range(12):
        x, y = torch.randn(2, 9, 6) + 5, torch.randn(9, 1)
        b = Folds.interleaved(i, 3)
        folds.add(b, x, y)
        accs[b].update(x, y)
    assert folds.complete
    assert folds.fit(alphas=[0.0, 1.0]) == cross_validate(accs[:3], accs[3], [0.0, 1.0])
    again = Folds(3, 2, 6, 1)
    again.load_state(folds.state())
    assert again.fit(alphas=[0.0, 1.0]) == folds.fit(alphas=[0.0, 1.0])
    with pytest.raises(ValueError, match="expected 4 buckets"):
        Folds(3, 2, 6, 1).load_state(folds.state()[:2])
    with pytest.raises(ValueError, match="folds"):
        Folds(1, 2, 6, 1)
