"""The evaluation's words: report.md for a split, and the console table of COCO AP."""
import math
import os

from ..tables import fmt_value, markdown_table
from .bootstrap import FIGURES, PERCENT, point_value
from .clinical import NEAR_IOU
from .coco import COCO_STATS, METRICS


def format_per_class(results, class_names):
    """Console table of one task's AP figures per class."""
    rows = [[name] + [results.get(f"{m}-{name}", float("nan")) for m in METRICS]
            for name in class_names or []]
    return markdown_table(["class"] + list(METRICS), rows, aligned=True)


def format_results(results):
    """Console table of {task: {metric: value}} with one row per task and class."""
    rows, overlap = [], results.get("overlap")
    for task, res in results.items():
        if task == "overlap":
            continue
        rows.append([task, "all"] + [res.get(m, float("nan")) for m in METRICS])
        classes = sorted({k.split("-", 1)[1] for k in res if k.startswith("AP50-")})
        for name in classes:
            rows.append([task, name] + [res.get(f"{m}-{name}", float("nan")) for m in METRICS])
    table = markdown_table(["task", "class"] + list(METRICS), rows, aligned=True)
    if any(isinstance(v, float) and math.isnan(v) for row in rows for v in row):
        table += ("\nnan: no ground truth of that class or size in the split (APs: area < 32^2 px, "
                  "APm: 32^2-96^2, APl: > 96^2), so the figure is undefined.")
    if overlap:
        # specificity needs tumor-free slices and patient_Dice patient ids: else undefined (NaN).
        defined = {k: v for k, v in overlap.items() if v is not None and not math.isnan(v)}
        table += "\nAt score >= 0.5: " + ", ".join(f"{k} {v:.2f}%" for k, v in defined.items()) \
            + " (Dice and IoU: mean per image with a tumor; sensitivity: tumors found)."
    return table


