"""Which evaluated slices the model may have seen in training: patients, pseudo-patients and the
leak-free part of a split.

Definitions (also written into the report):
- With patient ids (every record has ``patient_id``) a slice *leaks* when its patient has a slice
  in one of the reference datasets (those that trained the model or chose its checkpoint).
- Without them, slices are grouped into *pseudo-patients*: the connected components of the graph
  whose edges join near-duplicate images (256-bit difference hash, similarity >= the dataset
  checker's ``NEAR_DUPLICATE_SIMILARITY``), built over the evaluated split and the reference
  datasets together. A slice leaks when its pseudo-patient has a slice in a reference dataset. The
  chain makes this stricter than "has a near duplicate there": a run of neighbouring slices that
  reaches the training set leaks as a whole, as a patient would.
- The *leak-free subset* is the evaluated slices that do not leak. Patients or pseudo-patients are
  also the units that the bootstrap resamples (:mod:`tumorseg_d2.evaluation.bootstrap`).
"""
import logging
import os
from dataclasses import dataclass
from multiprocessing import Pool

import numpy as np
from detectron2.data import DatasetCatalog
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ..files import load_json, write_json
from .check import NEAR_DUPLICATE_SIMILARITY, read_image, similar_pairs

logger = logging.getLogger("tumorseg_d2")


@dataclass
class Leakage:
    unit_kind: str  # "patient" or "pseudo-patient": what groups the split's slices
    units: dict  # image id -> its patient or pseudo-patient
    leak_free: list  # image ids of the evaluated slices that do not leak; None without references
    references: tuple  # the datasets compared against
    definition: str  # one sentence for the report
    reference_units: list = None  # the patient or pseudo-patient of each of their records


def leakage(dataset_name, references=(), min_similarity=NEAR_DUPLICATE_SIMILARITY):
    """The :class:`Leakage` of a registered split against the registered ``references``."""
    records = DatasetCatalog.get(dataset_name)
    references, reference_records = readable_references(references)
    if records and all(r.get("patient_id") is not None for r in records):
        seen = {r.get("patient_id") for r in reference_records}
        units = {r["image_id"]: r["patient_id"] for r in records}
        definition = (f"slices whose patient has no slice in {', '.join(references)}"
                      if references else "")
        return Leakage("patient", units, [r["image_id"] for r in records
                                          if r["patient_id"] not in seen] if references else None,
                       references, definition, [r.get("patient_id") for r in reference_records])
    labels = pseudo_patients([r["file_name"] for r in records + reference_records], min_similarity)
    own, theirs = labels[:len(records)], set(labels[len(records):])
    units = {r["image_id"]: f"pseudo-patient {k}" for r, k in zip(records, own)}
    free = [r["image_id"] for r, k in zip(records, own) if k not in theirs]
    definition = (f"slices whose pseudo-patient (chain of near duplicates, difference-hash "
                  f"similarity >= {min_similarity}) has no slice in {', '.join(references)}"
                  if references else "")
    return Leakage("pseudo-patient", units, free if references else None, references, definition,
                   [f"pseudo-patient {k}" for k in labels[len(records):]])


def readable_references(names):
    """(names, records) of the reference datasets that can be read; one that cannot (its files
    are elsewhere, as when only the test split was copied) is left out with a warning, so that
    the evaluation still runs."""
    read, records = [], []
    for name in dict.fromkeys(names):
        try:
            records += DatasetCatalog.get(name)
            read.append(name)
        except (OSError, ValueError) as e:
            logger.warning(f"Leak-free subset: {name} cannot be read, so it is not compared "
                           f"against ({type(e).__name__}: {e}).")
    return tuple(read), records


def pseudo_patients(files, min_similarity=NEAR_DUPLICATE_SIMILARITY, workers=2):
    """The component label of each file in the near-duplicate graph (an unreadable file is a
    component of its own)."""
    hashes = fingerprints(files, workers)
    readable = [i for i, h in enumerate(hashes) if h is not None]
    pairs = similar_pairs([hashes[i] for i in readable], min_similarity) if readable else []
    rows = [readable[i] for i, _, _ in pairs]
    cols = [readable[j] for _, j, _ in pairs]
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(files), len(files)))
    return connected_components(graph, directed=False)[1].tolist()


def fingerprints(files, workers=2):
    """The difference hash of each file (None where unreadable). Each file's hash is computed once
    while it stays unchanged (same path, size and modification time): kept for the process and in
    :func:`fingerprint_cache_path`, so that later evaluations of the same data skip decoding it."""
    keys = [_file_key(f) for f in files]
    if not _HASHES:
        _HASHES.update(_read_cache())
    missing = sorted({k for k in keys if k not in _HASHES})
    if missing:
        logger.info(f"Fingerprinting {len(missing)} images for near duplicates ...")
        with Pool(workers) as pool:
            decoded = pool.map(read_image, [k[0] for k in missing], chunksize=16)
        _HASHES.update({k: d[3] for k, d in zip(missing, decoded)})
        _write_cache()
    return [_HASHES[k] for k in keys]


_HASHES = {}  # (path, mtime_ns, size) -> bit array, or None for an unreadable file


def fingerprint_cache_path():
    """$TUMORSEG_CACHE/fingerprints.json, by default under ~/.cache/tumorseg_d2."""
    root = os.environ.get("TUMORSEG_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tumorseg_d2")
    return os.path.join(root, "fingerprints.json")


def _read_cache():
    path = fingerprint_cache_path()
    try:
        rows = load_json(path) if os.path.isfile(path) else []
        return {(p, t, n): None if h is None else np.unpackbits(
                    np.frombuffer(bytes.fromhex(h), np.uint8)).astype(bool)
                for p, t, n, h in rows if t is not None}
    except (OSError, ValueError, TypeError) as e:  # a damaged cache is only a slower run
        logger.warning(f"Ignoring the fingerprint cache {path} ({type(e).__name__}: {e}); it "
                       "is rewritten.")
        return {}


def _write_cache():
    rows = [[p, t, n, None if h is None else np.packbits(h).tobytes().hex()]
            for (p, t, n), h in _HASHES.items() if t is not None]
    try:
        write_json(fingerprint_cache_path(), rows, indent=None)
    except OSError as e:
        logger.warning(f"The fingerprint cache could not be written ({e}); set TUMORSEG_CACHE "
                       "to a writable folder to keep fingerprints between runs.")


def _file_key(path):
    try:
        stat = os.stat(path)
        return path, stat.st_mtime_ns, stat.st_size
    except OSError:
        return path, None, None
