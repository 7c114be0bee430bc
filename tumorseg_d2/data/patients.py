"""Patients: an id per image taken from its path, a deterministic split by patient, and grouped
k-fold cross-validation.

Slices of one patient are neighbouring sections of one volume and nearly alike, so a split by
slice puts the same tumor on both sides and scores memory, not generalisation. Every split here
keeps a patient's slices together. Images without a patient id form one group each (a split by
image, which the registration logs as such).
"""
import os
import re

import numpy as np

SPLITS = ("train", "valid", "test")


def natural_key(text):
    """Sort key that orders numbers by value: ``slice_9`` before ``slice_10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(text))]


def patient_of(path, pattern):
    """The patient id in ``path`` (relative to the dataset root): the first group of the regular
    expression ``pattern`` if it has one, else its whole match; None without a pattern. A path the
    pattern does not match raises, naming both."""
    if not pattern:
        return None
    found = re.search(pattern, path.replace(os.sep, "/"))
    if found is None:
        raise ValueError(f"DATASETS.SOURCE.PATIENT_PATTERN {pattern!r} does not match {path}: "
                         "give a regular expression that finds the patient id in every image "
                         "path (relative to the root), e.g. '^[^/]+' for one folder per patient.")
    return found.group(1) if found.groups() else found.group(0)


def slice_of(path, pattern=r"(\d+)$"):
    """The slice number in the file name (without extension), or None."""
    found = re.search(pattern, os.path.splitext(os.path.basename(path))[0]) if pattern else None
    return int(found.group(1) if found.groups() else found.group(0)) if found else None


def groups_of(records):
    """{group: [record indices]}, a group per patient (or per image without patient id), in
    sorted order."""
    groups = {}
    for i, r in enumerate(records):
        key = r.get("patient_id")
        groups.setdefault(f"image:{r['image_id']}" if key is None else key, []).append(i)
    return dict(sorted(groups.items(), key=lambda kv: natural_key(kv[0])))


def _counts(n, fractions):
    """Group counts per split that sum to ``n``; a split with a positive fraction gets at least
    one group when there are enough."""
    fractions = np.asarray(fractions, float) / sum(fractions)
    counts = np.floor(fractions * n).astype(int)
    for k in np.argsort(-(fractions * n - counts))[: n - counts.sum()]:
        counts[k] += 1
    for k in np.flatnonzero((counts == 0) & (fractions > 0)):
        donor = int(np.argmax(counts))
        if counts[donor] > 1:
            counts[donor] -= 1
            counts[k] += 1
    return counts


def split_groups(groups, fractions, seed):
    """{split name: [groups]}: the groups shuffled with ``seed`` and cut by ``fractions`` (train,
    valid, test). The same groups and seed give the same split on any machine."""
    names = list(groups)
    order = np.random.default_rng(seed).permutation(len(names))
    counts = _counts(len(names), fractions)
    cuts = np.cumsum(counts)[:-1]
    return {split: sorted((names[i] for i in part), key=natural_key)
            for split, part in zip(SPLITS, np.split(order, cuts))}


def fold_groups(groups, folds, fold, valid_fraction, seed):
    """{split name: [groups]} of cross-validation fold ``fold`` of ``folds``: the groups shuffled
    with ``seed`` and dealt into ``folds`` parts of near-equal size; part ``fold`` is the test
    split, and ``valid_fraction`` of all groups, drawn from the others, the validation split (for
    checkpoint choice and early stopping); the rest trains. Across the folds every group is tested
    exactly once."""
    names = list(groups)
    if not 2 <= folds <= len(names):
        raise ValueError(f"DATASETS.SOURCE.FOLDS is {folds}: cross-validation needs 2 to "
                         f"{len(names)} folds for {len(names)} patients.")
    order = np.random.default_rng(seed).permutation(len(names))
    test = order[fold::folds]
    rest = np.setdiff1d(order, test)
    rest = np.random.default_rng([seed, fold]).permutation(rest)
    n_valid = min(max(1, int(round(valid_fraction * len(names)))), len(rest) - 1)
    parts = {"train": rest[n_valid:], "valid": rest[:n_valid], "test": test}
    return {split: sorted((names[i] for i in part), key=natural_key) for split, part in parts.items()}


def select(records, groups, chosen):
    """The records of the ``chosen`` groups, in their original order."""
    keep = sorted(i for g in chosen for i in groups[g])
    return [records[i] for i in keep]


def crossing_patients(splits):
    """{patient: [split names]} of the patients whose slices lie in more than one of ``splits``
    ({split name: records}); records without patient id are not counted."""
    seen = {}
    for name, records in splits.items():
        for p in {r.get("patient_id") for r in records} - {None}:
            seen.setdefault(p, []).append(name)
    return {p: names for p, names in sorted(seen.items()) if len(names) > 1}
