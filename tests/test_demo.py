"""The README's first command on the phantom: it must learn, and write the table and pictures."""
import json
import os
import subprocess
import sys

import cv2

from conftest import REPO


def test_demo_learns_the_phantom_and_draws_predictions(phantom_demo):
    out, proc = phantom_demo
    assert "using the synthetic phantom data set" in proc.stdout
    assert "| bbox   | all" in proc.stdout and "| segm   | all" in proc.stdout

    metrics = json.load(open(out / "train" / "inference" / "tumorseg_test" / "metrics.json"))
    # Learnable: a short run gets clearly above chance on both tasks.
    assert metrics["bbox"]["AP50"] > 30, metrics["bbox"]
    assert metrics["segm"]["AP50"] > 30, metrics["segm"]
    # The full report of the test split comes with every training, from the same detections.
    report = json.load(open(out / "train" / "evaluation" / "tumorseg_test" / "metrics.json"))
    assert report["coco"]["bbox"]["AP50"] == metrics["bbox"]["AP50"]
    assert report["bootstrap"]["figures"]["bbox AP50"]["low"] is not None
    assert report["leak_free"] is not None
    assert "95% intervals (" in proc.stdout
    assert os.path.isfile(out / "train" / "evaluation" / "tumorseg_test" / "report.md")

    pictures = sorted(p for p in os.listdir(out / "predictions") if p[0].isdigit())
    assert len(pictures) == 8
    assert os.path.isfile(out / "predictions" / "contact_sheet.png")
    panel = cv2.imread(str(out / "predictions" / pictures[0]))
    assert panel.shape == (640 + 28, 4 * 640, 3)  # image | truth | prediction | probability


def test_readme_python_example_runs_on_the_demo_model(phantom_demo, tmp_path):
    """The README's Python block, run as written from a folder holding the demo's output."""
    import re
    out, _ = phantom_demo
    with open(os.path.join(REPO, "README.md")) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    assert blocks
    (tmp_path / "output").mkdir()
    os.symlink(out, tmp_path / "output" / "demo")
    os.symlink(os.path.join(REPO, "configs"), tmp_path / "configs")
    for code in blocks:
        proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.count("tumor(s)") == 4, proc.stdout
