"""One loaded-model object: names and paths load the same way, once, with what a task needs."""
from __future__ import annotations

import pytest
import torch

from napari_cellclass.engine.checkpoint import CheckpointMeta, save_checkpoint
from napari_cellclass.engine.progress import run_sync
from napari_cellclass.errors import CellClassError
from napari_cellclass.zoo import loaded
from napari_cellclass.zoo.loaded import LoadedModel, load_model
from zoo_utils import WBC_CLASSES, make_zoo, tiny_checkpoint


@pytest.fixture(autouse=True)
def _fresh_cache():
    loaded.clear_cache()
    yield
    loaded.clear_cache()


@pytest.fixture
def count_loads(monkeypatch):
    """How many times a checkpoint file is read and built."""
    calls: list = []
    real = loaded.build_from_checkpoint

    def counting(path, **kw):
        calls.append(path)
        return real(path, **kw)

    monkeypatch.setattr(loaded, "build_from_checkpoint", counting)
    return calls


def test_by_builtin_name_and_by_path(tmp_path, monkeypatch):
    make_zoo(tmp_path, monkeypatch, {"wbc-good": {}})
    by_name = load_model("wbc-good", task="wbc", device="cpu")
    assert isinstance(by_name, LoadedModel)
    assert by_name.classes == WBC_CLASSES and by_name.task == "wbc"
    assert by_name.device == torch.device("cpu") and not by_name.net.training
    assert by_name.transform is not None and by_name.transform.name == "wbc_crop"
    assert by_name.card is not None and by_name.name == "wbc-good" and by_name.source == "wbc-good"
    path = tiny_checkpoint(tmp_path / "own.safetensors")
    by_path = load_model(path, task="wbc", device="cpu")
    assert by_path.card is None and by_path.path == path and by_path.classes == WBC_CLASSES
    assert by_path.transform is not None
    net, meta = by_path  # still unpacks as the older (network, meta) pair
    assert net is by_path.net and meta.task == "wbc"


def test_cached_same_object_and_read_once(tmp_path, count_loads):
    path = tiny_checkpoint(tmp_path / "m.safetensors")
    first = load_model(path, task="wbc", device="cpu")
    assert load_model(path, task="wbc", device="cpu") is first
    assert load_model(str(path), device="cpu") is first
    assert load_model(first) is first  # a loaded model passes through unchanged
    assert len(count_loads) == 1
    fresh = load_model(path, device="cpu", cache=False)  # a copy the caller may train
    assert fresh is not first and fresh.net is not first.net and len(count_loads) == 2


def test_new_file_version_is_loaded_again(tmp_path, count_loads):
    import os

    path = tiny_checkpoint(tmp_path / "m.safetensors")
    first = load_model(path, device="cpu")
    tiny_checkpoint(path, seed=1)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert load_model(path, device="cpu") is not first and len(count_loads) == 2


def test_wrong_task_refused_with_a_clear_message(tmp_path, monkeypatch):
    path = tiny_checkpoint(tmp_path / "m.safetensors")
    with pytest.raises(CellClassError, match="'wbc' model, but 'hpa' needs"):
        load_model(path, task="hpa", device="cpu")
    make_zoo(tmp_path, monkeypatch, {"wbc-good": {}})
    with pytest.raises(CellClassError, match="'wbc' model, but 'chromosome' needs"):
        load_model("wbc-good", task="chromosome")
    lm = load_model(path, device="cpu")
    with pytest.raises(CellClassError, match="'wbc' model, but 'detect' needs"):
        load_model(lm, task="detect")
    with pytest.raises(CellClassError, match="input channel"):
        load_model(path, device="cpu", in_channels=4)
    with pytest.raises(CellClassError, match="neither a checkpoint file nor a built-in model"):
        load_model("no-such-model")


def test_full_model_is_per_call_not_a_flag_on_the_shared_network(tmp_path):
    from napari_cellclass.synth.chromosomes import make_chromosome
    from napari_cellclass.tasks.chromosome import classify_crops

    path = _tiny_classifier(tmp_path)
    lm = load_model(path, task="chromosome", device="cpu")
    crops = [make_chromosome(3, seed=s)[0] for s in range(3)]
    plain = run_sync(classify_crops(crops, lm, device="cpu", tta=False))
    full = run_sync(classify_crops(crops, lm, device="cpu", tta=False, full_model=True))
    assert lm.net.full_inference is False  # never switched
    assert not torch.allclose(torch.as_tensor(plain), torch.as_tensor(full))
    assert torch.allclose(torch.as_tensor(run_sync(classify_crops(crops, lm, device="cpu", tta=False))),
                          torch.as_tensor(plain))
    assert not hasattr(lm.net, "chromosome_preprocess")


