#!/usr/bin/env python
"""Build and install a pure-Python Detectron2 v0.6 wheel (no C++/CUDA extension).

Detectron2 is not published on PyPI. The sdist ``pb1-detectron2==0.6`` carries the official v0.6
Python sources (identical to the upstream v0.6 tag) but not the C++ sources, so ``pip install`` of it
fails while compiling. This script, run with the interpreter of the target environment:

1. keeps a working Detectron2 that is already installed (a user's own build of upstream, or a
   previous run of this script) and exits;
2. downloads the sdist with pip, verifying its pinned sha256 (cached under ``.cache/detectron2``);
3. patches the few places where v0.6 predates today's libraries (see PATCHES; each patch must
   apply, so a different source tree fails loudly instead of half-working);
4. adds ``detectron2/_C.py`` (install/detectron2_C_shim.py): the compiled ops Mask R-CNN R50-FPN does not
   need raise NotImplementedError naming the op;
5. builds a ``detectron2`` wheel with a minimal setup.py and installs it with ``--no-deps`` (the
   dependencies come from requirements.lock).

Usage:  python install/install_detectron2.py [--force] [--cache-dir DIR] [--wheel-dir DIR]

``--wheel-dir DIR`` builds the wheel into DIR and installs nothing: the wheel is pure Python, so it
installs on another machine and Python (install/gpu_bundle.py carries it to a GPU machine).
"""
import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import textwrap

SDIST = "pb1-detectron2==0.6"
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
# The local version label marks wheels built by this script, so reruns can recognise them.
WHEEL_VERSION = "0.6+tumorseg.pure2"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIM = os.path.join(REPO_ROOT, "install", "detectron2_C_shim.py")

# (file, old, new): exact substitutions. Decisions are explained in README "Detectron2 v0.6 on
# today's libraries".
PATCHES = [
    # v0.6 defaults merge_from_file to allow_unsafe=True: a config whose safe parse fails is then
    # read with yaml.unsafe_load, so a !!python/object/apply tag in a config someone sent runs code.
    ("detectron2/config/config.py",
     "def merge_from_file(self, cfg_filename: str, allow_unsafe: bool = True)",
     "def merge_from_file(self, cfg_filename: str, allow_unsafe: bool = False)"),
    # Pillow 10 removed Image.LINEAR (an alias of BILINEAR). We keep a current Pillow rather than pin
    # an old one with unfixed decoder CVEs, because this tool opens images it did not make.
    ("detectron2/data/transforms/transform.py", "interp=Image.LINEAR", "interp=Image.BILINEAR"),
    # pkg_resources is gone from recent setuptools; the model-zoo configs ship inside the package.
    ("detectron2/model_zoo/model_zoo.py", "import pkg_resources\n", ""),
    (
        "detectron2/model_zoo/model_zoo.py",
        'cfg_file = pkg_resources.resource_filename(\n        "detectron2.model_zoo", '
        'os.path.join("configs", config_path)\n    )',
        'cfg_file = os.path.join(os.path.dirname(__file__), "configs", config_path)',
    ),
]
# NumPy 1.24 removed these aliases of the builtins; they are used in data loading, masks,
# visualization and evaluation code.
NUMPY_ALIASES = re.compile(r"\bnp\.(bool|int|float|str|object)\b(?![_\d])")

SETUP_PY = textwrap.dedent(
    """
    from setuptools import find_packages, setup

    setup(
        name="detectron2",
        version="{version}",
        description="Detectron2 v0.6 Python sources (pure-Python build made by tumorseg-d2)",
        url="https://github.com/facebookresearch/detectron2",
        license="Apache-2.0",
        packages=find_packages(include=("detectron2", "detectron2.*")),
        package_data={{"detectron2.model_zoo": ["configs/**/*.yaml", "configs/**/*.py"]}},
        python_requires=">=3.8",
    )
    """
)


def log(msg):
    print(f"[install_detectron2] {msg}", flush=True)


