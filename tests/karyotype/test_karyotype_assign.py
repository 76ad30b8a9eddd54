"""Pairing assignment and ISCN summaries from constructed probability matrices."""
from __future__ import annotations

import numpy as np
import pytest

from napari_cellclass.errors import InputError
from napari_cellclass.karyotype.assign import CLASS_NAMES, assign_classes
from napari_cellclass.karyotype.iscn import iscn_summary

X, Y = 22, 23
NORMAL_AUTOSOMES = [c for c in range(22) for _ in range(2)]


def noisy_probs(classes, seed=0, noise=0.35):
    """Probability rows peaked on the true class, with Dirichlet noise mass elsewhere."""
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(24, 0.3), size=len(classes)) * noise
    p[np.arange(len(classes)), classes] += 1 - noise
    return p


@pytest.mark.parametrize("classes, expected", [
    (NORMAL_AUTOSOMES + [X, X], "46,XX"),
    (NORMAL_AUTOSOMES + [X, Y], "46,XY"),
    (NORMAL_AUTOSOMES + [X, X, 20], "47,XX,+21"),
    (NORMAL_AUTOSOMES + [X, Y, 20], "47,XY,+21"),
    (NORMAL_AUTOSOMES + [X], "45,X"),
])
def test_assignment_finds_karyotype(classes, expected):
    for seed in range(3):
        probs = noisy_probs(classes, seed)
        a = assign_classes(probs)
        s = iscn_summary(a.classes)
        assert s.text == expected
        assert s.abnormal == (expected not in ("46,XX", "46,XY"))
        assert (a.classes == np.asarray(classes)).mean() >= 0.95


def test_pairing_fixes_a_third_copy_the_classifier_gave():
    # 46,XY where the classifier calls one chromosome 19 "20" with moderate confidence:
    # a third 20 and a lone 19 are worse than moving it back to 19.
    classes = NORMAL_AUTOSOMES + [X, Y]
    probs = noisy_probs(classes, 1, noise=0.1)
    i = classes.index(18)  # a chromosome 19
    probs[i] = 0.01
    probs[i, 19], probs[i, 18] = 0.55, 0.3
    probs /= probs.sum(1, keepdims=True)
    a = assign_classes(probs)
    assert a.classes[i] == 18
    assert a.flagged[i] and "pairing" in a.reasons[i]
    assert iscn_summary(a.classes).text == "46,XY"


def test_extra_copy_is_flagged_and_user_fix_is_kept():
    classes = NORMAL_AUTOSOMES + [X, X, 20]
    probs = noisy_probs(classes, 2)
    a = assign_classes(probs)
    assert sum(s == "extra" for s in a.slot) == 1
    assert a.flagged[[k for k, s in enumerate(a.slot) if s == "extra"][0]]
    # the user says the last one is a 22: the pairing keeps it, and the others make room
    b = assign_classes(probs, fixed={len(classes) - 1: 21})
    assert b.classes[-1] == 21 and b.slot[-1] == "manual"
    assert iscn_summary(b.classes).text == "47,XX,+22"


def test_user_classes_are_kept_beyond_the_slots():
    classes = NORMAL_AUTOSOMES + [X, Y]
    probs = noisy_probs(classes, 4)
    fixed = {i: 20 for i in range(4)}  # the user calls four chromosomes "21"
    a = assign_classes(probs, fixed=fixed, sizes=np.ones(len(classes)))
    assert list(a.classes[:4]) == [20] * 4 and all(s == "manual" for s in a.slot[:4])
    everything = {i: 0 for i in range(len(classes))}  # all fixed: no slot left for anyone else
    assert (assign_classes(probs, fixed=everything).classes == 0).all()


def test_debris_is_rejected_not_forced_into_a_class():
    classes = NORMAL_AUTOSOMES + [X, Y]
    probs = np.vstack([noisy_probs(classes, 3, noise=0.05), np.full((3, 24), 1 / 24)])
    a = assign_classes(probs, reject_cost=4.0)
    assert iscn_summary(a.classes).text == "46,XY"
    assert all(s == "reject" for s in a.slot[-3:])


def test_iscn_strings_and_validation():
    assert iscn_summary(NORMAL_AUTOSOMES + [X, X, X]).text == "47,XXX"
    assert iscn_summary(NORMAL_AUTOSOMES[:-1] + [X, Y]).text == "45,XY,-22"
    assert iscn_summary([-1] + NORMAL_AUTOSOMES + [X, Y]).text == "46,XY"
    assert CLASS_NAMES[20] == "21" and CLASS_NAMES[X] == "X"
    with pytest.raises(InputError):
        assign_classes(np.ones((3, 5)))


def test_unconfident_findings_and_sex_chromosomes_are_written_with_a_question_mark():
    from napari_cellclass.karyotype.iscn import parse_iscn, same_karyotype

    trisomy = NORMAL_AUTOSOMES + [X, X, 20]
    sure = iscn_summary(trisomy, [False] * len(trisomy))
    assert sure.text == "47,XX,+21" and sure.confident and sure.valid and sure.headline == "47,XX,+21  (abnormal)"
    one_21_flagged = [False] * len(trisomy)
    one_21_flagged[-1] = True
    s = iscn_summary(trisomy, one_21_flagged)
    assert s.text == "47,XX,+?21" and not s.confident and s.n_flagged == 1 and s.headline.endswith("(1 to review)")
    male = NORMAL_AUTOSOMES + [X, Y]
    y_flagged = [False] * 45 + [True]
    assert iscn_summary(male, y_flagged).text == "46,X,?Y"  # the nucleus filed as Y is not asserted
    loss = NORMAL_AUTOSOMES[1:] + [X, Y]
    assert iscn_summary(loss).text == "45,XY,-1"
    assert iscn_summary(loss, [False] * 44 + [True]).text == "45,X,?Y,-?1"  # a loss is unsure while any is
    for text in ("47,XX,+?21", "46,X,?Y", "45,X,?Y,-?1", "46,XY"):
        assert parse_iscn(text).valid, text  # every string we write parses as ISCN 2024
    assert same_karyotype("47,XY,+21,+13", "47,XY,+13,+21") and not same_karyotype("46,XX", "46,XY")


def test_a_string_the_iscn_parser_refuses_is_not_shown_as_valid():
    s = iscn_summary(NORMAL_AUTOSOMES)  # no sex chromosome found at all
    assert not s.valid and not s.confident and "not valid ISCN" in s.headline
