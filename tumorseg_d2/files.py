"""Opening files that other people made, and writing results, safely.

A research tool opens configs, checkpoints and annotation files that colleagues send. None of them
may run code or exhaust the machine, and no output may land outside the folder it was meant for:

- :func:`load_yaml`: configs. YAML's safe loader (no ``!!python/...`` tags: one is refused naming
  the file and line), a size limit, and a bound on alias expansion (a 1 kB file of nested anchors
  expands to gigabytes once Detectron2 copies it into a config).
- :func:`load_pickle`: Detectron2 model-zoo ``.pkl`` weights. An unpickler that admits only what
  such a file holds (dicts, lists, numbers, strings, NumPy arrays); ``pickle.load`` would run any
  callable the file names.
- :func:`load_json`: annotation files, with a size limit and a clear error for nesting too deep.
- :func:`atomic_write`, :func:`write_json`: readers (and a run resumed after a kill) see the old
  file or the new one, never half of one; a full disk is named as such.
- :func:`inside`, :func:`confined_path`, :func:`refuse_output_inside_inputs`: no output leaves its
  folder, whatever path a json names.
"""
import errno
import json
import math
import os
import pickle

import numpy as np
import yaml

MAX_YAML_BYTES = 1 << 20  # a config is a few kB
MAX_YAML_NODES = 100_000  # scalars, lists and mappings after alias expansion
DEFAULT_MAX_JSON_MB = 1024  # COCO files of large datasets reach hundreds of MB


class UnsafeFileError(ValueError):
    """A file that would run code, exhaust memory, or write outside its folder."""


# ---------------------------------------------------------------- YAML
class _SafeConfigLoader(yaml.SafeLoader):
    """The safe loader, with an error that names the file and line of a tag it refuses."""

    def construct_undefined(self, node):
        mark, tag = node.start_mark, node.tag.replace("tag:yaml.org,2002:", "!!")
        raise UnsafeFileError(
            f"{mark.name}, line {mark.line + 1}: the tag {tag} is refused. Configs may hold "
            "only plain values (numbers, strings, lists, mappings); a python tag would run code "
            "when the file is opened. Remove the tag, or ask the sender what value was meant.")


_SafeConfigLoader.add_constructor(None, _SafeConfigLoader.construct_undefined)


def _expanded_size(obj, memo, active):
    """Number of nodes of ``obj`` with every alias expanded, computed without expanding (each
    shared node is visited once). A node inside itself (a recursive alias) raises ValueError."""
    key = id(obj)
    if key in active:
        raise ValueError("cycle")
    if key in memo:
        return memo[key]
    if isinstance(obj, (dict, list, tuple)):
        active.add(key)
        children = [c for kv in obj.items() for c in kv] if isinstance(obj, dict) else obj
        memo[key] = 1 + sum(_expanded_size(c, memo, active) for c in children)
        active.discard(key)
    else:
        memo[key] = 1
    return memo[key]


def load_yaml(path):
    """The YAML file at ``path`` as plain Python values; UnsafeFileError for python tags, files over
    1 MB, more than 100,000 nodes after alias expansion, or self-referencing aliases."""
    size = os.path.getsize(path)
    if size > MAX_YAML_BYTES:
        raise UnsafeFileError(f"{path} is {size / 2**20:.1f} MB; a config is a few kB. Is it a "
                              "config file?")
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.load(f, Loader=_SafeConfigLoader)  # noqa: S506 - a SafeLoader subclass
        except yaml.YAMLError as e:
            raise ValueError(f"{path} is not valid YAML: {e}") from e
        except RecursionError as e:
            raise UnsafeFileError(f"{path} is nested too deeply to parse; a config has a few "
                                  "levels.") from e
    try:
        nodes = _expanded_size(data, {}, set())
    except (ValueError, RecursionError) as e:
        raise UnsafeFileError(f"{path}: an alias refers to a node that contains it (a cycle), or "
                              "the values are nested too deeply; configs hold neither.") from e
    if nodes > MAX_YAML_NODES:
        raise UnsafeFileError(
            f"{path}: its aliases (*name) expand to {nodes:,} values, over the limit of "
            f"{MAX_YAML_NODES:,}: copying them into a config would exhaust memory (a 'billion "
            "laughs' file). Write the values out without nested aliases.")
    return data


