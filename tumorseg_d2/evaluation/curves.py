"""Training curves: Detectron2's metrics.json of one or several runs, read and drawn on shared
axes (iterations trained)."""
import json
import math
import os

from .plots import plt


def read_metrics(run_dir):
    """{key: [(training iterations, value)]} from a run's metrics.json (one JSON object per line),
    sorted. The x value is the number of iterations trained when the value was logged (Detectron2
    logs the 0-based index of the last one, so index + 1), as on the sweep's plots. Where a run
    resumed by an older version logged an iteration twice, the later value is kept."""
    path = os.path.join(run_dir, "metrics.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: pass the OUTPUT_DIR of a training run")
    entries = []
    with open(path) as f:
        for line in f:
            try:
                entry = json.loads(line)
                entries.append((int(entry["iteration"]) + 1, entry))
            except (ValueError, KeyError, TypeError):
                continue  # blank, or cut short by a kill
    # Detectron2 logs the evaluation after the last iteration at index MAX_ITER, one past the
    # last training row: it belongs at MAX_ITER iterations trained.
    trained = max((done for done, e in entries if "total_loss" in e), default=None)
    series = {}
    for done, entry in entries:
        done = min(done, trained) if trained is not None else done
        for k, v in entry.items():
            if k != "iteration" and isinstance(v, (int, float)):
                series.setdefault(k, {})[done] = v
    return {k: sorted(points.items()) for k, points in series.items()}


def curve_keys(series_by_run):
    """The curves worth a panel: losses, learning rate, validation loss and validation AP."""
    keys = set().union(*series_by_run.values())
    wanted = [k for k in keys if k == "total_loss" or k.startswith("loss_") or k == "lr"
              or k == "validation_loss" or k.startswith("val_")
              or k.split("/")[-1] in ("AP", "AP50", "AP75")]
    order = lambda k: (not k.startswith(("total", "loss")), k.startswith("val"), "/" in k, k)
    return sorted(wanted, key=order)


def plot_series(ax, series, xlabel="training iterations"):
    """One line per label of ``series`` ({label: [(x, y)]}; empty ones skipped), with markers when
    there are few points, on a grid: the curve drawing of every training and sweep plot."""
    for label, points in series.items():
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o" if len(xs) < 15 else None, ms=3, label=label)
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)


def plot_runs(run_dirs, output):
    """One PNG at ``output``: a panel per curve (:func:`curve_keys`), the runs overlaid; returns
    the curves drawn."""
    runs = {os.path.basename(os.path.normpath(d)) or d: read_metrics(d) for d in run_dirs}
    keys = curve_keys(runs)
    cols = 3
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.2 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        plot_series(ax, {name: series.get(key, []) for name, series in runs.items()})
        ax.set_title(key)
        if key.startswith(("total", "loss", "val")):
            ax.set_yscale("log")
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    axes.flat[0].legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    fig.savefig(output, dpi=90)
    plt.close(fig)
    return keys
