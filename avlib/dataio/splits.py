"""Identity-disjoint train/val/test splits, stratified by the categories an identity has.
A fake belongs to the split of its source identity, so no face is seen in two splits."""
from __future__ import annotations

import numpy as np
import pandas as pd

SPLIT_NAMES = ("train", "val", "test")


class SplitLeakError(RuntimeError):
    """An identity appears in more than one split."""


def assign_splits(records: pd.DataFrame, *, val_fraction: float = 0.15, test_fraction: float = 0.15,
                  seed: int = 0) -> pd.DataFrame:
    """Return a copy of `records` with a `split` column.

    Identities are grouped by the set of categories they have, and by their generator style
    where the corpus names one (column `style`): their stratum. They are shuffled with `seed`
    within each stratum and cut by the fractions, so each split gets every kind of identity in
    the proportions of the corpus. Without the style, a validation split of 9 identities drew 5
    of them from one style of 3, whose real clips score highest: the threshold chosen there
    called half of the test fakes real. Every split gets at least one identity when there are
    three or more."""
    rng = np.random.default_rng(seed)
    keys = records["category"].astype(str)
    if "style" in records and records["style"].astype(str).str.len().gt(0).any():
        keys = records["style"].astype(str) + ":" + keys
    strata = keys.groupby(records["identity"]).agg(lambda c: "+".join(sorted(set(c))))
    split_of = {}
    for _, idents in sorted(strata.groupby(strata).groups.items()):
        idents = sorted(idents)
        rng.shuffle(idents)
        n = len(idents)
        n_test = int(round(n * test_fraction))
        n_val = int(round(n * val_fraction))
        for i, ident in enumerate(idents):
            split_of[ident] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    out = records.copy()
    out["split"] = out["identity"].map(split_of)
    _ensure_nonempty(out, rng, val_fraction, test_fraction)
    audit_splits(out)
    return out


def _ensure_nonempty(frame: pd.DataFrame, rng, val_fraction: float, test_fraction: float) -> None:
    """Small corpora: move one training identity into an empty val/test split."""
    for name, fraction in (("test", test_fraction), ("val", val_fraction)):
        if fraction <= 0 or (frame["split"] == name).any():
            continue
        train_ids = sorted(frame.loc[frame["split"] == "train", "identity"].unique())
        if len(train_ids) > 1:
            frame.loc[frame["identity"] == train_ids[int(rng.integers(len(train_ids)))], "split"] = name


def audit_splits(frame: pd.DataFrame) -> None:
    """Raise SplitLeakError naming the identities found in more than one split."""
    per_identity = frame.groupby("identity")["split"].nunique()
    leaked = per_identity[per_identity > 1]
    if len(leaked):
        raise SplitLeakError(f"{len(leaked)} identities appear in more than one split "
                             f"(e.g. {', '.join(map(str, leaked.index[:5]))})")


def split_summary(frame: pd.DataFrame) -> dict:
    """{split: {category: clips}} for reports."""
    table = frame.groupby(["split", "category"]).size()
    return {s: {c: int(n) for c, n in table[s].items()} for s in table.index.levels[0]}
