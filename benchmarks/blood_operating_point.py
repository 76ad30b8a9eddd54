"""Choose Analyse smear's operating point for a detector on its held-out smears (no test smears touched).

The operating point (``tasks.blood.KNOWN_OPERATING_POINT`` or a checkpoint's
``training.smear_operating_point``) has three parts, each chosen here:

* **TTA**: one pass, or the 180-degree rotation fused by weighted box fusion
  (``tasks.blood.fuse_passes``), kept when it raises mAP50;
* **score_threshold** (red cells, platelets): the score where the mean absolute
  red-cell count error per smear is least;
* **wbc_threshold**: the highest score at which white-cell recall (IoU >= 0.5) is
  still what the lowest threshold finds, times ``--margin`` (0.6) for smears the
  choice never saw.

The detector's passes run once (``tasks.detect.detect`` at score 0.02, no NMS,
exactly as Analyse smear runs them) and every choice is made on those.  The
held-out smears are split in two halves by overlap group: each half's choice is
scored on the other half (2-fold), so the printed recall and count error are not
measured on the smears they were chosen on; the shipped point is chosen on all.

    OMP_NUM_THREADS=1 python benchmarks/blood_operating_point.py [--detector NAME]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bccd"
GRID = np.round(np.arange(0.05, 0.60, 0.01), 2)


def _passes(names, data, lm, flips):
    from napari_cellclass.engine.progress import run_sync
    from napari_cellclass.io.wbc_dataset import read_rgb
    from napari_cellclass.tasks import blood
    from napari_cellclass.tasks import detect as dt

    out = {}
    for n in names:
        img = read_rgb(data / "JPEGImages" / n)
        out[n] = {}
        for f in flips:
            r = run_sync(dt.detect(blood._flip(img, f), lm, device="cpu", score_threshold=0.02, nms_iou=1.0))
            out[n][f] = (blood._unflip_boxes(r["boxes"], f, img.shape), list(r["labels"]), np.asarray(r["scores"]))
    return out


def _single(p, nms_iou=0.5):
    from torchvision.ops import batched_nms

    b, lab, s = p
    if not len(s):
        return p
    ids = {v: k for k, v in enumerate(dict.fromkeys(lab))}
    keep = batched_nms(torch.as_tensor(b[:, [1, 0, 3, 2]], dtype=torch.float32),
                       torch.as_tensor(s, dtype=torch.float32), torch.as_tensor([ids[v] for v in lab]),
                       nms_iou).numpy()
    return b[keep], [lab[i] for i in keep], s[keep]


def _wbc_found(pred, gt_boxes, thr):
    from napari_cellclass.tasks import blood

    b, lab, s = pred
    wb = np.array([bb for bb, la, sc in zip(b, lab, s) if blood.is_wbc(la) and sc >= thr]).reshape(-1, 4)
    return sum(1 for g in gt_boxes if len(wb) and blood._iou_one(g, wb).max() >= 0.5)


def _rbc_mae(preds, truth, names, thr):
    return float(np.mean([abs(sum(1 for la, sc in zip(preds[n][1], preds[n][2]) if la == "RBC" and sc >= thr)
                              - truth[n]["RBC"]) for n in names]))


def choose(preds, truth, names, margin):
    """(score_threshold, wbc_threshold) chosen on ``names`` only."""
    maes = [_rbc_mae(preds, truth, names, t) for t in GRID]
    score = float(GRID[int(np.argmin(maes))])
    found = [sum(_wbc_found(preds[n], truth[n]["wbc_boxes"], t) for n in names) for t in GRID]
    best = max(found)
    top = max(t for t, f in zip(GRID, found) if f == best)
    return score, round(float(top) * margin, 2)


def score_on(preds, truth, names, score, wthr):
    tot = sum(len(truth[n]["wbc_boxes"]) for n in names)
    found = sum(_wbc_found(preds[n], truth[n]["wbc_boxes"], wthr) for n in names)
    extra = sum(max(0, sum(1 for la, sc in zip(preds[n][1], preds[n][2]) if la == "WBC" and sc >= wthr)
                    - len(truth[n]["wbc_boxes"])) for n in names)
    return {"white_cells_found": f"{found}/{tot}", "extra_white_boxes": extra,
            "rbc_count_mae": round(_rbc_mae(preds, truth, names, score), 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--detector", default="bccd-blood-cells-centernet")
    ap.add_argument("--margin", type=float, default=0.6, help="wbc_threshold = margin x the highest full-recall score")
    ap.add_argument("--fuse-iou", type=float, default=0.55)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from napari_cellclass import zoo
    from napari_cellclass.engine.checkpoint import read_meta
    from napari_cellclass.io.annotations import read_voc
    from napari_cellclass.io.blood_split import overlap_groups
    from napari_cellclass.tasks import blood
    from napari_cellclass.zoo.loaded import load_model

    path = zoo.resolve_model(args.detector, task="detect")
    names = sorted(read_meta(path).training["val_images"])
    lm = load_model(path, task="detect", device="cpu")
    t0 = time.monotonic()
    raw = _passes(names, args.data, lm, ["none", "hv"])
    truth = {}
    for n in names:
        ann = read_voc(args.data / "Annotations" / (Path(n).stem + ".xml"))
        b = np.asarray(ann.boxes, dtype=float).reshape(-1, 4)[:, [1, 0, 3, 2]]
        truth[n] = {"RBC": sum(1 for la in ann.labels if la == "RBC"),
                    "wbc_boxes": [bb for bb, la in zip(b, ann.labels) if la == "WBC"]}
    variants = {"one pass, NMS 0.5": {n: _single(raw[n]["none"]) for n in names},
                "none+hv, box fusion": {n: blood.fuse_passes([raw[n]["none"], raw[n]["hv"]], args.fuse_iou)
                                        for n in names}}
    groups = overlap_groups([args.data / "JPEGImages" / n for n in names])
    half = [[n for n, g in zip(names, groups) if g % 2 == k] for k in (0, 1)]
    report = {"detector": args.detector, "held_out_smears": len(names), "halves": [len(h) for h in half]}
    for label, preds in variants.items():
        s_all, w_all = choose(preds, truth, names, args.margin)
        cv = {}
        for k in (0, 1):
            s, w = choose(preds, truth, half[k], args.margin)
            cv[f"chosen on half {k} ({s}, {w}), scored on half {1 - k}"] = score_on(preds, truth, half[1 - k], s, w)
        report[label] = {"chosen_on_all": {"score_threshold": s_all, "wbc_threshold": w_all},
                         "on_all_at_that_point": score_on(preds, truth, names, s_all, w_all), "two_fold": cv}
    report["seconds"] = round(time.monotonic() - t0, 1)
    report["device"] = lm.policy.describe()
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