# ---------------------------------------------------------------- pickle
# What Detectron2 model-zoo and Caffe2/Detectron1 .pkl files hold: containers, numbers, strings
# and NumPy arrays (pickled by Python 2 or 3, NumPy 1 or 2).
_PICKLE_ALLOWED = {
    ("collections", "OrderedDict"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # how Python 3 pickles the bytes of a NumPy array for protocol 2
    ("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor"),
    ("__builtin__", "object"), ("builtins", "object"),
}


class _WeightsUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _PICKLE_ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name}")


def load_pickle(path):
    """A model-zoo ``.pkl`` file, admitting only containers, numbers, strings and NumPy arrays.
    Anything else (a function or class the file asks to call) raises UnsafeFileError naming the
    file and what it asked for; nothing is called."""
    with open(path, "rb") as f:
        try:
            data = _WeightsUnpickler(f, encoding="latin1").load()
        except pickle.UnpicklingError as e:
            raise UnsafeFileError(
                f"Weights file {path} asks to load {e}, which a Detectron2 model-zoo file never "
                "holds (it holds arrays, numbers and strings): loading it could run code, so it "
                "was refused. Use weights from a source you trust, or a .pth checkpoint saved by "
                "training.") from e
    if isinstance(data, np.ndarray) or not isinstance(data, dict):
        raise UnsafeFileError(f"Weights file {path} holds a {type(data).__name__}, not a dict of "
                              "weights: it is not a Detectron2 model-zoo file.")
    return data


# ---------------------------------------------------------------- JSON
def max_json_bytes():
    """$TUMORSEG_MAX_JSON_MB (default 1024) in bytes."""
    return int(float(os.environ.get("TUMORSEG_MAX_JSON_MB", DEFAULT_MAX_JSON_MB)) * 2**20)


def load_json(path):
    """A json file, refused (UnsafeFileError) when larger than $TUMORSEG_MAX_JSON_MB or nested
    deeper than Python can parse; invalid JSON raises json.JSONDecodeError as usual."""
    size = os.path.getsize(path)
    if size > max_json_bytes():
        raise UnsafeFileError(
            f"{path} is {size / 2**20:,.0f} MB, over the limit of {max_json_bytes() / 2**20:,.0f} "
            "MB (parsing it would need several times that in memory). If it is genuine, raise the "
            "limit with TUMORSEG_MAX_JSON_MB=<MB>.")
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except RecursionError as e:
            raise UnsafeFileError(f"{path} is nested too deeply to parse (thousands of levels); "
                                  "a COCO file has five. It is not an annotation file.") from e


# ---------------------------------------------------------------- images
HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def image_depth_problem(img):
    """Why an opened (not yet decoded) PIL image is not one 8-bit frame, or None. Pillow reads a
    48-bit color PNG or TIFF as 8-bit RGB without a word, and the first page of a multi-page file
    as the whole: both would reach the model silently reduced."""
    frames = getattr(img, "n_frames", 1)
    if frames > 1:
        return (f"holds {frames} frames (a multi-page TIFF or an animation); pass one slice per "
                "file")
    if img.mode in HIGH_DEPTH_MODES:
        return f"has 16-bit or float pixels (PIL mode {img.mode})"
    raw = img.tile[0][3] if img.tile and len(img.tile[0]) > 3 else None
    raw = raw[0] if isinstance(raw, tuple) and raw else raw
    if isinstance(raw, str) and (";16" in raw or ";32" in raw):
        return f"has 16 bits per color channel (48-bit color, stored as {raw})"
    return None