def installed_detectron2():
    """Return (version, is_ours) of an importable, working detectron2, or None."""
    if importlib.util.find_spec("detectron2") is None:
        return None
    probe = (
        "import detectron2, detectron2.layers, detectron2.modeling, detectron2.evaluation;"
        "print(detectron2.__version__)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    if out.returncode != 0:
        log("an installed detectron2 does not import; it will be replaced:\n" + out.stderr[-2000:])
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        dist_version = version("detectron2")
    except PackageNotFoundError:  # e.g. a source checkout on PYTHONPATH
        dist_version = out.stdout.strip()
    return dist_version, dist_version == WHEEL_VERSION


def download_sdist(cache_dir):
    os.makedirs(cache_dir, exist_ok=True)
    target = os.path.join(cache_dir, "pb1-detectron2-0.6.tar.gz")
    if os.path.isfile(target) and sha256(target) == SDIST_SHA256:
        return target
    req = os.path.join(cache_dir, "requirements.txt")
    with open(req, "w") as f:
        f.write(f"{SDIST} --hash=sha256:{SDIST_SHA256}\n")
    # --no-build-isolation: pip reads the sdist's metadata with the installed torch (its setup.py
    # imports torch); nothing is compiled by a download.
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--no-build-isolation", "-r", req, "-d", cache_dir]
    subprocess.run(cmd, check=True)
    if sha256(target) != SDIST_SHA256:
        sys.exit(f"sha256 of {target} does not match {SDIST_SHA256}; delete it and retry.")
    return target


def sha256(path):
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def patch_sources(src):
    for rel, old, new in PATCHES:
        path = os.path.join(src, rel)
        text = open(path).read()
        if text.count(old) != 1:
            sys.exit(f"patch does not apply to {rel}: expected one occurrence of {old!r}")
        open(path, "w").write(text.replace(old, new))
    n_alias = 0
    for dirpath, _, files in os.walk(os.path.join(src, "detectron2")):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                text = open(path).read()
                new, n = NUMPY_ALIASES.subn(lambda m: m.group(1), text)
                if n:
                    open(path, "w").write(new)
                    n_alias += n
    if n_alias == 0:
        sys.exit("expected removed numpy aliases (np.bool, np.int, ...) in detectron2 v0.6")
    log(f"patched {len(PATCHES)} places and {n_alias} removed numpy aliases")
    shutil.copy(SHIM, os.path.join(src, "detectron2", "_C.py"))


def build_wheel(sdist, workdir, wheel_dir):
    """Path of the patched wheel built from ``sdist`` into ``wheel_dir``."""
    with tarfile.open(sdist) as tar:
        tar.extractall(workdir, filter="data")
    src = os.path.join(workdir, "pb1-detectron2-0.6")
    patch_sources(src)
    with open(os.path.join(src, "setup.py"), "w") as f:
        f.write(SETUP_PY.format(version=WHEEL_VERSION))
    for stale in ("setup.cfg", "pb1_detectron2.egg-info"):
        path = os.path.join(src, stale)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", wheel_dir, src], check=True)
    wheels = [os.path.join(wheel_dir, w) for w in os.listdir(wheel_dir)
              if w.startswith("detectron2-") and w.endswith(".whl")]
    return max(wheels, key=os.path.getmtime)


def build_and_install(sdist, workdir):
    wheel = build_wheel(sdist, workdir, os.path.join(workdir, "wheel"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--force-reinstall", "-q",
                    wheel], check=True)
    log(f"installed {os.path.basename(wheel)}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if detectron2 works")
    parser.add_argument("--cache-dir", default=os.path.join(REPO_ROOT, ".cache", "detectron2"))
    parser.add_argument("--wheel-dir", help="build the wheel into this folder; install nothing")
    args = parser.parse_args()

    if args.wheel_dir:
        os.makedirs(args.wheel_dir, exist_ok=True)
        with tempfile.TemporaryDirectory() as workdir:
            wheel = build_wheel(download_sdist(args.cache_dir), workdir, args.wheel_dir)
        log(f"built {wheel}")
        return

    found = installed_detectron2()
    if found and "+tumorseg." in found[0] and not found[1]:
        log(f"detectron2 {found[0]} was built by an older version of this script; rebuilding")
        found = None
    if found and not args.force:
        ver, ours = found
        log(f"detectron2 {ver} is installed and works ({'built by this script' if ours else 'kept'})")
        return
    sdist = download_sdist(args.cache_dir)
    with tempfile.TemporaryDirectory() as workdir:
        build_and_install(sdist, workdir)
    if installed_detectron2() is None:
        sys.exit("detectron2 was installed but does not import; see the error above.")


if __name__ == "__main__":
    main()
