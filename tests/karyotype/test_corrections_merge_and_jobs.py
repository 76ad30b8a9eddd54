"""KaryotypeSession: merge refuses objects that do not touch (unless forced); the update as a job with
progress and cancel; straightened or plain karyogram; no selection frame in the result's image."""
from __future__ import annotations

import numpy as np
import pytest

from napari_cellclass.engine.progress import CancelToken, run_sync
from napari_cellclass.errors import Cancelled, InputError
from napari_cellclass.karyotype.corrections import KaryotypeSession, NotTouchingError
from napari_cellclass.synth.chromosomes import make_spread


@pytest.fixture(scope="module")
def spread():
    return make_spread(2, "46,XY", size=(384, 384))


def _min_distance(labels, a, b) -> float:
    ya, xa = np.nonzero(labels == a)
    yb, xb = np.nonzero(labels == b)
    return float(np.sqrt(((ya[:, None] - yb[None]) ** 2 + (xa[:, None] - xb[None]) ** 2).min()))


def _far_pair(labels):
    ids = [int(i) for i in np.unique(labels) if i]
    a = ids[0]
    return a, max(ids[1:], key=lambda b: _min_distance(labels, a, b))


def _across(labels, lid):
    ys, xs = np.nonzero(labels == lid)
    cy, cx = ys.mean(), xs.mean()
    w, v = np.linalg.eigh(np.cov(np.vstack([ys - cy, xs - cx])))
    r = 3 * np.sqrt(w[0]) + 4
    return [(cy - r * v[0, 0], cx - r * v[1, 0]), (cy + r * v[0, 0], cx + r * v[1, 0])]


def test_merge_refuses_objects_that_do_not_touch_unless_forced(spread):
    ses = KaryotypeSession(spread["image"], spread["labels"])
    labels0 = ses.labels.copy()
    a, b = _far_pair(labels0)
    gap = int(round(_min_distance(labels0, a, b) - 1))
    assert gap > 20
    with pytest.raises(NotTouchingError) as err:
        ses.merge(a, b)
    assert str(err.value) == (f"chromosomes {a} and {b} do not touch (a gap of {gap} px between them); "
                              f"merge({a}, {b}, force=True) joins them anyway")
    assert isinstance(err.value, InputError) and err.value.ids == (a, b) and err.value.gap == gap
    assert np.array_equal(ses.labels, labels0) and ses.history == []  # nothing changed, nothing to undo
    assert ses.gap(a, b) == (a, b, gap)

    assert ses.merge(a, b, force=True) == a
    assert not (ses.labels == b).any() and (ses.labels == a).sum() == (labels0 == a).sum() + (labels0 == b).sum()
    assert ses.undo() == "merge" and np.array_equal(ses.labels, labels0)


def test_merge_of_touching_pieces_and_a_far_one(spread):
    ses = KaryotypeSession(spread["image"], spread["labels"])
    lid = max(ses.ids, key=lambda i: (ses.labels == i).sum())
    (new,) = ses.cut(_across(ses.labels, lid), label=lid)
    assert ses.gap(lid, new) is None  # the two halves of a cut touch
    far = max(ses.ids, key=lambda i: _min_distance(ses.labels, lid, i))
    near, d = min(((i, _min_distance(ses.labels, i, far)) for i in (lid, new)), key=lambda t: t[1])
    with pytest.raises(NotTouchingError, match=f"chromosomes {near} and {far} do not touch "
                                               f"\\(a gap of {int(round(d - 1))} px"):
        ses.merge(lid, new, far)
    assert ses.merge(new, lid) == new and not (ses.labels == lid).any()


