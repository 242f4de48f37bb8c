"""Tuned-lens checkpoints: the tuned-lens package's format (params.pt + config.json), both ways.

The format, as tuned_lens.nn.lenses.TunedLens.save writes it: params.pt is
torch.save(layer_translators.state_dict()) (keys "{i}.weight" [d, d], "{i}.bias" [d]),
config.json is the TunedLensConfig dataclass as a dict. The last test runs the real
package (tuned-lens 0.2.0, which `make install` adds with --no-deps: its own pins would
pull wandb and another torch).
"""
import json

import pytest
import torch
from torch import nn

from fusedlens import LensModel
from fusedlens.tuned.lens import TunedLens, unembed_hash
from tiny_models import tiny_model

CONFIG_KEYS = {"base_model_name_or_path", "d_model", "num_hidden_layers", "bias", "base_model_revision",
               "unembed_hash", "lens_type"}


@pytest.fixture(scope="module")
def hf_and_lm():
    model = tiny_model("llama")
    return model, LensModel.from_hf(model)


def randomize(module, scale=0.05):
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, scale)
    return module


def test_written_files_follow_the_format(hf_and_lm, tmp_path):
    _, lm = hf_and_lm
    lens = randomize(TunedLens.from_model(lm))
    lens.save(str(tmp_path))
    state = torch.load(tmp_path / "params.pt", weights_only=True)
    d, n = lm.d_model, lm.n_layers
    assert set(state) == {f"{i}.{p}" for i in range(n) for p in ("weight", "bias")}
    assert all(state[f"{i}.weight"].shape == (d, d) and state[f"{i}.bias"].shape == (d,) for i in range(n))
    assert torch.equal(state["1.bias"], lens.layer_translators[1].bias)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert set(cfg) == CONFIG_KEYS
    assert cfg["d_model"] == d and cfg["num_hidden_layers"] == n and cfg["bias"] is True
    assert cfg["lens_type"] == "linear_tuned_lens" and cfg["unembed_hash"] == unembed_hash(lm.unembed.weight)


def test_loads_a_lens_written_the_tuned_lens_way(hf_and_lm, tmp_path):
    _, lm = hf_and_lm
    d, n = lm.d_model, lm.n_layers
    translators = randomize(nn.ModuleList(nn.Linear(d, d) for _ in range(n)))
    torch.save(translators.state_dict(), tmp_path / "params.pt")
    (tmp_path / "config.json").write_text(json.dumps({
        "base_model_name_or_path": "tiny", "d_model": d, "num_hidden_layers": n, "bias": True,
        "base_model_revision": None, "unembed_hash": None, "lens_type": "linear_tuned_lens"}))
    lens = TunedLens.load(str(tmp_path), lm)
    h = torch.randn(n, 4, d)
    with torch.no_grad():
        want = torch.stack([lm.decode(h[i] + translators[i](h[i])) for i in range(n)])
        assert torch.allclose(lens(h), want, atol=1e-5)


def test_load_rejects_a_mismatched_lens(hf_and_lm, tmp_path):
    _, lm = hf_and_lm
    with pytest.raises(ValueError, match="not found"):
        TunedLens.load(str(tmp_path), lm)
    randomize(TunedLens.from_model(lm)).save(str(tmp_path))
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": lm.n_layers + 1}))
    with pytest.raises(ValueError, match="translators"):
        TunedLens.load(str(tmp_path), lm)


def test_round_trip_with_the_tuned_lens_package(hf_and_lm, tmp_path, monkeypatch):
    import tuned_lens as tl  # installed by `make install` (--no-deps)
    from tuned_lens import model_surgery

    # tuned-lens 0.2.0 asks isinstance(model, transformer_lens.HookedTransformer) wherever TransformerLens is
    # installed, and TransformerLens 4 (installed for the adapters' tests) raises ImportError on that name.
    monkeypatch.setattr(model_surgery, "_transformer_lens_available", False)
    model, lm = hf_and_lm
    h = torch.randn(lm.n_layers, 5, lm.d_model)

    theirs = tl.TunedLens.from_model(model)  # trained there ...
    randomize(theirs.layer_translators)
    theirs.save(tmp_path / "theirs")
    ours = TunedLens.load(str(tmp_path / "theirs"), lm)  # ... loads here with the same logits
    with torch.no_grad():
        want = torch.stack([theirs(h[i], i) for i in range(lm.n_layers)])
        assert torch.allclose(ours(h), want, atol=1e-5)

    mine = randomize(TunedLens.from_model(lm))  # trained here ...
    mine.save(str(tmp_path / "mine"))
    back = tl.TunedLens.from_unembed_and_pretrained(theirs.unembed, str(tmp_path / "mine"))  # ... loads there
    assert back.config.unembed_hash == json.loads((tmp_path / "mine" / "config.json").read_text())["unembed_hash"]
    with torch.no_grad():
        got = torch.stack([back(h[i], i) for i in range(lm.n_layers)])
        assert torch.allclose(got, mine(h), atol=1e-5)


def test_a_lens_of_another_model_is_refused(hf_and_lm, tmp_path):
    """unembed_hash is checked on load: a lens trained for another model of the same width used to load
    silently; check_unembed=False (--ignore-unembed-hash) reads it on purpose."""
    _, lm = hf_and_lm
    other = LensModel.from_hf(tiny_model("llama", seed=1))  # same shapes, other random weights
    lens = randomize(TunedLens.from_model(other))
    lens.save(str(tmp_path))
    with pytest.raises(ValueError, match=r"^lens: .* was trained for another model \(its unembed_hash differs"):
        TunedLens.load(str(tmp_path), lm)
    back = TunedLens.load(str(tmp_path), lm, check_unembed=False)
    h = torch.randn(lm.n_layers, 3, lm.d_model)
    with torch.no_grad():
        assert torch.equal(back.translate(h), lens.translate(h))
    assert TunedLens.load(str(tmp_path), other).sites == lens.sites  # its own model: fine


def test_damaged_lens_folders_are_one_line_errors(hf_and_lm, tmp_path):
    _, lm = hf_and_lm
    good = tmp_path / "good"
    randomize(TunedLens.from_model(lm)).save(str(good))
    cfg = json.loads((good / "config.json").read_text())
    params = (good / "params.pt").read_bytes()
    cases = [
        ("{", params, r"config.json is not valid JSON"),
        ("[]", params, r"config.json holds a list, expected an object"),
        (json.dumps({k: v for k, v in cfg.items() if k != "num_hidden_layers"}), params,
         r"num_hidden_layers must be a positive integer, got None"),
        (json.dumps({**cfg, "fusedlens_sites": ["embed", "resid.9"]}), params, r"sites \['embed', 'resid.9'\]"),
        (json.dumps(cfg), params[:200], r"params.pt cannot be read as a torch file"),
        (json.dumps({**cfg, "bias": False}), params, r"params.pt does not hold the \d+ translators"),
    ]
    for i, (config, blob, message) in enumerate(cases):
        folder = tmp_path / f"bad{i}"
        folder.mkdir()
        (folder / "config.json").write_text(config)
        (folder / "params.pt").write_bytes(blob)
        with pytest.raises(ValueError, match=r"^lens: .*" + message) as err:
            TunedLens.load(str(folder), lm)
        assert "\n" not in str(err.value), message
    with pytest.raises(ValueError, match=r"^tuned: .* is not a tuned lens folder"):
        TunedLens.load(str(tmp_path / "missing"), lm, name="tuned")
    assert not (tmp_path / "missing").exists()