def _tiny_classifier(tmp_path):
    from napari_cellclass.models.registry import build_model
    from napari_cellclass.synth.chromosomes import CHROMOSOME_CLASSES

    torch.manual_seed(0)
    cfg = {"num_classes": 24, "input_size": [48, 52], "width": 0.125, "layers": [1, 1, 1, 1]}
    net = build_model("gricol", **cfg)
    meta = CheckpointMeta(task="chromosome", arch="gricol", class_names=list(CHROMOSOME_CLASSES), in_channels=1,
                          input_size=[48, 52], arch_config=cfg,
                          normalization={"preprocess": "prepare_crop", "canvas": "absolute", "pad_to": None})
    return save_checkpoint(tmp_path / "chromo.safetensors", net, meta)


def test_karyotyping_a_spread_loads_each_checkpoint_once(tmp_path, count_loads):
    from napari_cellclass.synth.chromosomes import make_spread
    from napari_cellclass.tasks.karyotype import karyotype, model_classifier

    path = _tiny_classifier(tmp_path)
    spread = make_spread(seed=3, karyotype="46,XY", size=(480, 480))
    res = run_sync(karyotype(spread["image"], path, device="cpu", segmenter="threshold"))
    assert res["classified"] > 0
    assert len(count_loads) == 1
    # corrections classify again with the same loaded model: nothing is read again
    classify = model_classifier(path, "cpu")
    probs = classify(spread["image"], res["labels"], [1, 2])
    assert probs.shape == (2, 24)
    run_sync(karyotype(spread["image"], path, device="cpu", segmenter="threshold"))
    assert len(count_loads) == 1


def test_model_file_resolves_without_loading(tmp_path, monkeypatch, count_loads):
    from napari_cellclass.zoo.loaded import model_file

    make_zoo(tmp_path, monkeypatch, {"wbc-good": {}})
    path = model_file("wbc-good", task="wbc")
    assert path.is_file() and path.suffix == ".safetensors" and len(count_loads) == 0
    with pytest.raises(CellClassError, match="'wbc' model, but 'hpa' needs"):
        model_file("wbc-good", task="hpa")
    lm = load_model("wbc-good", task="wbc", device="cpu")
    assert lm.path == path and model_file(lm) == path  # load_model resolves names through it
    with pytest.raises(CellClassError, match="'wbc' model, but 'detect' needs"):
        model_file(lm, task="detect")


def test_explain_and_embedding_use_the_shared_model_and_leave_it_unchanged(tmp_path, count_loads):
    import numpy as np

    from napari_cellclass.explain.job import explain_job

    path = tiny_checkpoint(tmp_path / "m.safetensors")
    lm = load_model(path, task="wbc", device="cpu")
    before = {k: v.clone() for k, v in lm.net.state_dict().items()}
    img = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    for method in ("gradcam", "guided_gradcam"):
        res = run_sync(explain_job(path, img, None, method, None, "cpu"))
        assert res["heatmap"].shape == (64, 64)
    assert len(count_loads) == 1  # the explain job found the cached model
    assert all(p.grad is None for p in lm.net.parameters())  # no gradients left on the shared network
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in lm.net.modules())
    assert all(torch.equal(before[k], v) for k, v in lm.net.state_dict().items()) and not lm.net.training


def _tiny_detector(path):
    from napari_cellclass.models.registry import build_model

    torch.manual_seed(0)
    cfg = {"num_classes": 3, "width": 8, "min_size": 128, "max_size": 160}
    net = build_model("fasterrcnn_tiny", **cfg)
    meta = CheckpointMeta(task="detect", arch="fasterrcnn_tiny", arch_config=cfg, class_names=["cell", "debris"],
                          in_channels=3, input_size=[128, 128])
    return save_checkpoint(path, net, meta)


def test_detect_thresholds_are_per_call_on_a_shared_detector(tmp_path):
    """Two threads detecting with one cached network and different thresholds get their own results."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from napari_cellclass.tasks.detect import detect

    lm = load_model(_tiny_detector(tmp_path / "d.safetensors"), task="detect", device="cpu")
    img = np.random.default_rng(1).integers(0, 255, (128, 128, 3), dtype=np.uint8)

    def run(thr, nms):
        r = run_sync(detect(img, lm, device="cpu", score_threshold=thr, nms_iou=nms))
        return r["boxes"].round(3).tolist(), r["scores"].round(4).tolist()

    settings = [(0.0, 0.3), (0.99, 0.9), (0.0, 0.9)]
    reference = {s: run(*s) for s in settings}
    assert reference[(0.0, 0.3)] != reference[(0.99, 0.9)]
    with ThreadPoolExecutor(3) as pool:
        futures = [(s, pool.submit(run, *s)) for _ in range(3) for s in settings]
        for s, f in futures:
            assert f.result() == reference[s], s