def test_update_job_reports_stages_and_cancel_leaves_state_for_undo(spread):
    calls = []

    def classify(image, labels, ids):
        calls.append(list(ids))
        if token is not None:
            token.cancel()  # the user presses Cancel while the model runs
        return np.full((len(ids), 24), 1 / 24)

    token = None
    ses = KaryotypeSession(spread["image"], spread["labels"], classify=classify)
    stages = []
    res = run_sync(ses.update_job(), lambda p: stages.append((p.stage, p.step, p.total)))
    assert [s[0] for s in stages] == ["classify", "pair", "karyogram", "karyogram"] and stages[-1][1:] == (3, 3)
    assert res is ses.result and len(calls) == 1 and len(calls[0]) == 46
    summary, labels0, probs0 = res["summary"], ses.labels.copy(), dict(ses.probs)

    lid = max(ses.ids, key=lambda i: (ses.labels == i).sum())
    (new,) = ses.cut(_across(ses.labels, lid), label=lid)
    token = CancelToken()
    with pytest.raises(Cancelled):
        run_sync(ses.update_job(cancel=token))
    assert calls[-1] == [lid, new] and ses.result is res  # classified, then stopped: the old result stands
    assert lid not in ses.probs and new not in ses.probs  # nothing half-done is cached as known
    assert ses.undo() == "cut"
    token = None
    again = ses.update()
    assert np.array_equal(ses.labels, labels0) and again["summary"] == summary and ses.last_classified == []
    assert set(ses.probs) == set(probs0)

    stopped = CancelToken()
    stopped.cancel()
    with pytest.raises(Cancelled):  # set before it starts: not even the pairing runs
        run_sync(ses.update_job(cancel=stopped))


def test_a_classifier_that_takes_the_cancel_token_gets_it(spread):
    """The model step itself can stop at Cancel (between batches), not only after it."""
    seen = []

    def classify(image, labels, ids, cancel=None):
        seen.append(cancel)
        return np.full((len(ids), 24), 1 / 24)

    token = CancelToken()
    run_sync(KaryotypeSession(spread["image"], spread["labels"], classify=classify).update_job(cancel=token))
    assert seen == [token]
    old_style = []
    run_sync(KaryotypeSession(spread["image"], spread["labels"],
                              classify=lambda image, labels, ids: old_style.append(ids) or np.full((len(ids), 24), 1 / 24)
                              ).update_job(cancel=token))
    assert len(old_style) == 1  # a classifier without the parameter is called as before


def test_the_builtin_classifier_stops_at_cancel(spread):
    from karyotype_utils import tiny_checkpoint

    from napari_cellclass.tasks.karyotype import model_classifier

    classify = model_classifier(str(tiny_checkpoint(__import__("pathlib").Path(__import__("tempfile").mkdtemp())
                                                    / "m.safetensors")), "cpu")
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        classify(spread["image"], spread["labels"], [1, 2, 3], cancel=token)
    assert classify(spread["image"], spread["labels"], [1, 2]).shape == (2, 24)


def test_straightened_and_plain_karyograms_and_no_selection_frame(spread):
    ses = KaryotypeSession(spread["image"], spread["labels"])
    assert ses.straighten  # the default: bent chromosomes laid out straight
    res = ses.update()
    bent = [lid for lid, o in res["orientation"].items() if o.straightened]
    assert res["straightened"] and bent
    k_straight = ses.karyogram
    ses.straighten = False
    plain = ses.update()
    assert not plain["straightened"] and not any(o.straightened for o in plain["orientation"].values())
    assert not np.array_equal(k_straight.image.shape, ses.karyogram.image.shape) or \
        not np.array_equal(k_straight.image, ses.karyogram.image)

    ses.straighten = True
    ses.selected = bent[0]
    framed = ses.update()
    blue = np.array([30, 90, 230], np.uint8)
    assert not (framed["karyogram"] == blue).all(-1).any()  # exports take this image: no frame in it
    shown = ses.karyogram.with_selection(bent[0])
    y0, x0, y1, x1 = ses.karyogram.items[bent[0]]
    assert (shown == blue).all(-1).sum() > 2 * ((y1 - y0) + (x1 - x0))
    assert (shown[y0 - 3, x0:x1] == blue).all()  # the frame hugs the selected chromosome
    assert ses.karyogram.with_selection(None) is ses.karyogram.image
