"""fusedlens.adapters.nnsight: residuals saved in an nnsight trace decode like the HF model's own route.

Importing nnsight patches torch.Tensor.backward and mounts `.save` on every object, so all of it
runs in one child interpreter (this file run as a script) and the rest of the suite stays
unpatched. For a tiny random model of every family (saved to a folder, reloaded there) the child
traces a fresh random batch, saves every site with `save_sites` (and the block outputs
by hand) and decodes them with `lens_model(model)`'s readout; it runs examples/nnsight_lens.py on
SmolLM2. This process checks what came back against the HF capture and the float64 truth of the
HF model (hf_oracle.py), and against capture on the HF model in the child's own process.
"""
import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from fusedlens import AdapterError, LensModel, ops
from fusedlens.core.capture import capture_residuals, residuals_from_tensors
from fusedlens.ops.stats import LensStats
from hf_oracle import K, Oracle, fresh_ids, right_padded
from tiny_models import ARCHS, VOCAB, tiny_model, tiny_tokenizer

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "nnsight_lens.py"
needs_nnsight = pytest.mark.skipif(importlib.util.find_spec("nnsight") is None, reason="nnsight is not installed")
ATOL = RTOL = 1e-5  # nnsight runs the same HF forward as capture: rows differ at most by summation order


# --- the child: everything that imports nnsight --------------------------------------------

def trace(model, lm, ids, mask, mid: bool) -> dict:
    import nnsight

    from fusedlens.adapters.nnsight import residuals_from_saved, save_sites, wrapped_module

    inputs = {"input_ids": ids, "attention_mask": mask}
    with model.trace(inputs):
        saved = save_sites(model, lm, mid=mid)
    res = residuals_from_saved(saved, ids, mask)
    blocks = model
    for part in lm.paths["layers"].split("."):
        blocks = getattr(blocks, part)
    with model.trace(inputs):
        outputs = nnsight.save([block.output for block in blocks])  # by hand, as the README shows
    by_hand = residuals_from_tensors([f"resid.{i}" for i in range(lm.n_layers)], outputs, ids, mask)
    stats = ops.lens_stats(res.hidden, lm.norm, lm.unembed, res.targets, k=K)
    hf = capture_residuals(LensModel.from_hf(wrapped_module(model)), ids, mask, mid=mid)  # ours, same process
    return {"sites": res.sites, "hidden": res.hidden, "targets": res.targets, "by_hand": by_hand.hidden,
            "hf_hidden": hf.hidden, "stats": dict(stats.items()), "describe": lm.describe()}


