"""`fusedlens run`: corpus sources, the whole job against LogitLens, Parquet, kill-and-resume, two processes."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from fusedlens import LensModel, LogitLens
from fusedlens.corpus import CorpusProgress, iter_sequences
from fusedlens.records import read_records
from fusedlens.runner import RunConfig, parse_layers, run
from tiny_models import tiny_model, tiny_tokenizer

TEXT_CHARS = 6000


@pytest.fixture(scope="module")
def text():
    from fusedlens.demo import pydoc_text

    return pydoc_text()[:TEXT_CHARS]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_llama")
    tiny_model("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def lm(model_dir):
    from fusedlens.models import load_model

    return load_model(model_dir)


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("corpus") / "pydoc.txt"
    path.write_text(text)
    return str(path)


def sequences(lm, sources, seq_len, **kw):
    return [(s.index, s.ids.tolist()) for s in iter_sequences(lm.tokenizer, sources, seq_len, **kw)]


def test_corpus_sources_agree(lm, tmp_path, text, corpus_file):
    docs = [text[:2500], text[2500:]]
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "a.txt").write_text(docs[0])
    (tmp_path / "folder" / "b.md").write_text(docs[1])
    (tmp_path / "docs.jsonl").write_text("\n".join(json.dumps({"body": d, "id": i}) for i, d in enumerate(docs)))
    import datasets

    datasets.Dataset.from_dict({"body": docs}).save_to_disk(str(tmp_path / "saved"))
    want = sequences(lm, [str(tmp_path / "folder")], 100)
    assert want == sequences(lm, [str(tmp_path / "docs.jsonl")], 100, field="body")
    assert want == sequences(lm, [str(tmp_path / "saved")], 100, field="body")
    # packing: every token of both documents, an end-of-text token after each
    flat = [t for _, ids in want for t in ids]
    eos = lm.tokenizer.eos_token_id
    assert flat.count(eos) == 2 and len(flat) == len(text) + 2
    # shards and resume points partition the same sequence order
    shards = sequences(lm, [corpus_file], 64, rank=0, world=2) + sequences(lm, [corpus_file], 64, rank=1, world=2)
    assert sorted(shards) == sequences(lm, [corpus_file], 64)
    assert sequences(lm, [corpus_file], 64, start=7, stop=11) == sequences(lm, [corpus_file], 64)[7:11]


@pytest.mark.parametrize("kind", ["file", "folder", "jsonl", "saved", "pydoc"])
def test_corpus_progress_estimates_the_token_count(lm, tmp_path, text, kind):
    import datasets

    docs = [text[:2500], text[2500:4000], text[4000:]]
    source = {"file": tmp_path / "a.txt", "folder": tmp_path / "folder", "jsonl": tmp_path / "docs.jsonl",
              "saved": tmp_path / "saved", "pydoc": "pydoc"}[kind]
    if kind == "file":
        source.write_text(text)
    elif kind == "folder":
        source.mkdir()
        for i, d in enumerate(docs):
            (source / f"{i}.txt").write_text(d)
    elif kind == "jsonl":
        source.write_text("\n".join(json.dumps({"text": d}) for d in docs) + "\n\n")
    elif kind == "saved":
        datasets.Dataset.from_dict({"text": docs}).save_to_disk(str(source))
    progress = CorpusProgress([str(source)])
    assert progress.total_bytes > 0 and progress.estimate_total(0) is None
    seqs = iter_sequences(lm.tokenizer, [str(source)], 50, stop=None if kind != "pydoc" else 400, progress=progress)
    lengths = [len(s.ids) for s in seqs]
    total = sum(lengths)
    if kind == "pydoc":  # a budget stops early: the estimate is of the whole corpus, well past it
        assert progress.read_bytes < progress.total_bytes / 10
        return
    assert progress.read_bytes == pytest.approx(progress.total_bytes, rel=0.05)
    seqs = iter_sequences(lm.tokenizer, [str(source)], 50, progress=(progress := CorpusProgress([str(source)])))
    done = sum(len(next(seqs).ids) for _ in range(len(lengths) // 3))  # a third of the way in
    assert progress.estimate_total(done) == pytest.approx(total, rel=0.1)


def test_corpus_errors(lm, tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\nnot json\n')
    (tmp_path / "empty").mkdir()
    (tmp_path / "blank.txt").write_text("   \n")
    for source, match in [(str(tmp_path / "bad.jsonl"), "line 2"), (str(tmp_path / "empty"), "no text"),
                          (str(tmp_path / "missing.txt"), "not a file"), (str(tmp_path / "blank.txt"), "holds no text")]:
        with pytest.raises(ValueError, match=match):
            list(iter_sequences(lm.tokenizer, [source], 16))


def test_parse_layers():
    assert parse_layers("all", 4) == [0, 1, 2, 3]
    assert parse_layers("1-2", 4) == [1, 2] and parse_layers("0,-1", 4) == [0, 3]
    for bad in ("x", "1-a", ""):
        with pytest.raises(ValueError, match="layers"):
            parse_layers(bad, 4)


def test_run_matches_logit_lens(lm, corpus_file, tmp_path):
    out = str(tmp_path / "run")
    summary = run(RunConfig(corpus=[corpus_file], out=out, seq_len=96, batch_size=3, max_tokens=1000, records=True,
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
            "--batch-size", "1", "--checkpoint-every", "64", "--quiet", *extra]


def _layers(out):
    with open(os.path.join(out, "summary.json")) as f:
        return json.load(f)["layers"]


def test_kill_and_resume_gives_the_uninterrupted_totals(model_dir, corpus_file, tmp_path):
    whole, killed = str(tmp_path / "whole"), str(tmp_path / "killed")
    subprocess.run(_cli(model_dir, corpus_file, whole, "--records"), check=True, capture_output=True)
    proc = subprocess.Popen(_cli(model_dir, corpus_file, killed, "--records"), stdout=subprocess.DEVNULL,
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
    subprocess.run(_cli(model_dir, corpus_file, killed, "--records"), check=True, capture_output=True)
    assert _layers(killed) == _layers(whole)
    a, b = read_records(os.path.join(whole, "records")), read_records(os.path.join(killed, "records"))
    assert a.num_rows == b.num_rows and a.column("kl_to_final").equals(b.column("kl_to_final"))


def test_two_processes_equal_one(model_dir, corpus_file, tmp_path):
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    subprocess.run(_cli(model_dir, corpus_file, one), check=True, capture_output=True)
    cmd = _cli(model_dir, corpus_file, two)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517"]
    done = subprocess.run(torchrun + cmd[1:], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    with open(os.path.join(two, "summary.json")) as f:
        assert json.load(f)["processes"] == 2
    for a, b in zip(_layers(one), _layers(two)):
        for key, value in a.items():
            assert b[key] == (value if isinstance(value, str) else pytest.approx(value, rel=1e-5, abs=1e-7)), key


def test_run_probes_match_accumulators_built_by_hand(lm, corpus_file, tmp_path):
    from fusedlens import ops
    from fusedlens.capture import capture_residuals
    from fusedlens.ridge import RidgeAccumulator
    from fusedlens.ridge_solve import cross_validate

    summary = run(RunConfig(corpus=[corpus_file], out=str(tmp_path), seq_len=64, batch_size=4, max_tokens=64 * 24,
                            probes=["logit"], progress=False), lm=lm)
    seqs = list(iter_sequences(lm.tokenizer, [corpus_file], 64, stop=24))
    accs = [RidgeAccumulator(len(summary["sites"]), lm.d_model, 1) for _ in range(6)]
    for s in seqs:
        res = capture_residuals(lm, s.ids[None])
        has = res.targets >= 0
        y = ops.target_logit(lm.norm(res.hidden[-1][has]), lm.unembed.weight, res.targets[has], lm.unembed.bias)
        accs[s.index % 6].update(res.hidden[:, has], y)
    want = cross_validate(accs[:5], accs[5])
    for row, fits in zip(summary["layers"], want):
        assert row["probe_logit_r2_heldout"] == pytest.approx(fits[0]["r2_heldout"], rel=1e-5, abs=1e-6)
        assert row["probe_logit_alpha"] == fits[0]["alpha"]
        assert row["probe_logit_n_train"] == fits[0]["n_train"] > 0
    from fusedlens.report import format_table

    header = format_table(summary["layers"]).splitlines()[0]
    assert "probe_logit_r2_heldout" in header


def test_run_with_a_tuned_lens(lm, corpus_file, tmp_path):
    from fusedlens.aggregate import LensAggregate
    from fusedlens.capture import capture_residuals
    from fusedlens.tuned import TunedLens

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
