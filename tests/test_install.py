"""The package installed as a user would (``pip install .``, not editable) works from another
directory: ``tumorseg --help`` lists the commands and a phantom ``tumorseg demo`` runs."""
import os
import subprocess
import sys
import sysconfig

from conftest import REPO


def test_installed_package_runs_the_demo_from_another_directory(tmp_path):
    # The wheel `pip install .` builds, installed into a fresh venv. --no-deps: the dependencies
    # come from this environment (PYTHONPATH below, which does not read its .pth files, so the
    # editable install of the package stays out of sight).
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(wheels), REPO], check=True, timeout=600, capture_output=True)
    venv = tmp_path / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python, tumorseg = str(venv / "bin" / "python"), str(venv / "bin" / "tumorseg")
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    *map(str, wheels.glob("*.whl"))], check=True, timeout=600, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = dict(os.environ, PYTHONPATH=sysconfig.get_paths()["purelib"])

    def run(*args, timeout=120):
        return subprocess.run(args, cwd=elsewhere, env=env, capture_output=True, text=True,
                              timeout=timeout)

    where = run(python, "-c", "import tumorseg_d2; print(tumorseg_d2.__file__)")
    assert where.stdout.strip().startswith(str(venv)), where.stdout + where.stderr
    usage = run(tumorseg, "--help")
    assert usage.returncode == 0, usage.stderr
    assert all(c in usage.stdout for c in ("train", "evaluate", "predict", "demo", "sweep"))
    example = run(tumorseg, "evaluate", "--help")
    assert "example:" in example.stdout and "tumorseg evaluate --config-file" in example.stdout
    demo = run(tumorseg, "demo", "--phantom", "--iters", "2", "--num-pictures", "1", "--output",
               "demo", "INPUT.MIN_SIZE_TEST", "160", "INPUT.MAX_SIZE_TEST", "160",
               "INPUT.MIN_SIZE_TRAIN", "(160,)", "SOLVER.IMS_PER_BATCH", "2",
               "DATALOADER.NUM_WORKERS", "0", timeout=900)
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-3000:]
    assert "| bbox" in demo.stdout
    assert (elsewhere / "demo" / "predictions" / "contact_sheet.png").is_file()
