"""Per-patient figures from the per-slice rows of :mod:`clinical` (records with ``patient_id``).

Definitions (also written into the report):
- Volumetric Dice of a patient = 2 TP / (2 TP + FP + FN) over every pixel of the patient's slices,
  which is the Dice of the slices' masks stacked in slice order into a volume. A patient without
  tumor and without predicted pixel has no Dice (NaN) and is left out of the mean.
- A patient with tumor is *detected* when at least one of its tumors is found (lesion matching as
  per slice); patient sensitivity = detected / patients with tumor. A patient without tumor with
  any detection is a false-positive patient.
- Per-patient lesion sensitivity = found / tumors over the patient's slices.
"""
import numpy as np

from . import metrics as M
from ..data.patients import natural_key


def patient_rows(rows):
    """One row per patient, in patient order; [] when no row carries a patient id."""
    by_patient = {}
    for r in rows:
        if r.get("patient_id") is not None:
            by_patient.setdefault(r["patient_id"], []).append(r)
    out = []
    for patient in sorted(by_patient, key=natural_key):
        part = by_patient[patient]
        tp, fp, fn = (sum(r[k] for r in part) for k in ("tp_px", "fp_px", "fn_px"))
        tumors, found = sum(r["tumors"] for r in part), sum(r["found"] for r in part)
        detections = sum(r["detections"] for r in part)
        out.append({
            "patient_id": patient, "slices": len(part),
            "tumor_slices": sum(1 for r in part if r["tumors"]),
            "tumors": tumors, "found": found, "detections": detections,
            "detected": bool(found) if tumors else None,
            "false_positive_patient": (detections > 0) if not tumors else None,
            "volumetric_dice": M.f1_score(tp, fp, fn), "lesion_sensitivity":
            M.pixel_recall(found, tumors - found),
            "true_volume_px": tp + fn, "predicted_volume_px": tp + fp,
            "slice_dice_mean": _mean([r["dice"] for r in part if r["tumors"]]),
        })
    return out


def summarize_patients(rows):
    """Split-level patient figures from :func:`patient_rows` (empty dict without patients)."""
    if not rows:
        return {}
    with_tumor = [r for r in rows if r["tumors"]]
    dice = [r["volumetric_dice"] for r in with_tumor if not np.isnan(r["volumetric_dice"])]
    without = [r for r in rows if not r["tumors"]]
    return {
        "patients": len(rows), "patients_with_tumor": len(with_tumor),
        "volumetric_dice_mean": _mean(dice),
        "volumetric_dice_sd": float(np.std(dice, ddof=1)) if len(dice) > 1 else float("nan"),
        "volumetric_dice_median": float(np.median(dice)) if dice else float("nan"),
        "volumetric_dice_min": float(min(dice)) if dice else float("nan"),
        "patients_detected": sum(1 for r in with_tumor if r["detected"]),
        "patient_sensitivity": M.pixel_recall(sum(1 for r in with_tumor if r["detected"]),
                                              sum(1 for r in with_tumor if not r["detected"])),
        "false_positive_patients": sum(1 for r in without if r["false_positive_patient"]),
    }


def _mean(values):
    return float(np.mean(values)) if len(values) else float("nan")
