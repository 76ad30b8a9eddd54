"""ISCN numerical karyotype summary (``46,XY``, ``47,XX,+21``, ``45,X``), checked by an ISCN 2024 parser.

Only numerical findings are described: structural rearrangements cannot be seen by
a per-chromosome classifier, so the summary never claims them.

Honest uncertainty: a finding (``+N``, ``-N``) or a sex chromosome is asserted only
when the chromosomes behind it are confident (not flagged for review); otherwise it
is written with ISCN's ``?`` for a questionable identification (``47,XX,+?21``,
``46,X,?Y``).  Every string is parsed and validated by ``iscn-authenticator`` (an
ISCN 2024 parser); a string it refuses is reported, never shown as if it were right.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .assign import N_CLASSES, X_INDEX, Y_INDEX


@dataclass
class KaryotypeSummary:
    text: str  # e.g. "47,XX,+21" or "47,XX,+?21"
    count: int
    abnormal: bool
    findings: list[str]  # e.g. ["+21"], ["count 45 (expected 46)"]
    n_flagged: int = 0  # chromosomes that need review
    confident: bool = True  # no chromosome flagged: the headline may be shown as settled
    valid: bool = True  # the ISCN 2024 parser accepts ``text``
    errors: list[str] = field(default_factory=list)  # what the parser refused

    @property
    def headline(self) -> str:
        """The string plus what still needs a person: ``46,XY`` or ``46,XY  (3 to review)``."""
        if not self.valid:
            return f"{self.text}  (not valid ISCN: {'; '.join(self.errors)[:80]})"
        if self.n_flagged:
            return f"{self.text}  ({self.n_flagged} to review)"
        return self.text + ("  (abnormal)" if self.abnormal else "")


def parse_iscn(text: str) -> Any:
    """The ISCN 2024 parse of ``text`` (``iscn_authenticator`` result: ``valid``, ``errors``, ``parsed``)."""
    from iscn_authenticator import validate_karyotype

    return validate_karyotype(text)


def same_karyotype(a: str, b: str) -> bool:
    """True when two ISCN strings parse to the same count, sex chromosomes and findings (order-free)."""
    ra, rb = parse_iscn(a), parse_iscn(b)
    if not (ra.valid and rb.valid):
        return a.strip() == b.strip()
    pa, pb = ra.parsed, rb.parsed
    return (pa.chromosome_count == pb.chromosome_count
            and sorted(pa.sex_chromosomes or "") == sorted(pb.sex_chromosomes or "")
            and sorted(x.raw for x in pa.abnormalities) == sorted(x.raw for x in pb.abnormalities))


def iscn_summary(classes: np.ndarray | list[int], flagged: np.ndarray | list[bool] | None = None) -> KaryotypeSummary:
    """Summarise assigned classes (0..23, -1 = rejected, ignored) as an ISCN string.

    ``flagged`` (one bool per entry of ``classes``) marks chromosomes that need review:
    a gain is questionable when any chromosome of its class is flagged, a loss when
    any chromosome of the spread is (the missing one may be hidden under another
    name), a sex chromosome when it is flagged itself.
    """
    cls_all = np.asarray(classes, dtype=int)
    flags_all = np.zeros(len(cls_all), bool) if flagged is None else np.asarray(flagged, bool).reshape(-1)
    if len(flags_all) != len(cls_all):
        raise ValueError(f"flagged has {len(flags_all)} entries for {len(cls_all)} chromosomes")
    keep = cls_all >= 0
    cls, flags = cls_all[keep], flags_all[keep]
    counts = np.bincount(cls, minlength=N_CLASSES)
    n = int(counts.sum())
    n_flagged = int(flags.sum())
    unsure = np.bincount(cls[flags], minlength=N_CLASSES) if n_flagged else np.zeros(N_CLASSES, int)

    sure_sex = "X" * int(counts[X_INDEX] - unsure[X_INDEX]) + "Y" * int(counts[Y_INDEX] - unsure[Y_INDEX])
    unsure_sex = ["?X"] * int(unsure[X_INDEX]) + ["?Y"] * int(unsure[Y_INDEX])
    if not sure_sex and unsure_sex:  # ISCN needs one sex chromosome first: the first found leads, the rest are "?"
        sure_sex = unsure_sex.pop(0)[1:]
    sex = "X" * int(counts[X_INDEX]) + "Y" * int(counts[Y_INDEX])
    findings: list[str] = []
    for c in range(22):
        k = int(counts[c])
        if k > 2:
            findings += [f"+?{c + 1}" if unsure[c] else f"+{c + 1}"] * (k - 2)
        elif k < 2:
            findings += [f"-?{c + 1}" if n_flagged else f"-{c + 1}"] * (2 - k)
    head = sure_sex or ("" if unsure_sex else "--")
    text = ",".join([str(n)] + ([head] if head else []) + unsure_sex + findings)
    abnormal = n != 46 or bool(findings) or sex not in ("XX", "XY")
    notes = list(findings)
    if n != 46:
        notes.insert(0, f"count {n} (expected 46)")
    if sex not in ("XX", "XY"):
        notes.append(f"sex chromosomes {sex or 'none'}")
    if head != "--":  # "--" (no sex chromosome found) is our own marker, not ISCN
        res = parse_iscn(text)
        valid, errors = bool(res.valid), [str(e) for e in res.errors]
    else:
        valid, errors = False, ["no sex chromosome was identified"]
    return KaryotypeSummary(text=text, count=n, abnormal=abnormal, findings=notes, n_flagged=n_flagged,
                            confident=n_flagged == 0 and valid, valid=valid, errors=errors)
