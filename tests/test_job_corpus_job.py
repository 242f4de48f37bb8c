"""`fusedlens run` (job/corpus_job.py): the whole job against LogitLens, Parquet, kill-and-resume, two processes.

The tiny-llama folder, its LensModel and the corpus file are fixtures of conftest.py."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from fusedlens import LogitLens
from fusedlens.data.corpus import iter_sequences
from fusedlens.job.records import read_records
from fusedlens.job import RunConfig
from fusedlens.job import run_corpus as run


def test_run_matches_logit_lens(lm, corpus_file, tmp_path):
    out = str(tmp_path / "run")
    summary = run(RunConfig(corpus=[corpus_file], out=out, seq_len=96, batch_size=3, max_tokens=11 * 96, records=True,
                            checkpoint_every=200, k=3, progress=False), lm=lm)
    seqs = list(iter_sequences(lm.tokenizer, [corpus_file], 96, stop=11))
    ids = torch.stack([s.ids for s in seqs])
    want = LogitLens(lm, k=3).run(ids)
    assert summary["tokens"] == want.n_tokens == 11 * 96
    for got_row, want_row in zip(summary["layers"], want.summary()):
        assert got_row.keys() == want_row.keys()
        for key, value in want_row.items():
            assert got_row[key] == pytest.approx(value, rel=1e-6, abs=1e-9), (got_row["site"], key)
    assert summary["mean_prediction_depth"] == pytest.approx(want.mean_prediction_depth)
    for name in ("summary.json", "throughput.json", "layers.png", "grid.png", "prediction_depth.html"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    throughput = json.load(open(os.path.join(out, "throughput.json")))
    assert throughput["tokens"] == summary["tokens"] and throughput["seconds"]["lens"] > 0
    table = read_records(os.path.join(out, "records"))
    assert table.num_rows == want.n_tokens
    assert table.schema.metadata[b"sites"].decode().split(",") == want.sites
    kl = torch.tensor(table.column("kl_to_final").to_pylist())  # [tokens, sites]
    torch.testing.assert_close(kl, want.stats.kl_to_final.T, rtol=1e-5, atol=1e-6)
    top = torch.tensor(table.column("topk_ids").to_pylist())
    assert torch.equal(top, want.stats.topk_ids.movedim(0, 1).int())
    assert table.column("target").to_pylist() == want.targets.tolist()


def test_run_rejects_a_different_run_in_the_same_folder(lm, corpus_file, tmp_path):
    cfg = RunConfig(corpus=[corpus_file], out=str(tmp_path), seq_len=64, max_tokens=128, progress=False)
    run(cfg, lm=lm)
    cfg.seq_len = 32
    with pytest.raises(ValueError, match="different run"):
        run(cfg, lm=lm)


def _cli(model_dir, corpus, out, *extra):
    return [sys.executable, "-m", "fusedlens", "run", corpus, "--model", model_dir, "--out", out, "--seq-len", "64",
            "--batch-size", "1", "--checkpoint-every", "64", "--no-progress", *extra]


def _layers(out):
    with open(os.path.join(out, "summary.json")) as f:
        return json.load(f)["layers"]


def test_kill_and_resume_gives_the_uninterrupted_totals(model_dir, corpus_file, tmp_path):
    whole, killed = str(tmp_path / "whole"), str(tmp_path / "killed")
    probes = ("--probe", "logit", "--lag", "0", "--lag", "-1", "--dla")  # probe sums, one state per row pattern
    subprocess.run(_cli(model_dir, corpus_file, whole, "--records", *probes), check=True, capture_output=True)
    proc = subprocess.Popen(_cli(model_dir, corpus_file, killed, "--records", *probes), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt = os.path.join(killed, "checkpoint", "rank0.pt")
    deadline = time.time() + 120
    while not os.path.exists(ckpt) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = torch.load(ckpt, weights_only=False)
    assert not state["done"] and state["next_sequence"] > 0  # really killed mid-way
    subprocess.run(_cli(model_dir, corpus_file, killed, "--records", *probes), check=True, capture_output=True)
    assert _layers(killed) == _layers(whole)
    assert "probe_logit@lag-1_r2_heldout" in _layers(whole)[0]
    dla = [json.load(open(os.path.join(d, "dla.json"))) for d in (whole, killed)]
    assert dla[0]["tokens"] == dla[1]["tokens"] > 0
    assert dla[0]["mean_contribution"] == pytest.approx(dla[1]["mean_contribution"], rel=1e-9, abs=1e-12)
    a, b = read_records(os.path.join(whole, "records")), read_records(os.path.join(killed, "records"))
    assert a.num_rows == b.num_rows and a.column("kl_to_final").equals(b.column("kl_to_final"))


def test_two_processes_equal_one(model_dir, corpus_file, tmp_path):
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    # all-reduced sums: probes (one state per row pattern) and token counts
    probes = ("--probe", "logit", "--lag", "0", "--lag", "-1", "--token-counts", "--dla")
    subprocess.run(_cli(model_dir, corpus_file, one, *probes), check=True, capture_output=True)
    cmd = _cli(model_dir, corpus_file, two, *probes)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517"]
    done = subprocess.run(torchrun + cmd[1:], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    with open(os.path.join(two, "summary.json")) as f:
        assert json.load(f)["processes"] == 2
    assert isinstance(_layers(one)[0]["probe_logit@lag-1_r2_heldout"], float)
    counts = [json.load(open(os.path.join(d, "token_counts.json"))) for d in (one, two)]
    assert counts[0] == counts[1] and counts[0]["total"] > 0
    dla = [json.load(open(os.path.join(d, "dla.json"))) for d in (one, two)]
    assert dla[0]["tokens"] == dla[1]["tokens"] and dla[0]["mean_logit"] == pytest.approx(dla[1]["mean_logit"], rel=1e-5)
    assert dla[0]["mean_contribution"] == pytest.approx(dla[1]["mean_contribution"], rel=1e-5, abs=1e-7)
    for a, b in zip(_layers(one), _layers(two)):
        for key, value in a.items():
            assert b[key] == (value if isinstance(value, str) else pytest.approx(value, rel=1e-5, abs=1e-7)), key


def test_run_probes_match_accumulators_built_by_hand(lm, corpus_file, tmp_path):
    """Lag 0 and lag −1 (the linear-accuracy post: x_t against the logit position t−1 gave token t), each against its own
    accumulators filled by hand with the shifted design."""
    from fusedlens import ops
    from fusedlens.core.capture import capture_residuals
    from fusedlens.probe.accumulator import RidgeAccumulator
    from fusedlens.probe.solve import cross_validate

    summary = run(RunConfig(corpus=[corpus_file], out=str(tmp_path), seq_len=64, batch_size=4, max_tokens=64 * 24,
                            probes=["logit"], probe_lags=[0, -1], progress=False), lm=lm)
    seqs = list(iter_sequences(lm.tokenizer, [corpus_file], 64, stop=24))
    accs = {lag: [RidgeAccumulator(len(summary["sites"]), lm.d_model, 1) for _ in range(6)] for lag in (0, -1)}
    for s in seqs:
        res = capture_residuals(lm, s.ids[None])
        has = res.targets >= 0
        y = ops.target_logit(lm.norm(res.hidden[-1][has]), lm.unembed.weight, res.targets[has], lm.unembed.bias)
        accs[0][s.index % 6].update(res.hidden[:, has], y)
        n = int(has.sum())  # rows 1..n: the logit row t-1 gave; row n (the last token) has it too
        accs[-1][s.index % 6].update(res.hidden[:, 1:n + 1], y)
    for lag in (0, -1):
        want = cross_validate(accs[lag][:5], accs[lag][5])
        for row, fits in zip(summary["layers"], want):
            assert row[f"probe_logit@lag{lag}_r2_heldout"] == pytest.approx(fits[0]["r2_heldout"], rel=1e-5, abs=1e-6)
            assert row[f"probe_logit@lag{lag}_alpha"] == fits[0]["alpha"]
            assert row[f"probe_logit@lag{lag}_n_train"] == fits[0]["n_train"] > 0
    from fusedlens.report import format_table

    header = format_table(summary["layers"]).splitlines()[0]
    assert "probe_logit@lag-1_r2_heldout" in header


def test_run_refine_sums_match_a_hand_built_pass(lm, corpus_file, tmp_path):
    """--token-counts, then --refine with those counts: the sums of the same sweep, resumable."""
    from fusedlens import ops
    from fusedlens.core.capture import capture_residuals
    from fusedlens.refine import RefineSums, TokenCounts

    first = run(RunConfig(corpus=[corpus_file], out=str(tmp_path / "a"), seq_len=32, batch_size=2,
                          max_tokens=32 * 8, token_counts=True, progress=False), lm=lm)
    counts_path = str(tmp_path / "a" / "token_counts.json")
    counts = TokenCounts.load(counts_path, lm.vocab_size)
    assert counts.total == first["tokens"] - 8  # every token but each sequence's last is a next token
    run(RunConfig(corpus=[corpus_file], out=str(tmp_path / "b"), seq_len=32, batch_size=2, max_tokens=32 * 8,
                  refine=counts_path, buckets="3,20", progress=False), lm=lm)
    got = json.load(open(tmp_path / "b" / "refine.json"))
    sums = RefineSums(len(got["sites"]), counts.buckets([3, 20]), 3)
    for s in iter_sequences(lm.tokenizer, [corpus_file], 32, stop=8):
        res = capture_residuals(lm, s.ids[None])
        sums.update(ops.lens_stats(res.hidden, lm.norm, lm.unembed, res.targets, 5, token_sets=sums.token_sets()),
                    res.targets)
    want = sums.summary(got["sites"], got["buckets"])
    have = got["lenses"]["logit"]
    assert have["top1_share"] == want["top1_share"] and have["depth_to_correct_hist"] == want["depth_to_correct_hist"]
    for a, b in zip(have["mass"], want["mass"]):
        assert a == pytest.approx(b, abs=1e-5)


def test_run_dla_means_match_dla_per_sequence(lm, corpus_file, tmp_path):
    """--dla: the corpus means of every component's effect on the true next token equal those of
    fusedlens.dla run on each sequence alone; the block-level parts sum to the mean logit."""
    from fusedlens.dla import direct_logit_attribution as dla

    run(RunConfig(corpus=[corpus_file], out=str(tmp_path), seq_len=32, batch_size=3, max_tokens=32 * 7, dla=True,
                  progress=False), lm=lm)
    got = json.load(open(tmp_path / "dla.json"))
    sums, n, logit = None, 0, 0.0
    for s in iter_sequences(lm.tokenizer, [corpus_file], 32, stop=7):
        r = dla(lm, s.ids[None], ("attn", "mlp", "head"), k=0)
        rows = r.rows_of("next")
        part = r.contrib["next"][:, rows].double().sum(1)
        sums = part if sums is None else sums + part
        n += rows.numel()
        logit += float(r.logits["next"][rows].double().sum())
    assert got["tokens"] == n and list(got["mean_contribution"]) == r.components
    assert list(got["mean_contribution"].values()) == pytest.approx((sums / n).tolist(), rel=1e-4, abs=1e-5)
    assert got["mean_logit"] == pytest.approx(logit / n, rel=1e-5)
    assert (tmp_path / "dla_heads.png").stat().st_size > 5_000 and (tmp_path / "dla_blocks.png").exists()


def test_run_with_a_tuned_lens(lm, corpus_file, tmp_path):
    from fusedlens.lens.aggregate import LensAggregate
    from fusedlens.core.capture import capture_residuals
    from fusedlens.tuned.lens import TunedLens

    lens = TunedLens.from_model(lm)
    with torch.no_grad():
        for t in lens.layer_translators:
            t.weight.normal_(0, 0.05)
            t.bias.normal_(0, 0.1)
    lens.save(str(tmp_path / "lens"))
    summary = run(RunConfig(corpus=[corpus_file], out=str(tmp_path / "run"), seq_len=64, batch_size=2,
                            max_tokens=64 * 4, tuned=str(tmp_path / "lens"), k=2, progress=False), lm=lm)
    agg = LensAggregate(summary["sites"], lm.vocab_size)
    for s in iter_sequences(lm.tokenizer, [corpus_file], 64, stop=4):
        res = capture_residuals(lm, s.ids[None])
        agg.update(lens.lens_stats(res.hidden, res.targets, 2), res.targets)
    assert summary["lens"] == "tuned"
    for got, want in zip(summary["layers"], agg.summary()):
        for key, value in want.items():
            assert got[key] == (value if isinstance(value, str) else pytest.approx(value, rel=1e-5, abs=1e-6)), key
    # the run's grid and depth passage decode through the same lens (LogitLens with translate=)
    ids = next(iter_sequences(lm.tokenizer, [corpus_file], 64)).ids
    through = LogitLens(lm, k=2, translate=lambda h: lens.translate_sites(h, summary["sites"])).run(ids).stats
    res = capture_residuals(lm, ids[None])
    want = lens.lens_stats(res.hidden, res.targets, 2)
    assert torch.equal(through.topk_ids, want.topk_ids)
    assert torch.allclose(through.kl_to_final, want.kl_to_final, rtol=1e-5, atol=1e-6)
    assert not torch.equal(through.topk_ids, LogitLens(lm, k=2).run(ids).stats.topk_ids)  # it is not the logit lens
    with pytest.raises(ValueError, match="translate"):
        LogitLens(lm, translate="tuned")


# ---------------------------------------------------------------- bad input found by trying the CLI

def test_max_tokens_is_met_exactly(lm, corpus_file, tmp_path):
    # 0.1 rounded the budget up to whole sequences: --max-tokens 256 with --seq-len 100 ran 300
    summary = run(RunConfig(corpus=[corpus_file], out=str(tmp_path), seq_len=100, max_tokens=256, progress=False),
                  lm=lm)
    assert summary["tokens"] == 256


def test_seq_len_beyond_the_context_is_an_error(lm, corpus_file, tmp_path):
    assert lm.context_length == 128
    with pytest.raises(ValueError, match="seq_len: 1000 is longer than the model's context of 128"):
        run(RunConfig(corpus=[corpus_file], out=str(tmp_path), seq_len=1000, max_tokens=256, progress=False), lm=lm)


@pytest.mark.parametrize("where", ["file", "unwritable"])
def test_bad_out_fails_before_the_model_loads(corpus_file, tmp_path, capsys, where, monkeypatch):
    from fusedlens.cli import main

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr("fusedlens.core.models.load_model", refuse)

    out = str(tmp_path / "a_file") if where == "file" else "/proc/fusedlens_cannot_write_here"
    if where == "file":
        open(out, "w").close()
    t0 = time.perf_counter()
    assert main(["run", corpus_file, "--out", out, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"out: {out}" in err and ("is a file" in err if where == "file" else "cannot be written" in err)
    assert len(err.strip().splitlines()) == 1 and time.perf_counter() - t0 < 30


def test_truncated_checkpoint_is_named_with_what_to_do(lm, corpus_file, tmp_path):
    cfg = RunConfig(corpus=[corpus_file], out=str(tmp_path), seq_len=64, max_tokens=128, progress=False)
    run(cfg, lm=lm)
    path = tmp_path / "checkpoint" / "rank0.pt"
    path.write_bytes(path.read_bytes()[:100])  # a kill while copying, a full disk
    with pytest.raises(ValueError, match=r"rank0.pt cannot be read .*delete it to start the run over"):
        run(cfg, lm=lm)


def test_an_edited_corpus_is_not_resumed(lm, tmp_path, text):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text[:3000])
    cfg = RunConfig(corpus=[str(corpus)], out=str(tmp_path / "out"), seq_len=64, max_tokens=128, progress=False)
    run(cfg, lm=lm)
    run(cfg, lm=lm)  # the same corpus: resumes (already done)
    corpus.write_text(text[:3000].upper())  # same path and size, other content
    with pytest.raises(ValueError, match="different run.*corpus_content"):
        run(cfg, lm=lm)


def test_pictures_come_from_the_main_pass(lm, corpus_file, tmp_path, monkeypatch):
    # the grid and depth page show the corpus' first sequence through the run's lens, from rows kept
    # during the pass: no second forward (0.1 loaded the lens again and re-ran the prompt)
    from fusedlens.core.capture import ResidualCapture

    calls = []
    real_run = ResidualCapture.run
    monkeypatch.setattr(ResidualCapture, "run", lambda self, *a, **k: calls.append(1) or real_run(self, *a, **k))
    out = tmp_path / "run"
    run(RunConfig(corpus=[corpus_file], out=str(out), seq_len=64, batch_size=2, max_tokens=64 * 6, progress=False),
        lm=lm)
    assert len(calls) == 3  # 6 sequences, 2 per forward: the forwards of the pass and nothing else
    assert (out / "grid.png").stat().st_size > 10_000
    page = (out / "prediction_depth.html").read_text()
    seq0 = next(iter_sequences(lm.tokenizer, [corpus_file], 64))
    want = LogitLens(lm, k=1).run(seq0.ids[None])
    depths = [int(d) for d in re.findall(r"\(depth (\d+)\)", page)]
    assert depths == want.stats.prediction_depth.tolist()  # the same rows as a LogitLens run of that sequence
