"""intervene.suffix: a patch rerun from its block and position on, on the corrupted run's cache and
lower blocks, equals the whole corrupted forward with the patch (float64, every family, every site
kind, sliding windows shorter than the prompt included), and patch(reuse=True) equals reuse=False."""
import random

import pytest
import torch

from fusedlens.core.models import LensModel
from fusedlens.intervene import Edit, Intervention
from fusedlens.intervene.patching import metric_of, patch
from fusedlens.intervene.suffix import SuffixRuns, first_block
from tiny_models import ARCHS, tiny_model, tiny_tokenizer

TOK = tiny_tokenizer()


def ids_of(text):
    return torch.tensor(TOK(text)["input_ids"])


@pytest.mark.parametrize("arch", ARCHS)
def test_suffix_runs_equal_whole_forwards(arch):
    lm = LensModel.from_hf(tiny_model(arch, seed=random.randint(0, 10_000)).double(), TOK)
    bad = ids_of("abcXefghij")  # 10 tokens: longer than the tiny Gemmas' sliding window of 4
    a, b = TOK.convert_tokens_to_ids(list("ab"))
    read = lambda z: metric_of(z, "logit_diff", a, b)  # noqa: E731
    last = lm.n_layers - 1
    sites = ["embed", "resid.0", f"resid.{last}", "attn.1", f"mlp.{last}", "head.1.2", "neuron.0.5", "q.2.1",
             "k.1.0", "v.0.1"] + (["mid.1"] if arch not in ("gpt_neox", "opt") else [])
    cells = []
    for site in sites:
        for pos in (0, 3, 9):
            width = 1 if site.startswith("neuron") else (lm.d_model if site.split(".")[0] in
                                                          ("embed", "resid", "attn", "mlp", "mid") else None)
            cells.append((site, torch.randn(width or 12, dtype=torch.float64) if width else None, pos))
    runs = SuffixRuns(lm, bad)
    # head and q/k/v widths: the model's d_head
    d_head = lm.d_model // 4
    cells = [(s, v if v is not None else torch.randn(d_head, dtype=torch.float64), p) for s, v, p in cells]
    got = runs.metrics(cells, read, batch_size=4)
    for (site, value, pos), g in zip(cells, got):
        with torch.no_grad(), Intervention(lm, [Edit(site, "replace", value, positions=[pos])]):
            want = read(lm.model(input_ids=bad[None], use_cache=False).logits[:, -1])
        assert float(g) == pytest.approx(float(want), abs=1e-10), (site, pos)
    assert first_block(lm, "embed") == 0 and first_block(lm, "resid.1") == 2 and first_block(lm, "head.1.0") == 1


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2"])
def test_patch_reuse_equals_the_whole_grid(arch):
    lm = LensModel.from_hf(tiny_model(arch, seed=random.randint(0, 10_000)).double(), TOK)
    kinds = ("resid", "attn", "mlp", "head") + (("mid",) if arch != "gpt_neox" else ())
    fast = patch(lm, "abcdefghi", "abXdefghi", "a", "b", kinds=kinds, batch_size=5)
    slow = patch(lm, "abcdefghi", "abXdefghi", "a", "b", kinds=kinds, batch_size=5, reuse=False)
    assert fast.meta["reuse"] and not slow.meta["reuse"]
    for k in kinds:
        torch.testing.assert_close(fast.values[k], slow.values[k], rtol=0, atol=1e-10)
    mapped = patch(lm, "abcdefghi", "abXdefgh", "a", "b", kinds=("resid",), position_map=[(2, 2), (8, 7)])
    mapped_slow = patch(lm, "abcdefghi", "abXdefgh", "a", "b", kinds=("resid",), position_map=[(2, 2), (8, 7)],
                        reuse=False)
    torch.testing.assert_close(mapped.values["resid"], mapped_slow.values["resid"], rtol=0, atol=1e-10)
