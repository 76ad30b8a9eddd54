"""Sharded, resumable folder prediction (engine/batch.py) and its CLI (--shard, torchrun ranks)."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_cellclass.tasks import batch as B
from napari_cellclass.engine.progress import Progress, run_sync
from napari_cellclass.errors import CellClassError, InputError
from napari_cellclass.tasks.base import TaskOptions


def _images(folder: Path, n: int) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = folder / f"img{i:03d}.png"
        Image.fromarray(rng.integers(0, 255, (20, 24), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


class FakeTask:
    """A task ``predict``: one table row per input, a per-input file, and a record of every call."""

    def __init__(self, fail_after: int | None = None):
        self.calls: list[list[str]] = []
        self.fail_after = fail_after

    def __call__(self, model, inputs, opts):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise RuntimeError("killed")
        self.calls.append([p.name for p in inputs])
        out = Path(opts.out)
        yield Progress(0, len(inputs), "predict")
        with open(out / "predictions.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["image", "class", "report", "p_A", "p_B"])
            for p in inputs:
                w.writerow([p.name, "A" if int(p.stem[-1]) % 3 else "B", str(out / f"{p.stem}_report.txt"), 0.5, 0.5])
        for p in inputs:
            (out / f"{p.stem}_report.txt").write_text(p.name)
        (out / "differential.csv").write_text("class,count,percent\nA,0,0.0\nTOTAL,0,0.0\n")  # per call: recounted
        return {"n": len(inputs)}


def _model(tmp_path: Path) -> Path:
    m = tmp_path / "model.safetensors"
    m.write_bytes(b"weights-v1")
    return m


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_parse_and_resolve_shard(monkeypatch):
    assert B.parse_shard("1/4") == B.Shard(1, 4) and str(B.Shard(0, 2)) == "0/2"
    for bad in ("4/4", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(InputError):
            B.parse_shard(bad)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert B.resolve_shard(None) is None and B.resolve_shard("2/3") == B.Shard(2, 3)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert B.resolve_shard(None) == B.Shard(1, 2)
    assert B.resolve_shard("2/3") == B.Shard(5, 6)  # SLURM array task 2 of 3, torchrun rank 1 of 2


def test_shards_cover_every_input_once_and_merge_in_input_order(tmp_path):
    files = _images(tmp_path / "in", 11)
    out = tmp_path / "out"
    fake = FakeTask()
    opts = TaskOptions(out=out)
    r0 = run_sync(B.run_batch("wbc", fake, _model(tmp_path), [tmp_path / "in"], opts, B.Shard(0, 3), chunk=2))
    assert r0["merged"] is False and r0["pending"] == 7
    run_sync(B.run_batch("wbc", fake, _model(tmp_path), [tmp_path / "in"], opts, B.Shard(2, 3), chunk=2))
    r1 = run_sync(B.run_batch("wbc", fake, _model(tmp_path), [tmp_path / "in"], opts, B.Shard(1, 3), chunk=2))
    assert r1["merged"] is True
    # chunks are bounded (memory is one chunk's worth) and every input ran exactly once
    assert max(len(c) for c in fake.calls) == 2
    assert sorted(n for c in fake.calls for n in c) == [f.name for f in files]
    rows = _rows(out / "predictions.csv")
    assert [r["image"] for r in rows] == [f.name for f in files]
    # per-input files sit in OUT as a plain run writes them; the table points at them there
    assert (out / "img004_report.txt").read_text() == "img004.png"
    assert rows[4]["report"] == str(out / "img004_report.txt")
    # the WBC differential is recounted over the whole folder, not summed per chunk
    diff = {r["class"]: r["count"] for r in _rows(out / "differential.csv")}
    n_b = sum(1 for f in files if int(f.stem[-1]) % 3 == 0)
    assert diff == {"A": str(11 - n_b), "B": str(n_b), "TOTAL": "11"}


def test_rerun_skips_done_inputs_and_redoes_a_cut_off_chunk(tmp_path):
    _images(tmp_path / "in", 7)
    out, model = tmp_path / "out", _model(tmp_path)
    opts = TaskOptions(out=out)
    crashing = FakeTask(fail_after=2)  # killed during its third chunk
    with pytest.raises(RuntimeError):
        run_sync(B.run_batch("wbc", crashing, model, [tmp_path / "in"], opts, B.Shard(0, 1), chunk=2))
    assert len(B.done_keys(out)) == 4
    fake = FakeTask()
    r = run_sync(B.run_batch("wbc", fake, model, [tmp_path / "in"], opts, B.Shard(0, 1), chunk=2))
    assert r["skipped_already_done"] == 4 and r["processed"] == 3 and r["merged"] is True
    assert [n for c in fake.calls for n in c] == ["img004.png", "img005.png", "img006.png"]
    assert [row["image"] for row in _rows(out / "predictions.csv")] == [f"img{i:03d}.png" for i in range(7)]
    again = FakeTask()
    r = run_sync(B.run_batch("wbc", again, model, [tmp_path / "in"], opts, B.Shard(0, 1), chunk=2))
    assert again.calls == [] and r["processed"] == 0 and r["merged"] is True


def test_a_folder_is_bound_to_one_model_and_settings(tmp_path):
    _images(tmp_path / "in", 2)
    out, model = tmp_path / "out", _model(tmp_path)
    run_sync(B.run_batch("wbc", FakeTask(), model, [tmp_path / "in"], TaskOptions(out=out), B.Shard(0, 1)))
    model.write_bytes(b"weights-v2")
    with pytest.raises(CellClassError, match="another run"):
        run_sync(B.run_batch("wbc", FakeTask(), model, [tmp_path / "in"], TaskOptions(out=out), B.Shard(0, 1)))
    model.write_bytes(b"weights-v1")
    with pytest.raises(CellClassError, match="settings"):
        run_sync(B.run_batch("wbc", FakeTask(), model, [tmp_path / "in"],
                             TaskOptions(out=out, extra={"tta": True}), B.Shard(0, 1)))
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    with pytest.raises(CellClassError, match="already holds"):
        run_sync(B.run_batch("wbc", FakeTask(), model, [tmp_path / "in"], TaskOptions(out=user), B.Shard(0, 1)))
    assert (user / "notes.txt").read_text() == "mine"


def test_hpa_units_are_channel_sets(tmp_path):
    from PIL import Image

    for sid in ("b", "a"):
        for c in ("red", "green", "blue", "yellow"):
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / f"{sid}_{c}.png")
    units = B.list_units("hpa", [tmp_path])
    assert [u.stem for u in units] == ["a", "b"]


# ----------------------------------------------------------------------------- 2 CPU ranks through the CLI

def _chromosome_model(path: Path) -> Path:
    import torch

    from napari_cellclass.engine.checkpoint import CheckpointMeta, save_checkpoint
    from napari_cellclass.models.registry import build_model
    from napari_cellclass.tasks.chromosome import CHROMOSOME_CLASSES, arch_config

    cfg = arch_config("resnet50_chromosome", TaskOptions(quick=True))
    torch.manual_seed(0)
    model = build_model("resnet50_chromosome", **cfg)
    meta = CheckpointMeta(task="chromosome", arch="resnet50_chromosome", class_names=list(CHROMOSOME_CLASSES),
                          in_channels=1, input_size=list(cfg["input_size"]), arch_config=cfg,
                          normalization={"pad_to": None}, trained_on="random init (test)")
    return save_checkpoint(path, model, meta)


@pytest.mark.slow
def test_two_cpu_ranks_predict_a_folder_like_one_process(tmp_path):
    _images(tmp_path / "in", 10)
    model = _chromosome_model(tmp_path / "chromo.safetensors")
    env = dict(os.environ, OMP_NUM_THREADS="1", CELLCLASS_DEVICE="cpu")
    env.pop("WORLD_SIZE", None)
    cli = [sys.executable, "-m", "napari_cellclass", "predict", "chromosome", str(model), str(tmp_path / "in"),
           "--quiet"]
    plain = subprocess.run(cli + ["--out", str(tmp_path / "plain")], env=env, capture_output=True, text=True,
                           timeout=300)
    assert plain.returncode == 0, plain.stderr[-2000:]
    r = subprocess.run(cli + ["--out", str(tmp_path / "sharded"), "--nproc", "2", "--chunk", "3"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout)  # rank 0 alone prints
    assert summary["merged"] is True and summary["inputs_total"] == 10 and summary["inputs_in_shard"] == 5
    manifests = [json.loads(p.read_text()) for p in (tmp_path / "sharded" / "parts").glob("*/.done.json")]
    assert sorted(m["shard"] for m in manifests) == ["0/2", "0/2", "1/2", "1/2"]  # 5 inputs each, chunks of <= 3
    a, b = _rows(tmp_path / "plain" / "predictions.csv"), _rows(tmp_path / "sharded" / "predictions.csv")
    assert [x["file"] for x in a] == [x["file"] for x in b]
    assert [x["class"] for x in a] == [x["class"] for x in b]
    assert np.allclose([float(x["score"]) for x in a], [float(x["score"]) for x in b], atol=1e-5)
    # the same command again does nothing but merge
    r2 = subprocess.run(cli + ["--out", str(tmp_path / "sharded"), "--shard", "0/1"], env=env, capture_output=True,
                        text=True, timeout=300)
    assert r2.returncode == 0, r2.stderr[-2000:]
    again = json.loads(r2.stdout)
    assert again["processed"] == 0 and again["skipped_already_done"] == 10 and again["merged"] is True