def write_report(path, metrics, plots, worst=10):
    """report.md: definitions, COCO table, clinical tables, plots, worst images."""
    classes = metrics["confusion_matrix"]["labels"][1:]
    lines = [
        f"# Evaluation on `{metrics['dataset']}` ({metrics['images']} images)",
        "",
        f"Score threshold **{metrics['score_threshold']}** ({metrics['threshold_source']}); a "
        f"tumor counts as found when a detection overlaps it with box IoU >= {metrics['match_iou']}.",
        "",
        f"Test-time augmentation: {metrics.get('test_time_augmentation') or 'none'}.",
        "",
        "## COCO AP (%)",
        "",
        "AP is averaged over IoU 0.50:0.95; APs/APm/APl over tumors smaller than 32x32 px, between "
        "32x32 and 96x96, larger than 96x96; AR@k is the recall with at most k detections per "
        "image. No score threshold applies here. *n/a*: the split has no tumor of that class or "
        "size, so the figure is undefined (not zero).",
        "",
    ]
    coco_headers = ["task", "class", "AP", "AP50", "AP75", "APs", "APm", "APl"]
    rows = []
    for task, res in metrics["coco"].items():
        rows.append([task, "all"] + [fmt_value(res.get(m), True) for m in COCO_STATS[:6]]
                    + [fmt_value(res.get(m), True) for m in ("AR1", "AR10", "AR100")])
        for c in classes:
            rows.append([task, c] + [fmt_value(res.get(f"{m}-{c}"), True) for m in COCO_STATS[:6]]
                        + ["", "", fmt_value(res.get(f"AR100-{c}"), True)])
        rows.append([task, "any class"] + [fmt_value(res.get(f"agnostic/{m}"), True)
                                           for m in COCO_STATS])
    lines += [markdown_table(coco_headers + ["AR@1", "AR@10", "AR@100"], rows), ""]

    lines += ["## Detection and overlap at the threshold", "",
              "Lesion level: sensitivity = found / tumors, precision = found / detections; a "
              "missed tumor has *a detection near* when one (of its class, per class) overlaps it "
              f"with box IoU >= {NEAR_IOU} (TIDE's localization error: seen, another extent drawn)."
              " Slice level: a slice with tumor is a true positive when all its tumors are found; "
              "a slice without tumor with any detection is a false positive. Dice and IoU *per "
              "image* are means over the images that have a tumor (of that class); *pooled* counts"
              " every pixel of the split once, as do pixel precision, recall and F1. HD95 (pixels)"
              " follows MONAI: per image the larger of the two directed 95th percentiles of the "
              "boundary distances; *pooled* is medpy's (both directions pooled, a few percent "
              "lower). Both are means over the images where both masks are non-empty: an image "
              "whose tumor got no predicted pixel is left out (counted in *images without HD95*), "
              "so more misses can lower the mean.", ""]
    keys = [("tumors", "tumors"), ("found", "found"), ("missed", "missed"),
            (f"missed, a detection near (box IoU >= {NEAR_IOU})", "missed_mislocalized"),
            ("missed, no detection near", "missed_undetected"),
            ("false alarms", "false_alarms"), ("sensitivity", "sensitivity"),
            ("precision", "precision"), ("F1", "f1"), ("slice sensitivity", "slice_sensitivity"),
            ("slice specificity", "slice_specificity"), ("tumor-free slices", "tumor_free_slices"),
            ("false-positive slices", "false_positive_slices"),
            ("false alarms per tumor-free slice", "false_alarms_per_tumor_free_slice"),
            ("Dice per image", "dice_mean_per_image"),
            ("Dice pooled", "dice_pooled"), ("IoU per image", "iou_mean_per_image"),
            ("IoU pooled", "iou_pooled"), ("pixel precision", "pixel_precision"),
            ("pixel recall", "pixel_recall"), ("pixel F1", "pixel_f1"),
            ("HD95 (px, MONAI)", "hd95_mean"), ("HD95 pooled (px, medpy)", "hd95_pooled_mean"),
            ("images with HD95", "hd95_images"),
            ("images without HD95 (tumor, no predicted pixel)", "hd95_missing")]
    groups = list(metrics["clinical"])
    lines += [markdown_table(["figure"] + groups,
                     [[label] + [fmt_value(metrics["clinical"][g][k]) for g in groups]
                      for label, k in keys]), ""]
    conf = metrics["clinical"]["all classes"]["slice_confusion"]
    lines += ["Slices (all classes): " + ", ".join(f"{k} {v}" for k, v in conf.items()) + ".", ""]
    if conf["TN"] + conf["FP"] == 0:
        lines += ["Slice specificity is n/a: every slice of this split has a tumor, so there is no "
                  "slice on which a false alarm could be counted against a true negative.", ""]

    lines += patient_section(metrics)
    lines += honest_section(metrics)
    lines += ["## Plots", ""] + [f"**{caption}**\n\n![{caption}]({name})\n"
                                 for caption, name in plots.items()]
    ordered = sorted(metrics["per_image"], key=lambda r: (r["dice"], str(r["file_name"])))[:worst]
    lines += [f"## The {len(ordered)} images with the lowest Dice", "",
              markdown_table(["file", "tumors", "detections", "outcome", "Dice", "IoU"],
                     [[os.path.basename(r["file_name"]), str(r["tumors"]), str(r["detections"]),
                       r["outcome"], fmt_value(r["dice"]), fmt_value(r["iou"])] for r in ordered]), ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def patient_section(metrics):
    """Report lines of the per-patient figures (none when the records carry no patient id)."""
    summary, rows = metrics.get("patients"), metrics.get("per_patient")
    if not summary:
        return []
    lines = ["## Patients", "",
             "Volumetric Dice: every pixel of a patient's slices counted once (the slices' masks "
             "stacked into a volume); the mean, sd, median and minimum are over the patients with "
             "a tumor. A patient with tumor is detected when at least one of its tumors is found.",
             "", f"{summary['patients']} patients ({summary['patients_with_tumor']} with tumor): "
             f"volumetric Dice {fmt_value(summary['volumetric_dice_mean'])} +/- "
             f"{fmt_value(summary['volumetric_dice_sd'])} (median "
             f"{fmt_value(summary['volumetric_dice_median'])}, min "
             f"{fmt_value(summary['volumetric_dice_min'])}); patients detected "
             f"{summary['patients_detected']}/{summary['patients_with_tumor']}; false-positive "
             f"patients (no tumor, a detection) {summary['false_positive_patients']}.", ""]
    lines += [markdown_table(
        ["patient", "slices", "tumor slices", "tumors", "found", "detections",
         "volumetric Dice", "slice Dice (tumor slices)", "true px", "predicted px"],
        [[fmt_value(r[k]) for k in ("patient_id", "slices", "tumor_slices", "tumors", "found",
                                     "detections", "volumetric_dice", "slice_dice_mean",
                                     "true_volume_px", "predicted_volume_px")] for r in rows]), ""]
    return lines


def summary_lines(name, metrics, output):
    """The console summary of an evaluation: headline figures at the threshold, their intervals
    and the leak-free subset's (what ``tumorseg evaluate`` prints and training logs)."""
    summary = metrics["clinical"]["all classes"]
    lines = [f"{name}: bbox AP50 {metrics['coco']['bbox']['AP50']:.2f}, segm AP50 "
             f"{metrics['coco']['segm']['AP50']:.2f}, Dice {summary['dice_mean_per_image']:.3f} "
             f"(per image), sensitivity {summary['sensitivity']:.3f} at threshold "
             f"{metrics['score_threshold']}; report: {os.path.join(output, 'report.md')}"]
    boot = metrics["bootstrap"]
    if boot.get("figures"):
        # Undefined figures (no tumor-free slice, no patient ids) are left to report.md.
        texts = [f"{f} {interval_text(f, boot['figures'][f])}" for f in
                 ("bbox AP50", "segm AP50", "Dice", "lesion sensitivity", "slice specificity",
                  "patient Dice") if (boot["figures"].get(f) or {}).get("value") is not None]
        lines.append(f"{boot['level']:.0%} intervals ({boot['units']} {boot['unit']}s resampled; "
                     "AP of any tumor, class-agnostic): " + ", ".join(texts))
    free = metrics["leak_free"]
    if free and free["leaking_images"]:
        figures = (free["bootstrap"] or {}).get("figures") or {}
        texts = [f"{f} {interval_text(f, figures.get(f) or {'value': point_value(free, f)})}"
                 for f in ("bbox AP50", "segm AP50", "Dice")]
        lines.append(f"Leak-free subset ({free['images']} of {metrics['images']} slices): "
                     + ", ".join(texts))
    return lines


def interval_text(figure, entry):
    """"value [low, high]" of one figure of a bootstrap section (n/a where undefined)."""
    if not entry or entry.get("value") is None:
        return "n/a"
    pct = figure in PERCENT
    text = fmt_value(entry["value"], pct)
    if entry.get("low") is not None:
        text += f" [{fmt_value(entry['low'], pct)}, {fmt_value(entry['high'], pct)}]"
    return text


def honest_section(metrics):
    """Report lines of the confidence intervals and the leak-free subset."""
    boot, free = metrics.get("bootstrap"), metrics.get("leak_free")
    if not boot:
        return []
    unit = {"patient": "patients", "pseudo-patient": "pseudo-patients (chains of near-duplicate "
            "slices)"}.get(boot["unit"], boot["unit"])
    lines = ["## Uncertainty and leakage", ""]
    if boot.get("figures"):
        lines += [f"In brackets: the {boot['level']:.0%} bootstrap interval ({boot['method']}) over "
                  f"the split's {boot['units']} {unit}, resampled with replacement "
                  f"{boot['resamples']} times (seed {boot['seed']}); where {boot['method']} is "
                  "undefined (every resample alike, or the figure undefined in some resamples), "
                  "the percentile interval of the resamples that define it. AP figures are class-agnostic (any tumor), in %; "
                  "Dice is the mean over tumor slices; patient Dice the mean volumetric Dice of "
                  "the patients with tumor.", ""]
    else:
        lines += ["No intervals: TEST.BOOTSTRAP.RESAMPLES is 0.", ""]
    if free and not free["leaking_images"]:
        lines += [f"Every slice of the split is leak-free: {free['definition']}.", ""]
        free = None
    elif free:
        lines += [f"Leak-free subset: the {free['images']} slices of {metrics['images']} that are "
                  f"{free['definition']} ({free['leaking_images']} slices leak).", ""]
    else:
        lines += ["No leak-free subset: the evaluation was given no training or validation "
                  "dataset to compare against.", ""]
    headers = ["figure", f"whole split ({metrics['images']} slices)"]
    if free:
        headers.append(f"leak-free subset ({free['images']} slices)")
    rows = []
    for figure in FIGURES:
        row = [figure, interval_text(figure, (boot.get("figures") or {}).get(figure)
                                     or {"value": point_value(metrics, figure)})]
        if free:
            fb = (free.get("bootstrap") or {}).get("figures") or {}
            row.append(interval_text(figure, fb.get(figure) or {"value": point_value(free, figure)}))
        rows.append(row)
    return lines + [markdown_table(headers, rows), ""] + leak_by_class(metrics, free)


def leak_by_class(metrics, free):
    """Report lines of AP50 by class on the whole split, its leak-free slices and the rest (the
    leaking slices), when the split has both."""
    if not free or not free.get("coco") or not free.get("leaking_coco"):
        return []
    parts = (metrics["coco"], free["coco"], free["leaking_coco"])
    names = [k[len("AP50-"):] for k in metrics["coco"]["bbox"] if k.startswith("AP50-")]
    rows = [[task, name] + [fmt_value(p[task].get(key), True) for p in parts]
            for task in ("bbox", "segm") if task in metrics["coco"]
            for name, key in [("any tumor", "agnostic/AP50")]
            + [(f"class {n}", f"AP50-{n}") for n in names]]
    return [f"AP50 by class on each part (the leaking slices are those a model may have seen "
            f"near-identical in {', '.join(free['references'])}):", "",
            markdown_table(["task", "class", f"whole split ({metrics['images']})",
                            f"leak-free ({free['images']})",
                            f"leaking ({free['leaking_images']})"], rows), ""]

