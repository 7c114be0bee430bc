"""The README's first command on the phantom: it must learn, and write the table and pictures."""
import json
import os

import cv2


def test_demo_learns_the_phantom_and_draws_predictions(phantom_demo):
    out, proc = phantom_demo
    assert "using the synthetic phantom data set" in proc.stdout
    assert "| bbox   | all" in proc.stdout and "| segm   | all" in proc.stdout

    metrics = json.load(open(out / "train" / "inference" / "tumorseg_test" / "metrics.json"))
    # Learnable: a short run gets clearly above chance on both tasks.
    assert metrics["bbox"]["AP50"] > 30, metrics["bbox"]
    assert metrics["segm"]["AP50"] > 30, metrics["segm"]

    pictures = sorted(p for p in os.listdir(out / "predictions") if p[0].isdigit())
    assert len(pictures) == 8
    assert os.path.isfile(out / "predictions" / "contact_sheet.png")
    panel = cv2.imread(str(out / "predictions" / pictures[0]))
    assert panel.shape == (640 + 28, 4 * 640, 3)  # image | truth | prediction | probability
