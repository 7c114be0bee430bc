"""PNG plots for the evaluation report (matplotlib, headless)."""
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

RECALL_POINTS = np.linspace(0, 1, 101)  # COCOeval's recall thresholds
IOU_INDEX = {0.5: 0, 0.75: 5}  # positions in COCOeval's IoU thresholds 0.50:0.05:0.95


def pr_curves(path, curves, task):
    """Precision against recall at IoU 0.5 and 0.75, one line per class (COCOeval's curves)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    for ax, (iou, t) in zip(axes, IOU_INDEX.items()):
        for (curve_task, name), precision in curves.items():
            if curve_task != task or precision is None:
                continue
            p = precision[t]
            ax.plot(RECALL_POINTS, np.where(p < 0, np.nan, p), label=name)
        ax.set(title=f"{task}, IoU {iou}", xlabel="recall", xlim=(0, 1), ylim=(0, 1.02))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("precision")
    if axes[1].lines:
        axes[1].legend(loc="lower left")
    else:
        for ax in axes:
            ax.text(0.5, 0.5, "no detections", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def confusion_matrix(path, cm, labels):
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center",
                color="white" if v > cm.max() / 2 else "black")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel="prediction", ylabel="truth", title="Detections vs truth (instances)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def dice_histogram(path, rows):
    dice = [r["dice"] for r in rows if r["tumors"]]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.hist(dice, bins=np.linspace(0, 1, 21), color="tab:blue", edgecolor="white")
    ax.axvline(np.mean(dice), color="tab:red", label=f"mean {np.mean(dice):.3f}")
    ax.set(xlabel="Dice per image", ylabel="images", title=f"Per-image Dice ({len(dice)} images with a tumor)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_plots(output_dir, curves, cm, labels, rows):
    """Write every plot; returns {caption: file name}."""
    plots = {
        "Precision-recall, boxes": "pr_bbox.png",
        "Precision-recall, masks": "pr_segm.png",
        "Confusion matrix": "confusion_matrix.png",
        "Per-image Dice": "dice_histogram.png",
    }
    pr_curves(os.path.join(output_dir, plots["Precision-recall, boxes"]), curves, "bbox")
    pr_curves(os.path.join(output_dir, plots["Precision-recall, masks"]), curves, "segm")
    confusion_matrix(os.path.join(output_dir, plots["Confusion matrix"]), cm, labels)
    dice_histogram(os.path.join(output_dir, plots["Per-image Dice"]), rows)
    return plots
