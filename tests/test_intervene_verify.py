"""intervene.verify: exact node patches equal `patch`'s grid; the estimate check picks the top nodes by
|estimate|, samples the rest, and bounds the misses (Clopper–Pearson)."""
import math
import random

import pytest
import torch

from fusedlens.core.models import LensModel
from fusedlens.intervene.attribution import attribution_patch
from fusedlens.intervene.patching import patch
from fusedlens.intervene.verify import clopper_pearson_upper, exact_effects, site_name
from tiny_models import ARCHS, tiny_model, tiny_tokenizer

TOK = tiny_tokenizer()


@pytest.mark.parametrize("arch", ARCHS)
def test_exact_effects_equal_the_patch_grid(arch):
    lm = LensModel.from_hf(tiny_model(arch, seed=random.randint(0, 10_000)).double(), TOK)
    clean, bad = "abcdefg", "abXdefg"
    grid = patch(lm, clean, bad, "a", "b", kinds=("resid", "attn", "mlp", "head"))
    ids = [torch.tensor(TOK(x)["input_ids"]) for x in (clean, bad)]
    a, b = TOK.convert_tokens_to_ids(list("ab"))
    nodes = [("resid", (0,), 2), ("resid", (2,), 5), ("attn", (1,), 3), ("mlp", (2,), 6), ("head", (1, 2), 4)]
    got = exact_effects(lm, [(ids[0], ids[1], a, b)], [(site_name(k, i), p) for k, i, p in nodes], "logit_diff",
                        batch_size=2)
    for (kind, index, p), g in zip(nodes, got):
        assert float(g) == pytest.approx(float(grid.values[kind][index + (p,)]) - grid.corrupted, abs=1e-9)


def test_clopper_pearson():
    assert clopper_pearson_upper(0, 20) == pytest.approx(1 - 0.05 ** (1 / 20), abs=1e-9)
    assert clopper_pearson_upper(5, 5) == 1.0 and clopper_pearson_upper(0, 0) == 1.0
    # the bound b of x = 3 of 40: P(X <= 3 | b) = 0.05
    b = clopper_pearson_upper(3, 40)
    assert sum(math.comb(40, i) * b ** i * (1 - b) ** (40 - i) for i in range(4)) == pytest.approx(0.05, abs=1e-9)


def test_verification_checks_the_top_nodes_and_a_sample():
    lm = LensModel.from_hf(tiny_model("qwen2", seed=random.randint(0, 10_000)).double(), TOK)
    r = attribution_patch(lm, "abcdefgh", "abcXefgh", "a", "b", kinds=("resid", "neuron", "q"), method="atp*",
                          verify=4, verify_sample=6, seed=3)
    grid = patch(lm, "abcdefgh", "abcXefgh", "a", "b", kinds=("resid",))
    for kind, v in r.verification.items():
        est = r.estimate[kind]
        assert len(v["top"]) == 4 and len(v["sample"]) == 6 and v["unverified"] == est.numel() - 4
        tops = sorted(est.reshape(-1).abs().tolist(), reverse=True)[:4]
        assert [abs(x["estimate"]) for x in v["top"]] == pytest.approx(tops, abs=0)
        assert v["threshold"] == pytest.approx(0.05 * abs(r.clean - r.corrupted))
        misses = sum(abs(x["exact"]) >= v["threshold"] for x in v["sample"])
        assert v["sampled_misses"] == misses
        assert v["miss_rate_bound"] == pytest.approx(clopper_pearson_upper(misses, 6))
    for row in r.verification["resid"]["top"] + r.verification["resid"]["sample"]:
        want = float(grid.values["resid"][tuple(row["index"])]) - grid.corrupted
        assert row["exact"] == pytest.approx(want, abs=1e-9)
