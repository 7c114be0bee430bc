"""The README's first command on the phantom: it must learn, and write the table and pictures."""
import json
import os

import cv2

from conftest import run_tool

# Calibrated so the run takes a few minutes on 2 CPU cores; see README "Results" for the full demo.
DEMO_ITERS = "60"


def test_demo_learns_the_phantom_and_draws_predictions(tmp_path):
    out = tmp_path / "demo"
    proc = run_tool("demo.py", "--phantom", "--output", str(out), "--iters", DEMO_ITERS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "using the synthetic phantom data set" in proc.stdout
    assert "| bbox   | all" in proc.stdout and "| segm   | all" in proc.stdout

    metrics = json.load(open(out / "train" / "inference" / "tumorseg_test" / "metrics.json"))
    # Learnable: a short run gets clearly above chance on both tasks.
    assert metrics["bbox"]["AP50"] > 30, metrics["bbox"]
    assert metrics["segm"]["AP50"] > 30, metrics["segm"]

    pictures = sorted(os.listdir(out / "predictions"))
    assert len(pictures) == 8
    panel = cv2.imread(str(out / "predictions" / pictures[0]))
    assert panel.shape == (640 + 28, 2 * 640, 3)  # label band over truth | prediction
    # Left half is the image with ground truth drawn over it: it must differ from the image.
    image = cv2.imread(str(out / "phantom" / "tumorseg" / "test" / (pictures[0][:-4] + ".jpg")))
    assert (cv2.absdiff(panel[28:, :640], image) > 40).any()