# ---------------------------------------------------------------- writing
def json_clean(obj):
    """``obj`` with NaN and infinities as None (JSON has no NaN) and NumPy scalars as numbers."""
    if isinstance(obj, dict):
        return {k: json_clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def atomic_write(path, write):
    """Write a file through ``write(f)`` under a temporary name, flush it to disk, then rename it
    over ``path``: readers (and a resume after a kill) see the old file or the new one, never half.
    A full disk raises OSError(ENOSPC) saying so and naming the folder; the old file is intact."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            folder = os.path.dirname(os.path.abspath(path))
            raise OSError(e.errno, f"Disk full: {os.path.basename(path)} could not be written in "
                          f"{folder} ({e.strerror}). The previous version of the file, if any, is "
                          "intact. Free space on that disk or write to another folder.") from e
        raise
    except RuntimeError as e:  # torch.save reports a full disk as a RuntimeError
        if "No space left" in str(e) or "file write failed" in str(e):
            raise OSError(errno.ENOSPC, f"Disk full: {os.path.basename(path)} could not be "
                          f"written in {os.path.dirname(os.path.abspath(path))} ({e}). The "
                          "previous version of the file, if any, is intact. Free space on that "
                          "disk or write to another folder.") from e
        raise
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path, obj, indent=1):
    """``obj`` as JSON at ``path`` (its folder made if needed), atomically, with NaN as null: the
    writer of every JSON file the package writes."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    text = json.dumps(json_clean(obj), indent=indent)
    atomic_write(path, lambda f: f.write(text.encode()))


def append_jsonl(path, row):
    """Append ``row`` as one JSON line (NaN as null) to ``path``."""
    with open(path, "a") as f:
        f.write(json.dumps(json_clean(row)) + "\n")


_HELD_LOCKS = {}  # folder -> open lock file, held until the process exits


class FolderLockedError(RuntimeError):
    pass


def lock_folder(folder, what="training"):
    """Hold ``folder``/.tumorseg.lock for the life of this process, or raise FolderLockedError
    naming the pid and host of the process holding it. The kernel releases the lock when its
    process dies: the lock file of a killed run is stale, and is taken over
    (its pid is logged by the caller through the return value). Returns the previous holder's
    description when a stale lock was taken over, else None. Reentrant within a process."""
    import fcntl
    import socket
    import time

    key = os.path.realpath(folder)
    if key in _HELD_LOCKS:
        return None
    path = os.path.join(folder, ".tumorseg.lock")
    f = open(path, "a+")
    f.seek(0)
    previous = f.read().strip()
    try:
        # A POSIX record lock, not flock: it belongs to this process alone, so the DataLoader
        # workers it forks do not inherit it and keep it after a kill.
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EAGAIN):
            raise
        f.close()
        raise FolderLockedError(
            f"{folder} is in use by another {what} ({previous or 'unknown process'}). Two runs in "
            "one folder would mix their checkpoints and logs. Wait for it to finish, stop it, or "
            "choose another OUTPUT_DIR.") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()}, {what} started "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    f.flush()
    _HELD_LOCKS[key] = f
    return previous or None


def inside(path, folder):
    """True when ``path`` is ``folder`` or below it, symbolic links resolved."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def confined_path(folder, relative, what="file name"):
    """``folder``/``relative``, refused (UnsafeFileError) when ``relative`` is absolute or leads out
    of ``folder`` (``..``, a symbolic link)."""
    if not isinstance(relative, str) or not relative or os.path.isabs(relative) \
            or "\x00" in relative:
        raise UnsafeFileError(f"The {what} {relative!r} is not a relative path inside {folder}.")
    path = os.path.join(folder, relative)
    if not inside(path, folder):
        raise UnsafeFileError(f"The {what} {relative!r} leads out of {folder}; refused.")
    return path


def refuse_output_inside_inputs(output, inputs, option="--output"):
    """Raise UnsafeFileError when the output folder is an input folder or inside one (a tool would
    then write among its inputs, or read its own outputs on a rerun). A glob's folder counts only
    as itself (a glob does not descend into subfolders); single files are skipped."""
    for item in inputs:
        is_glob = any(c in item for c in "*?[")
        if is_glob:
            item = os.path.dirname(item.split("*")[0].split("?")[0].split("[")[0]) or "."
        if not os.path.isdir(item):
            continue
        if (os.path.realpath(output) == os.path.realpath(item)) if is_glob else inside(output, item):
            raise UnsafeFileError(f"{option} {output} is inside the input folder {item}: choose "
                                  "an output folder outside the inputs (inputs are never written).")


# What only a training leaves in its OUTPUT_DIR (the lock while it runs, then checkpoints).
TRAINING_RUN_MARKS = (".tumorseg.lock", "last_checkpoint", "training_summary.json")


def training_run_of(path):
    """The training run folder that is ``path`` or holds it, or None."""
    path = os.path.realpath(path)
    while True:
        if any(os.path.exists(os.path.join(path, mark)) for mark in TRAINING_RUN_MARKS):
            return path
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent


def refuse_output_in_training_run(output, option="--output"):
    """Nothing but training writes into a training run's folder: its config.yaml is what
    tools/compare.py and a resume read as the training config, its log and metrics its history."""
    run = training_run_of(output)
    if run is not None:
        raise UnsafeFileError(
            f"{option} {output} is inside the training run {run}, which only its training writes "
            f"(config.yaml, log.txt, metrics). Choose a folder outside it, e.g. {run}-eval.")
