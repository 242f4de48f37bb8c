"""TunedLens, its training loop and evaluation on tiny real architectures and the real model."""
import pytest
import torch

from fusedlens import LensModel, ops
from fusedlens.core.capture import capture_residuals
from fusedlens.tuned.lens import TunedLens, standard_sites
from fusedlens.report.tuned import format_tuned_table as format_table
from fusedlens.tuned.evaluate import evaluate
from fusedlens.core.backends import resolve_compute
from fusedlens.data.windows import TokenStream, split_tail as split_corpus
from fusedlens.tuned.train import TrainConfig, make_optimizer, train
from tiny_models import VOCAB, tiny_model


@pytest.fixture(autouse=True)
def one_thread():
    """These runs are many small ops; on a busy 2-core machine every OpenMP barrier of
    them can wait a scheduler slice (tiny-model forwards measured 100x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_lm():
    return LensModel.from_hf(tiny_model("llama", lm_head_bias=True))  # untied head with a bias


def randomize(lens, scale=0.05):
    with torch.no_grad():
        for p in lens.parameters():
            p.normal_(0, scale)
    return lens


def test_sites():
    assert standard_sites(3) == ["embed", "resid.0", "resid.1"]
    assert standard_sites(2, mid=True) == ["embed", "mid.0", "resid.0", "mid.1"]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_untrained_lens_is_the_logit_lens(arch):
    lm = LensModel.from_hf(tiny_model(arch))
    res = capture_residuals(lm, torch.randint(0, VOCAB, (2, 9)))
    lens = TunedLens.from_model(lm)
    got = lens.lens_stats(res.hidden, res.targets, k=3)
    want = ops.lens_stats(res.hidden, lm.norm, lm.unembed, res.targets, 3)
    assert torch.equal(got.topk_ids, want.topk_ids) and torch.allclose(got.kl_to_final, want.kl_to_final)
    kl = lens.kl_to_final(res.hidden[:-1], res.hidden[-1])
    assert torch.allclose(kl, want.kl_to_final[:-1], rtol=1e-4, atol=1e-5)


def test_translate_is_h_plus_linear(tiny_lm):
    lens = randomize(TunedLens.from_model(tiny_lm))
    h = torch.randn(len(lens.sites), 5, tiny_lm.d_model)
    want = torch.stack([h[i] + t(h[i]) for i, t in enumerate(lens.layer_translators)])
    assert torch.allclose(lens.translate(h), want, atol=1e-6)
    assert torch.allclose(lens(h), tiny_lm.decode(want), atol=1e-5)  # the model's own read-out
    with pytest.raises(ValueError, match="hidden"):
        lens.translate(h[1:])


def test_recipe_defaults(tiny_lm):
    lens = TunedLens.from_model(tiny_lm)
    cfg = TrainConfig(steps=10)
    opt, sched = make_optimizer(lens, cfg)
    group = opt.param_groups[0]
    assert group["lr"] == pytest.approx(0.1) and group["momentum"] == 0.9 and group["nesterov"]
    assert group["weight_decay"] == 1e-3
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[-1] == pytest.approx(0.01) and opt.param_groups[0]["lr"] == 0
    with pytest.raises(ValueError, match="tokens_per_step"):
        TrainConfig(tokens_per_step=100, seq_len=64)


def test_training_compute_resolves_auto(tiny_lm):
    from fusedlens.core.backends import _C

    w = tiny_lm.unembed.weight
    assert resolve_compute("auto", w.bfloat16(), "cpu", training=True) == "bf16"
    assert resolve_compute("auto", w.float(), "cpu", training=True) == ("bf16" if _C.has_bf16_dot() else "fp32")
    assert resolve_compute("auto", w.float(), "torch", training=True) == "fp32"
    assert resolve_compute("fp32", w.bfloat16(), "cpu", training=True) == "fp32"
    with pytest.raises(ValueError, match="compute"):
        TrainConfig(compute="fp16")


def test_stream_and_split():
    ids = torch.arange(10)
    train_ids, held = split_corpus(ids, 3)
    assert torch.equal(held, torch.tensor([7, 8, 9])) and train_ids.numel() == 7
    s = TokenStream(train_ids, 2)
    assert torch.equal(s.next(4), torch.tensor([[0, 1], [2, 3]]))
    assert torch.equal(s.next(4), torch.tensor([[4, 5], [6, 0]])) and s.position == 1  # wraps around


def test_training_lowers_kl_and_fused_matches_torch(tiny_lm):
    ids = torch.randint(3, VOCAB, (4000,))
    cfg = dict(steps=20, tokens_per_step=64, seq_len=32, lr=4.0)
    lenses = {}
    for backend, compute in (("cpu", "fp32"), ("torch", "fp32"), ("cpu", "bf16")):
        lens = lenses[backend, compute] = TunedLens.from_model(tiny_lm)
        hist = train(tiny_lm, lens, ids, TrainConfig(**cfg, backend=backend, compute=compute), progress=False)
        assert hist["compute"] == compute
        assert sum(hist["loss"][-5:]) < 0.95 * sum(hist["loss"][:5]), hist["loss"]
    for a, b in zip(lenses["cpu", "fp32"].parameters(), lenses["torch", "fp32"].parameters()):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-5)  # 20 steps of the same updates
    # bf16 operands: the same training up to the rounding of its gradients
    for a, b in zip(lenses["cpu", "bf16"].parameters(), lenses["cpu", "fp32"].parameters()):
        assert float((a - b).detach().norm() / b.detach().norm()) < 0.05
    lenses["cpu"] = lenses["cpu", "fp32"]
    held = torch.randint(3, VOCAB, (200,))
    rows = evaluate(tiny_lm, lenses["cpu"], held, seq_len=50)
    assert [r["site"] for r in rows] == lenses["cpu"].sites + [f"resid.{tiny_lm.n_layers - 1}"]
    assert all(r["kl_bits_tuned"] < r["kl_bits_logit"] for r in rows[:-1])
    assert rows[-1]["kl_bits_tuned"] == rows[-1]["kl_bits_logit"] == 0
    assert "KL tuned" in format_table(rows)


def test_finished_run_resumes_to_itself_and_refuses_other_settings(tiny_lm, tmp_path):
    ids = torch.randint(3, VOCAB, (1000,))
    cfg = TrainConfig(steps=4, tokens_per_step=32, seq_len=16, checkpoint_every=3)
    lens = TunedLens.from_model(tiny_lm)
    train(tiny_lm, lens, ids, cfg, out_dir=str(tmp_path), progress=False)
    state = torch.load(tmp_path / "train_state.pt", weights_only=False)
    assert state["step"] == 4 and state["position"] == 4 * 32
    again = TunedLens.from_model(tiny_lm)
    hist = train(tiny_lm, again, ids, cfg, out_dir=str(tmp_path), progress=False)  # nothing left to do
    assert len(hist["loss"]) == 4
    for a, b in zip(lens.parameters(), again.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="tokens_per_step"):
        train(tiny_lm, TunedLens.from_model(tiny_lm), ids, TrainConfig(steps=4, tokens_per_step=16, seq_len=16),
              out_dir=str(tmp_path), progress=False)


def test_resume_from_a_mid_run_checkpoint(tiny_lm, tmp_path, monkeypatch):
    ids = torch.randint(3, VOCAB, (1000,))
    cfg = TrainConfig(steps=6, tokens_per_step=32, seq_len=16, checkpoint_every=2)
    whole = TunedLens.from_model(tiny_lm)
    train(tiny_lm, whole, ids, cfg, progress=False)

    import fusedlens.tuned.train as tt

    real_save, calls = tt.save_checkpoint, []

    def save_then_stop(*args):
        real_save(*args)
        calls.append(args[5])
        if args[5] == 4:
            raise KeyboardInterrupt  # the run dies right after its step-4 checkpoint

    monkeypatch.setattr(tt, "save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_lm, TunedLens.from_model(tiny_lm), ids, cfg, out_dir=str(tmp_path), progress=False)
    monkeypatch.setattr(tt, "save_checkpoint", real_save)
    resumed = TunedLens.from_model(tiny_lm)
    hist = train(tiny_lm, resumed, ids, cfg, out_dir=str(tmp_path), progress=False)
    assert calls == [2, 4] and len(hist["loss"]) == 6
    for a, b in zip(whole.parameters(), resumed.parameters()):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)


def test_mid_sites_train_save_load(tiny_lm, tmp_path):
    lens = TunedLens.from_model(tiny_lm, mid=True)
    assert len(lens.sites) == 2 * tiny_lm.n_layers
    train(tiny_lm, lens, torch.randint(3, VOCAB, (500,)), TrainConfig(steps=2, tokens_per_step=32, seq_len=16),
          progress=False)
    lens.save(str(tmp_path))
    back = TunedLens.load(str(tmp_path), tiny_lm)
    assert back.sites == lens.sites
    h = torch.randn(len(lens.sites), 3, tiny_lm.d_model)
    assert torch.equal(back.translate(h), lens.translate(h))


def test_cli_on_the_real_model(real_lm, tmp_path, monkeypatch, capsys):
    """`fusedlens tuned train` then `eval` on SmolLM2-135M at toy sizes; writes table, JSON and PNG."""
    import fusedlens.core.models
    import fusedlens.data.windows
    from fusedlens.cli import main
    from fusedlens.data.pydoc import pydoc_text

    monkeypatch.setattr(fusedlens.core.models, "load_model", lambda *a, **k: real_lm)
    # The first 20k characters of the corpus: tokenising all 113k tokens would take most of the test.
    short = real_lm.tokenizer(pydoc_text()[:20000], add_special_tokens=False, return_tensors="pt").input_ids[0]
    monkeypatch.setattr(fusedlens.data.windows, "corpus_ids", lambda tokenizer: short)
    out = str(tmp_path / "lens")
    assert main(["tuned", "train", "--out", out, "--steps", "2", "--tokens-per-step", "16", "--seq-len", "16",
                 "--eval-tokens", "1000", "--no-progress"]) == 0
    assert main(["tuned", "eval", "--lens", out, "--tokens", "24", "--seq-len", "12", "--eval-tokens", "1000",
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "KL tuned" in text and "resid.28" in text
    for name in ("params.pt", "config.json", "train_state.pt", "tuned_eval.json", "tuned_eval.png"):
        assert (tmp_path / "lens" / name).exists(), name
    lens = TunedLens.load(out, real_lm)
    assert len(lens.sites) == 30 and any(bool(p.abs().sum() > 0) for p in lens.parameters())


def test_site_map_for_captured_layer_subsets(tiny_lm):
    """What `fusedlens run --tuned` uses: translate whichever sites a capture holds, the last block as is."""
    lens = randomize(TunedLens.from_model(tiny_lm))
    res = capture_residuals(tiny_lm, torch.randint(0, VOCAB, (1, 6)), layers=[0, tiny_lm.n_layers - 1])
    assert res.sites == ["embed", "resid.0", f"resid.{tiny_lm.n_layers - 1}"]
    got = lens.as_site_map()(res.hidden, res.sites)
    with torch.no_grad():
        want = [res.hidden[i] + lens.layer_translators[i](res.hidden[i]) for i in (0, 1)] + [res.hidden[2]]
    assert torch.allclose(got, torch.stack(want), atol=1e-6)
    full = capture_residuals(tiny_lm, torch.randint(0, VOCAB, (1, 6)))
    assert torch.allclose(lens.as_site_map()(full.hidden), lens.translate_sites(full.hidden, full.sites))
    mid = capture_residuals(tiny_lm, torch.randint(0, VOCAB, (1, 6)), mid=True)
    with pytest.raises(ValueError, match="no translator"):
        lens.as_site_map()(mid.hidden, mid.sites)
    with pytest.raises(ValueError, match="sites=capture.sites"):
        lens.as_site_map()(res.hidden)


def test_downweighted_training_weights_the_fused_loss(tiny_lm):
    from fusedlens.core.capture import ResidualCapture
    from fusedlens.tuned.train import most_frequent, row_weights

    ids = torch.randint(3, VOCAB, (4000,))
    ids[::2] = 5  # token 5 is the most frequent by far
    assert most_frequent(ids, 2, VOCAB)[0] == 5
    cfg = dict(steps=1, tokens_per_step=64, seq_len=32, lr=4.0, backend="cpu", compute="fp32")
    # factor 1 is the unweighted recipe, bit for bit
    a, b = TunedLens.from_model(tiny_lm), TunedLens.from_model(tiny_lm)
    ha = train(tiny_lm, a, ids, TrainConfig(**cfg), progress=False)
    hb = train(tiny_lm, b, ids, TrainConfig(**cfg, downweight_top=3, downweight_factor=1.0), progress=False)
    assert ha["loss"] == hb["loss"] and all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    # factor 0.25: the step's loss and gradient are those of the weighted mean, by autograd on the torch backend
    lens = TunedLens.from_model(tiny_lm)
    hist = train(tiny_lm, lens, ids, TrainConfig(**cfg, downweight_top=3, downweight_factor=0.25), progress=False)
    ref = TunedLens.from_model(tiny_lm)
    res = ResidualCapture(tiny_lm, embed=True).run(ids[:64].reshape(2, 32))  # the stream's first step
    kl = ref.kl_to_final(res.hidden[:-1], res.hidden[-1], backend="torch")
    w = row_weights(res.targets, most_frequent(ids, 3, VOCAB), 0.25)
    assert (w == 0.25).any() and (w == 1).any()
    want = (kl.double() * w.double()).sum() / w.double().sum()
    assert abs(hist["loss"][0] * len(ref.sites) - float(want)) <= 1e-4 * float(want)
    plain = float(kl.double().mean(1).sum())
    assert abs(hist["loss"][0] * len(ref.sites) - plain) > 1e-3 * plain  # the weights did change the loss