def child(request_path: str, out_path: str) -> None:
    from nnsight import TransformersModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fusedlens.adapters.nnsight import lens_model

    request, out = torch.load(request_path), {}
    for name, job in request["jobs"].items():
        hf_model = AutoModelForCausalLM.from_pretrained(job["folder"], dtype=torch.float32,
                                                        attn_implementation="eager").eval()
        model = TransformersModel(hf_model, task="text-generation",
                                  tokenizer=AutoTokenizer.from_pretrained(job["folder"]))
        with torch.no_grad():
            out[name] = trace(model, lens_model(model), job["ids"], job["mask"], job["mid"])
    # The example on SmolLM2, pickled by the parent: 2 s, where load_model() dequantizes the GGUF again in 20.
    spec = importlib.util.spec_from_file_location("nnsight_lens", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    smollm2 = LensModel.from_hf(**torch.load(request["smollm2"], weights_only=False))
    got = example.main(smollm2)
    hf = capture_residuals(smollm2, got["ids"], got["mask"], mid=True)
    out["example"] = {"sites": got["residuals"].sites, "hidden": got["residuals"].hidden,
                      "by_hand": got["by_hand"].hidden, "stats": dict(got["stats"].items()), "hf_sites": hf.sites,
                      "hf_hidden": hf.hidden,
                      "hf_stats": dict(ops.lens_stats(hf.hidden, smollm2.norm, smollm2.unembed, hf.targets, k=5).items())}
    torch.save(out, out_path)


# --- this process -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def traced(tmp_path_factory, real_lm):
    """One child run for all of it: (each job, the tiny models, what the child saved, its stdout)."""
    tmp = tmp_path_factory.mktemp("nnsight")
    torch.save({"model": real_lm.model, "tokenizer": real_lm.tokenizer}, tmp / "smollm2.pt")
    jobs, models = {}, {}
    for arch in ARCHS:
        models[arch] = tiny_model(arch)
        folder = tmp / arch
        models[arch].save_pretrained(folder)
        tiny_tokenizer().save_pretrained(folder)
        ids = fresh_ids(3, 9, VOCAB)
        jobs[arch] = {"folder": str(folder), "ids": ids, "mask": right_padded(ids), "mid": True}
    torch.save({"jobs": jobs, "smollm2": str(tmp / "smollm2.pt")}, tmp / "request.pt")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "tests")] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    proc = subprocess.run([sys.executable, __file__, str(tmp / "request.pt"), str(tmp / "out.pt")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return jobs, models, torch.load(tmp / "out.pt"), proc.stdout


def check_job(job, got, hf_model):
    lm = LensModel.from_hf(hf_model)
    oracle = Oracle(hf_model, job["ids"], job["mask"], mid=job["mid"])
    assert got["sites"] == oracle.sites and torch.equal(got["targets"], oracle.targets)
    assert got["describe"] == lm.describe()  # lens_model(nnsight model) is the HF model's LensModel
    # Residuals against capture's in the child's own process (two processes need not round alike).
    torch.testing.assert_close(got["hidden"], got["hf_hidden"], atol=ATOL, rtol=RTOL)
    resid = [i for i, s in enumerate(got["sites"]) if s.startswith("resid.")]
    assert torch.equal(got["by_hand"], got["hidden"][resid])
    oracle.check_stats(LensStats(**got["stats"]), lm)


@needs_nnsight
@pytest.mark.parametrize("arch", ARCHS)
@torch.no_grad()
def test_saved_sites_equal_hf(traced, arch):
    jobs, models, out, _ = traced
    check_job(jobs[arch], out[arch], models[arch])


@needs_nnsight
@torch.no_grad()
def test_example_on_smollm2_equals_hf(traced, real_lm):
    """examples/nnsight_lens.py on SmolLM2: its saved residuals (save_sites, and the block outputs by
    hand) and their statistics are those of capture and ops.lens_stats on the HF model itself."""
    _, _, out, stdout = traced
    got = out["example"]
    assert "next token after" in stdout and "ridge probes" in stdout
    assert got["sites"] == got["hf_sites"] == ["embed"] + [f"{s}.{i}" for i in range(real_lm.n_layers)
                                                           for s in ("mid", "resid")]
    torch.testing.assert_close(got["hidden"], got["hf_hidden"], atol=ATOL, rtol=RTOL)
    resid = [i for i, s in enumerate(got["sites"]) if s.startswith("resid.")]
    torch.testing.assert_close(got["by_hand"], got["hidden"][resid], atol=0, rtol=0)
    for name, value in got["hf_stats"].items():
        torch.testing.assert_close(got["stats"][name], value, atol=1e-4, rtol=1e-5, equal_nan=True, msg=name)


def test_not_an_nnsight_model():
    with pytest.raises(AdapterError, match="expected an nnsight model .* got LlamaForCausalLM"):
        from fusedlens.adapters.nnsight import lens_model

        lens_model(tiny_model("llama"))


def test_saved_must_be_a_dict_of_sites():
    from fusedlens.adapters.nnsight import residuals_from_saved

    ids = fresh_ids(1, 4, VOCAB)
    with pytest.raises(ValueError, match="saved: expected a non-empty dict"):
        residuals_from_saved({}, ids)
    with pytest.raises(ValueError, match=r"resid.0: shape \(1, 5, 8\) does not match input_ids \(1, 4\)"):
        residuals_from_saved({"resid.0": torch.randn(1, 5, 8)}, ids)


if __name__ == "__main__":
    child(sys.argv[1], sys.argv[2])
