"""refine.frequency: counts additive over any batching, ranks a total order, buckets by rank."""
import pytest
import torch

from fusedlens.refine import TokenCounts, bucket_names, check_buckets, parse_buckets


def test_counts_ranks_and_buckets(tmp_path):
    V = 50
    ids = torch.randint(0, V, (1000,))
    ids[::7] = -100  # no target: skipped
    whole = TokenCounts(V).update(ids)
    parts = [TokenCounts(V).update(chunk) for chunk in ids.split(37)]  # any batching gives the same counts
    merged = parts[0]
    for p in parts[1:]:
        merged.merge(p)
    assert torch.equal(whole.counts, merged.counts) and whole.total == int((ids >= 0).sum())
    want = torch.bincount(ids[ids >= 0], minlength=V)
    assert torch.equal(whole.counts, want)
    ranks = whole.ranks()
    assert sorted(ranks.tolist()) == list(range(1, V + 1))
    order = sorted(range(V), key=lambda i: (-int(want[i]), i))  # by count, ties by ascending id
    assert [int(ranks[i]) for i in order] == list(range(1, V + 1))
    b = whole.buckets([3, 10])
    assert torch.equal(b, torch.where(ranks <= 3, 0, torch.where(ranks <= 10, 1, 2)))
    whole.save(tmp_path / "c.json")
    assert torch.equal(TokenCounts.load(str(tmp_path / "c.json"), V).counts, whole.counts)
    assert torch.equal(TokenCounts.from_state(whole.state()).counts, whole.counts)
    assert bucket_names([10, 100, 1000]) == ["1-10", "11-100", "101-1,000", "1,001+"]
    assert parse_buckets("10, 100") == [10, 100]


@pytest.mark.parametrize("bounds", [[], [0, 5], [5, 5], [10, 4], [60]])
def test_bad_buckets_are_errors(bounds):
    with pytest.raises(ValueError, match="buckets"):
        check_buckets(bounds, 50)


def test_bad_counts_inputs(tmp_path):
    with pytest.raises(ValueError, match="targets: ids must be < vocab"):
        TokenCounts(10).update(torch.tensor([3, 10]))
    TokenCounts(10).save(tmp_path / "c.json")
    with pytest.raises(ValueError, match=r"^counts: .*c.json counts a vocabulary of 10, the model has 12"):
        TokenCounts.load(str(tmp_path / "c.json"), 12)
    with pytest.raises(ValueError, match="parse_buckets|buckets"):
        parse_buckets("10,a")
