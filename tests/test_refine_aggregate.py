"""refine.RefineSums from the fused lens sweep (with token-set mass) against a float64 loop over
materialised logits, token by token; sums additive over batches."""
import torch

from fusedlens import FinalNorm, Unembed, ops
from fusedlens.refine import RefineSums, TokenCounts, changes_later, depth_to_correct  # noqa: F401


def test_depth_and_changes_on_a_hand_made_case():
    top1 = torch.tensor([[5, 1, 1, 2], [1, 1, 2, 2], [1, 1, 1, 2]])  # [sites, tokens]
    targets = torch.tensor([1, 1, 3, 2])
    # token 0: right from site 1 on; token 1: always; token 2: never; token 3: from site 0
    assert depth_to_correct(top1, targets).tolist() == [1, 0, 3, 0]
    assert changes_later(top1).tolist() == [[True, False, True, False], [False, False, True, False],
                                            [False, False, False, False]]


def test_refine_sums_against_a_float64_loop():
    S, T, d, V = 4, 40, 32, 301
    # sites that converge on the last one, as a model's layers do: the top-1 settles at different depths
    hidden = torch.randn(1, T, d) * 2 + torch.randn(S, T, d) * torch.tensor([3.0, 1.0, 0.3, 0.0])[:, None, None]
    norm = FinalNorm("rmsnorm", torch.rand(d) + 0.5, None, 1e-5)
    unembed = Unembed(torch.randn(V, d) / d ** 0.5 * 3, None, None)
    z = unembed.weight.double() @ norm(hidden.double()).transpose(1, 2)  # [S, V, T]
    p = torch.softmax(z.transpose(1, 2), -1)  # [S, T, V], float64
    top1 = p.argmax(-1)
    targets = torch.randint(0, V, (T,))
    targets[::2] = top1[-1, ::2]  # half the tokens end right: their depths spread over the sites
    targets[3] = -100
    counts = TokenCounts(V).update(torch.randint(0, 40, (500,)))  # a skewed corpus: ids < 40 seen
    buckets = counts.buckets([5, 20])
    sums = RefineSums(S, buckets, 3)
    for chunk in torch.arange(T).split(13):  # batches: the sums add
        stats = ops.lens_stats(hidden[:, chunk], norm, unembed, targets[chunk], 1, token_sets=sums.token_sets())
        sums.update(stats, targets[chunk])
    keep = targets >= 0
    n = int(keep.sum())
    assert sums.n == n
    for s in range(S):
        for b in range(3):
            in_b = (buckets[top1[s]] == b) & keep
            assert int(sums.top1[s, b]) == int(in_b.sum())
            assert int(sums.final_differs[s, b]) == int((in_b & (top1[s] != top1[-1])).sum())
            later = torch.zeros(T, dtype=torch.bool)
            for s2 in range(s + 1, S):
                later |= top1[s2] != top1[s]
            assert int(sums.changes_later[s, b]) == int((in_b & later).sum())
            mass = p[s][keep][:, buckets == b].sum()
            assert abs(float(sums.mass[s, b]) - float(mass)) <= 1e-4 * n
    assert torch.equal(sums.target, torch.bincount(buckets[targets[keep]], minlength=3))
    hist = torch.zeros(S + 1, dtype=torch.int64)
    for t in range(T):  # depth to correct, token by token: the earliest site of the final run of right top-1s
        if targets[t] < 0:
            continue
        depth = S
        for s in range(S - 1, -1, -1):
            if top1[s, t] != targets[t]:
                break
            depth = s
        hist[depth] += 1
    assert torch.equal(sums.depth, hist) and int((hist[:S] > 0).sum()) >= 2  # depths really spread
    summary = sums.summary([f"s{i}" for i in range(S)], ["a", "b", "c"])
    assert abs(sum(summary["target_share"]) - 1) < 1e-12 and len(summary["mass"]) == S
    assert all(abs(sum(row) - 1) < 1e-5 for row in summary["mass"])
