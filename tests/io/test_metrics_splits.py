"""The one metrics module (scikit-learn) and the one grouped split (the rule the built-ins were trained on).

The split fingerprints were taken from the four former split functions before they were
merged; the real-data ones are the held-out spreads, cells and smears of the shipped
models, which ``--set split=val`` and the benchmarks must keep scoring on.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from napari_cellclass.io import hpa_dataset as H
from napari_cellclass.io import wbc_dataset as W
from napari_cellclass.io.splits import grouped_split
from napari_cellclass.metrics import classification_metrics, f1_per_class, multilabel_metrics


def _fp(names) -> tuple[int, str]:
    names = sorted(map(str, names))
    return len(names), hashlib.sha1("\n".join(names).encode()).hexdigest()[:12]


def test_classification_metrics_by_hand():
    m = classification_metrics([0, 0, 1, 1, 2], [0, 1, 1, 1, 1], ["A", "B", "C"])
    assert m["accuracy"] == 0.6 and m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [0, 1, 0]]
    b = m["per_class"]["B"]
    assert b["precision"] == pytest.approx(0.5) and b["recall"] == 1.0 and b["f1"] == pytest.approx(2 / 3)
    assert m["per_class"]["C"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1, "accuracy": 0.0}
    assert m["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    # the chromosome report: no data -> None (JSON null), classes absent from the truth not averaged
    c = classification_metrics([0, 0], [0, 1], ["A", "B", "C"], undefined=None)
    assert c["per_class"]["C"]["precision"] is None and c["per_class"]["C"]["accuracy"] is None
    assert c["per_class"]["B"]["precision"] == 0.0 and c["macro_f1"] == pytest.approx(2 / 3)


def test_multilabel_metrics_by_hand():
    truth = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0]], bool)
    probs = np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.1, 0.7, 0.0]])
    f1 = f1_per_class(truth, probs >= 0.5)
    assert f1[0] == 1.0 and f1[1] == pytest.approx(2 / 3) and np.isnan(f1[2])
    m = multilabel_metrics(truth, probs, 0.5)
    assert m["macro_f1"] == pytest.approx((1 + 2 / 3) / 2)
    assert m["accuracy"] == pytest.approx(2 / 3) and m["label_accuracy"] == pytest.approx(8 / 9)


def test_grouped_split_keeps_groups_and_strata():
    groups = [i // 3 for i in range(60)]  # 20 groups of 3
    strata = ["a" if g % 4 else "b" for g in groups]  # 15 groups "a", 5 groups "b"
    tr, va = grouped_split(groups, 0.2, 0, strata=strata)
    assert sorted(tr + va) == list(range(60))
    assert not {groups[i] for i in tr} & {groups[i] for i in va}
    assert len({groups[i] for i in va if strata[i] == "a"}) == 3 and len({groups[i] for i in va if strata[i] == "b"}) == 1
    assert grouped_split(["x", "x"], 0.5, 0) == ([0, 1], [])  # one group cannot be both learned and tested
    assert grouped_split(range(5), 0.0, 0, at_least_one=False)[1] == []
    assert len(grouped_split(range(5), 0.0, 0)[1]) == 1


def test_the_former_split_functions_give_their_former_splits():
    """Fingerprints of the splits as the four separate functions made them."""
    from napari_cellclass.tasks.detect import split_by_image

    assert split_by_image(10, 0.2, 0) == ([0, 1, 2, 3, 5, 7, 8, 9], [4, 6])
    assert split_by_image(37, 0.3, 5)[1] == [2, 6, 7, 9, 12, 17, 24, 27, 31, 34, 36]
    items = [H.HPAItem(f"id{i:03d}", [i % 28]) for i in range(57)]
    assert _fp(i.set_id for i in H.split_by_id(items, 0.2, 0)[1]) == (11, "847e51eefad2")


@pytest.mark.slow
@pytest.mark.realdata
def test_held_out_sets_of_the_shipped_models_are_unchanged(shared_data: Path):
    from napari_cellclass.io.blood_split import bccd_split
    from napari_cellclass.io.chromosome_dataset import scan_dataset, split_by_cell

    expected = {"qband_bioimlab": (18, "a9dd6b927527"), "tseng2023_gband_spreads": (36, "e037ec9aadf2")}
    for name, fp in expected.items():
        root = shared_data / "chromosomes" / name
        if not root.is_dir():
            pytest.skip(f"{root} absent")
        assert _fp({s.cell for s in split_by_cell(scan_dataset(root), 0.2, 0)[1]}) == fp, name
    bccd = shared_data / "bccd"
    if not bccd.is_dir():
        pytest.skip("BCCD absent")
    assert _fp(bccd_split(bccd, 0.2, 0)["val"]) == (62, "1411a715b30c")
    val = W.split_by_group(W.find_records(bccd), 0.2, 0)[1]
    assert _fp(f"{r.path.name}:{r.box}" for r in val) == (55, "071c366f2c67")
