"""Benchmarks side by side with plain Detectron2 (``tumorseg benchmark``): training and data loading
throughput, batch inference, evaluation time, where inference and training spend their time, and
the machine's limit. Every figure is the median
of several runs after a warm-up; each project figure is reported with its ratio to Detectron2's,
measured in the same run, since absolute times drift on a shared machine and ratios hold."""
import contextlib
import gc
import logging
import os
import platform
import statistics
import tempfile
import threading
import time

import psutil
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.datasets.coco import convert_to_coco_json
from detectron2.data.detection_utils import read_image
from detectron2.engine import DefaultPredictor, DefaultTrainer, HookBase
from detectron2.evaluation import COCOEvaluator, inference_context
from detectron2.modeling import build_model
from fvcore.nn import FlopCountAnalysis

from ..checkpoint import SafeCheckpointer, resolve_weights
from ..config import derived
from ..engine.amp import native_bf16_on_cpu, slow_bf16_warning
from ..engine.trainer import Trainer
from ..evaluation.coco import coco_metrics
from ..evaluation.pipeline import evaluate_predictions
from ..files import write_json
from ..predictions import dataset_category_ids, from_instances, to_coco_results, to_instances
from ..modeling.onnx_backbone import quiet_tracing
from ..predictor import CALIBRATION_IMAGES, BatchPredictor, calibration_sample
from ..tables import fmt_value, markdown_table

logger = logging.getLogger(__name__)

# Detectron2's model-zoo test resize: shortest edge 800 (640x640 slices are upscaled), at most 1333.
ZOO_MIN_SIZE_TEST, ZOO_MAX_SIZE_TEST = 800, 1333


def median_seconds(fn, repeats, warmup=1):
    """Median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` untimed ones, and the
    last call's return value."""
    for _ in range(warmup):
        fn()
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


class PeakMemory:
    """Peak memory (MiB) of this process and its children (DataLoader workers) while the block
    runs, sampled every 20 ms. PSS (proportional set size): pages the workers share with the main
    process (torch's libraries, the forked model) are split between them, not counted twice."""

    def __enter__(self):
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self.peak, self._done = 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        me = psutil.Process()
        while not self._done.is_set():
            total = 0
            with contextlib.suppress(psutil.Error):
                total = sum(p.memory_full_info().pss
                            for p in [me] + me.children(recursive=True))
            self.peak = max(self.peak, total)
            self._done.wait(0.02)

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()
        self.peak_mib = self.peak / 2**20
        # What the GPU's allocator held at most (None without CUDA).
        self.gpu_peak_mib = torch.cuda.max_memory_allocated() / 2**20 \
            if torch.cuda.is_available() else None


def machine():
    """What the figures depend on: the CPU and its vector instructions (AVX2 or AVX-512; native
    bfloat16 or not), cores, threads, memory, the GPU if any, and versions."""
    return {"cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "native_bf16": native_bf16_on_cpu(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1), **gpu()}


def gpu():
    """The CUDA device's name, memory and the CUDA version torch was built with; {} without."""
    if not torch.cuda.is_available():
        return {}
    props = torch.cuda.get_device_properties(0)
    return {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "cuda": torch.version.cuda}


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ---------------------------------------------------------------- the limit
def matmul_gflops(dtype, device="cpu", max_n=2048, repeats=5, enough_seconds=0.05):
    """Measured (n x n) @ (n x n) throughput in GFLOP/s (2 n^3 floating-point operations), n
    doubled from 256 up to ``max_n`` while one product takes under ``enough_seconds``: large enough
    to reach the peak where the type is native, and bounded where it is emulated (bf16 without
    AVX-512 BF16 is about 100 times slower, and 2048 would take minutes). On a GPU, n is 8192
    (smaller products leave a large GPU idle) and each product is waited for."""
    device = torch.device(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    n = 8192 if device.type == "cuda" else 256
    while n < max_n:
        a = torch.randn(n, n).to(dtype)
        start = time.perf_counter()
        torch.mm(a, a)
        if time.perf_counter() - start >= enough_seconds:
            break
        n *= 2
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))

    def product():
        torch.mm(a, b)
        sync()
    seconds, _ = median_seconds(product, repeats, warmup=2)
    return 2 * n**3 / seconds / 1e9


class _InferenceOnTensor(torch.nn.Module):
    """Mask R-CNN inference on one (3, H, W) tensor with tensor outputs, so that fvcore can trace it
    (Detectron2's own adapter lives in detectron2.export, which needs caffe2)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image):
        inst = self.model.inference([{"image": image}], do_postprocess=False)[0]
        return inst.pred_boxes.tensor, inst.scores, inst.pred_masks


def model_macs(model, image):
    """Multiply-accumulates of one inference on ``image`` ((3, H, W) at the model's input size),
    in total and per top-level module, as fvcore counts them (one MAC = 2 FLOPs). ROIAlign and
    NMS have no counter and are left out; they are a tiny share."""
    with inference_context(model), torch.no_grad(), quiet_tracing():
        count = FlopCountAnalysis(_InferenceOnTensor(model), (image,))
        count.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        by_module = count.by_module()
        return {"total": count.total(),
                **{name: by_module.get(f"model.{name}", 0)
                   for name in ("backbone", "proposal_generator", "roi_heads")}}


# ---------------------------------------------------------------- training and loading
class _StepTimes(HookBase):
    """Wall time from one iteration's end to the next: the step, data wait and every hook."""

    def __init__(self):
        self.times = []

    def before_train(self):
        self._last = time.perf_counter()

    def after_step(self):
        now = time.perf_counter()
        self.times.append(now - self._last)
        self._last = now


def training_config(cfg, iters, output_dir, optimizer="SGD"):
    """``cfg`` for timing ``iters`` iterations in both trainers: SGD (DefaultTrainer has no other
    optimizer; ``optimizer=None`` keeps the config's), no checkpoints, and no evaluation
    (DefaultTrainer would test, ours validate)."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.SOLVER.OPTIMIZER = optimizer or cfg.SOLVER.OPTIMIZER
    cfg.SOLVER.MAX_ITER = iters
    cfg.SOLVER.CHECKPOINT_PERIOD = 10**9
    cfg.TEST.EVAL_PERIOD = 0
    cfg.DATASETS.VAL = ()
    cfg.DATASETS.TEST = ()
    cfg.OUTPUT_DIR = output_dir
    cfg.SEED = 0
    cfg.freeze()
    return cfg


def training_step_times(trainer_cls, cfg, warmup, iters, optimizer="SGD", hooks=()):
    with tempfile.TemporaryDirectory() as tmp:
        trainer = trainer_cls(training_config(cfg, warmup + iters, tmp, optimizer))
        timer = _StepTimes()
        trainer.register_hooks([timer, *hooks])
        trainer.train()
        del trainer
        # Free this run's loader workers and GPU memory now, not when the garbage collector
        # happens to run: left over, they would slow the next run down.
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return timer.times[warmup:]


OURS, DETECTRON2, OURS_BF16 = ("tumorseg_d2 Trainer", "detectron2 DefaultTrainer",
                               "tumorseg_d2 Trainer, bf16 autocast")
OURS_BF16_PLAIN = "tumorseg_d2 Trainer, bf16 autocast, torchvision RoIAlign, channels-first"
OURS_FP16, DETECTRON2_AMP = ("tumorseg_d2 Trainer, fp16 autocast",
                             "detectron2 DefaultTrainer, AMP (AMPTrainer, fp16)")


def training_runs(cfg):
    """(name, trainer class, config) of what the training section times, the AMP switch off
    (fp32) and on: bf16 autocast everywhere; on CUDA also float16 with loss scaling, beside
    Detectron2's own AMP (DefaultTrainer with SOLVER.AMP.ENABLED runs its AMPTrainer, fp16).
    On the CPU, where the config turns on MODEL.ROI_ALIGN gather or MODEL.CHANNELS_LAST, bf16 is
    also timed without them, to tell their share from bf16's."""
    fp32 = derived(cfg, {"SOLVER.AMP.ENABLED": False})
    bf16 = derived(cfg, {"SOLVER.AMP.ENABLED": True, "SOLVER.AMP.PRECISION": "bfloat16"})
    runs = [(OURS, Trainer, fp32), (DETECTRON2, DefaultTrainer, fp32), (OURS_BF16, Trainer, bf16)]
    on_cpu = torch.device(cfg.MODEL.DEVICE).type == "cpu"
    if on_cpu and (cfg.MODEL.ROI_ALIGN != "torchvision" or cfg.MODEL.CHANNELS_LAST):
        runs.append((OURS_BF16_PLAIN, Trainer, derived(bf16, {"MODEL.ROI_ALIGN": "torchvision",
                                                              "MODEL.CHANNELS_LAST": False})))
    if torch.device(cfg.MODEL.DEVICE).type == "cuda":
        fp16 = derived(cfg, {"SOLVER.AMP.ENABLED": True, "SOLVER.AMP.PRECISION": "float16"})
        runs += [(OURS_FP16, Trainer, fp16), (DETECTRON2_AMP, DefaultTrainer, fp16)]
    return runs


def benchmark_training(cfg, warmup, iters, rounds):
    """Images/s of our Trainer (fp32, and bf16 autocast: SOLVER.AMP.ENABLED with PRECISION
    bfloat16; on CUDA also float16) and Detectron2's DefaultTrainer (fp32; on CUDA also its AMP)
    on the same config, run in alternating order (ABC, CBA, ...) so drift in the machine's speed
    affects all alike. On a CPU without native bfloat16, bf16 is timed over one iteration per
    round."""
    runs = training_runs(cfg)
    # Without native bf16 an iteration takes many times longer: one after one warm-up says it.
    slow = slow_bf16_warning(torch.bfloat16, torch.device(cfg.MODEL.DEVICE).type)
    times = {name: [] for name, _, _ in runs}
    for r in range(rounds):
        for name, cls, run_cfg in (runs if r % 2 == 0 else runs[::-1]):
            logger.info(f"training benchmark: {name}, round {r + 1}/{rounds}")
            bf16 = name in (OURS_BF16, OURS_BF16_PLAIN)
            n_warmup, n_iters = (1, 1) if slow and bf16 else (warmup, iters)
            times[name] += training_step_times(cls, run_cfg, n_warmup, n_iters)
    batch = cfg.SOLVER.IMS_PER_BATCH
    out = {name: {"seconds_per_iter": statistics.median(t), "images_per_s":
                  batch / statistics.median(t), "iterations_timed": len(t)}
           for name, t in times.items()}
    out["ratio"] = out[OURS]["images_per_s"] / out[DETECTRON2]["images_per_s"]
    out["bf16_ratio"] = out[OURS_BF16]["images_per_s"] / out[DETECTRON2]["images_per_s"]
    out["bf16_native"] = not slow
    if DETECTRON2_AMP in out:
        out["fp16_ratio_to_detectron2_amp"] = (out[OURS_FP16]["images_per_s"]
                                               / out[DETECTRON2_AMP]["images_per_s"])
    out["config"] = {"IMS_PER_BATCH": batch, "MIN_SIZE_TRAIN": list(cfg.INPUT.MIN_SIZE_TRAIN),
                     "optimizer": "SGD", "warmup_iters": warmup, "iters_per_round": iters,
                     "rounds": rounds,
                     # ours only: DefaultTrainer builds Detectron2's model as it is
                     "ROI_ALIGN": cfg.MODEL.ROI_ALIGN, "CHANNELS_LAST": cfg.MODEL.CHANNELS_LAST}
    return out


def _page_faults():
    """Minor page faults of this process so far (pages touched for the first time since they
    were mapped); None where the system does not count them."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


class _ProfileSteps(HookBase):
    """torch.profiler over iterations ``first`` to ``first + count - 1``, and the page faults
    of those iterations."""

    def __init__(self, first, count):
        self.first, self.last, self.profiler = first, first + count - 1, None
        self.page_faults = None

    def before_step(self):
        if self.trainer.iter == self.first:
            self.profiler = torch.profiler.profile(activities=[
                torch.profiler.ProfilerActivity.CPU])
            self.profiler.__enter__()
            self._faults_before = _page_faults()

    def after_step(self):
        if self.trainer.iter == self.last:
            self.profiler.__exit__(None, None, None)
            if self._faults_before is not None:
                self.page_faults = _page_faults() - self._faults_before


def profile_training(cfg, warmup, iters, top=20):
    """Where an iteration of training goes: our Trainer on ``cfg`` as it is (its optimizer,
    precision, RoIAlign and layout; no validation), ``iters`` iterations under torch.profiler
    after ``warmup``. The ``top`` operators by self CPU time (summed over threads, so shares
    are of all the CPU time the profiler saw), in ms per iteration; and the process's page faults
    per iteration (each a page of memory touched for the first time since it was mapped)."""
    profiler = _ProfileSteps(warmup, iters)
    times = training_step_times(Trainer, cfg, warmup, iters, optimizer=None, hooks=[profiler])
    events = sorted(profiler.profiler.key_averages(), key=lambda e: e.self_cpu_time_total,
                    reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    faults = profiler.page_faults
    return {"seconds_per_iter": statistics.median(times),
            "page_faults_per_iter": None if faults is None else faults / iters,
            "operators": [{"name": e.key, "ms_per_iter": e.self_cpu_time_total / 1e3 / iters,
                           "share": e.self_cpu_time_total / total, "calls_per_iter":
                           e.count / iters} for e in events[:top]],
            "config": {"optimizer": cfg.SOLVER.OPTIMIZER, "IMS_PER_BATCH": cfg.SOLVER.IMS_PER_BATCH,
                       "AMP": cfg.SOLVER.AMP.PRECISION if cfg.SOLVER.AMP.ENABLED else "off",
                       "ROI_ALIGN": cfg.MODEL.ROI_ALIGN, "CHANNELS_LAST": cfg.MODEL.CHANNELS_LAST,
                       "warmup_iters": warmup, "iters_profiled": iters}}


def _faults_text(faults):
    return "" if faults is None else f"; {faults:,.0f} page faults/iteration"


def loader_batch_times(loader, warmup, batches):
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    times = []
    for _ in range(batches):
        start = time.perf_counter()
        next(it)
        times.append(time.perf_counter() - start)
    del it  # stops the workers
    return times


def benchmark_loading(cfg, warmup, batches):
    """Images/s the training loaders deliver with nothing else running."""
    cfg = training_config(cfg, 1, cfg.OUTPUT_DIR)
    out = {}
    for name, cls in (("tumorseg_d2 Trainer", Trainer),
                      ("detectron2 DefaultTrainer", DefaultTrainer)):
        t = statistics.median(loader_batch_times(cls.build_train_loader(cfg), warmup, batches))
        out[name] = {"seconds_per_batch": t, "images_per_s": cfg.SOLVER.IMS_PER_BATCH / t}
    out["ratio"] = (out["tumorseg_d2 Trainer"]["images_per_s"]
                    / out["detectron2 DefaultTrainer"]["images_per_s"])
    out["config"] = {"IMS_PER_BATCH": cfg.SOLVER.IMS_PER_BATCH,
                     "NUM_WORKERS": cfg.DATALOADER.NUM_WORKERS, "warmup_batches": warmup,
                     "batches": batches}
    return out


# ---------------------------------------------------------------- inference
def inference_variants(cfg):
    """(name, settings) of what is timed; the first is the reference: Detectron2's DefaultPredictor
    with the model-zoo test size, one image at a time, fp32."""
    size = cfg.INPUT.MIN_SIZE_TEST
    on_gpu = torch.device(cfg.MODEL.DEVICE).type == "cuda"
    # On a GPU, decoding and resizing on the CPU is the bottleneck: more workers, larger batches.
    batch = {"runner": "BatchPredictor", "size": size, "batch": 8 if on_gpu else 4,
             "workers": min(8, os.cpu_count()) if on_gpu else 2, "channels_last": False}
    # Without native bf16 a reference kernel runs many times slower than fp32 (the training
    # section times it): not worth 215 images.
    bf16 = [("BatchPredictor bf16", dict(batch, precision="bf16")),
            ("BatchPredictor bf16 backbone, fp32 heads, channels-last",
             dict(batch, precision="bf16-backbone", channels_last=True))] if (
        on_gpu or native_bf16_on_cpu()) else []
    # ONNX Runtime runs the backbone on the CPU: beside a GPU it would measure the CPU.
    onnx = [] if on_gpu else [
        ("BatchPredictor fp32, ONNX Runtime backbone and RPN head",
         dict(batch, backbone_runtime="onnxruntime")),
        ("BatchPredictor int8 backbone and RPN head (ONNX Runtime), channels-last heads",
         dict(batch, backbone_runtime="onnxruntime-int8", channels_last=True,
              calibration_images=CALIBRATION_IMAGES)),
        ("BatchPredictor int8 backbone and RPN head (ONNX Runtime), int8 box head, channels-last",
         dict(batch, backbone_runtime="onnxruntime-int8", channels_last=True,
              calibration_images=CALIBRATION_IMAGES, box_head="int8")),
        ("BatchPredictor int8 backbone and RPN head (ONNX Runtime), int8 box head, gathered "
         "RoIAlign, channels-last",
         dict(batch, backbone_runtime="onnxruntime-int8", channels_last=True,
              calibration_images=CALIBRATION_IMAGES, box_head="int8", roi_align="gather")),
    ]
    # A slice keeps up to TEST.DETECTIONS_PER_IMAGE masks: with many, the mask head's
    # convolutions are worth bf16 where it is native.
    if onnx and native_bf16_on_cpu():
        onnx.append((onnx[-1][0].replace(", channels-last", ", bf16 mask head, channels-last"),
                     dict(onnx[-1][1], mask_head="bf16")))
    return [
        ("detectron2 DefaultPredictor, model-zoo size (reference)",
         {"runner": "DefaultPredictor", "size": ZOO_MIN_SIZE_TEST, "max_size": ZOO_MAX_SIZE_TEST}),
        ("detectron2 DefaultPredictor, config size",
         {"runner": "DefaultPredictor", "size": size, "max_size": cfg.INPUT.MAX_SIZE_TEST}),
        ("BatchPredictor fp32", dict(batch)),
        ("BatchPredictor fp32 channels-last", dict(batch, channels_last=True)),
        *bf16,
        *onnx,
    ]


# "Equal AP" (issue #20): each of these within this many points of fp32 at the same size.
EQUAL_AP_KEYS, EQUAL_AP_POINTS = ("bbox_AP", "bbox_AP50", "segm_AP", "segm_AP50"), 0.5
SAME_SIZE_REFERENCE = 1  # inference_variants' DefaultPredictor at the config's size


def _with_test_size(cfg, size, max_size):
    cfg = cfg.clone()
    cfg.defrost()
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = size, max_size
    cfg.freeze()
    return cfg


def default_predictor_runner(cfg, settings):
    """Detectron2's demo loop: read each file, DefaultPredictor on it."""
    predictor = DefaultPredictor(_with_test_size(cfg, settings["size"], settings["max_size"]))

    def run(records):
        return [from_instances(predictor(read_image(r["file_name"], "BGR"))["instances"].to("cpu"))
                for r in records]
    return run, predictor.model


def batch_predictor_runner(cfg, settings):
    # int8 is calibrated on training slices, never on the split it is measured on.
    calibration = calibration_sample(
        [r["file_name"] for r in DatasetCatalog.get(cfg.DATASETS.TRAIN[0])],
        settings["calibration_images"]) if settings.get("calibration_images") else ()
    predictor = BatchPredictor(_with_test_size(cfg, settings["size"], cfg.INPUT.MAX_SIZE_TEST),
                               batch_size=settings["batch"], num_workers=settings["workers"],
                               precision=settings.get("precision", "fp32"),
                               channels_last=settings["channels_last"],
                               backbone_runtime=settings.get("backbone_runtime", "torch"),
                               calibration_images=calibration,
                               box_head=settings.get("box_head", "fp32"),
                               roi_align=settings.get("roi_align", "torchvision"),
                               mask_head=settings.get("mask_head", "fp32"))

    def run(records):
        return predictor([r["file_name"] for r in records], masks="rle")
    return run, predictor.model


def as_predictions(results, records):
    """Runner results (prediction records with RLE masks, as a user keeping them would have) with
    the split's image ids."""
    return [dict(p, image_id=r["image_id"]) for r, p in zip(records, results)]


def benchmark_inference(cfg, dataset_name, repeats, warmup_images, gt_json, macs_at, limits):
    """Each variant on the split's images: images/s, s/image, peak memory, COCO AP of its
    predictions, and achieved GFLOP/s against the measured matmul limit."""
    records = DatasetCatalog.get(dataset_name)
    meta = MetadataCatalog.get(dataset_name)
    classes, category_ids = list(meta.thing_classes), dataset_category_ids(meta)
    rows, preds_of = [], {}
    for name, settings in inference_variants(cfg):
        logger.info(f"inference benchmark: {name} on {len(records)} images, {repeats} runs")
        make = default_predictor_runner if settings["runner"] == "DefaultPredictor" \
            else batch_predictor_runner
        run, model = make(cfg, settings)
        run(records[:warmup_images])
        seconds, results = median_seconds(lambda: run(records), repeats, warmup=0)
        with PeakMemory() as memory:  # a pass of its own: sampling PSS takes CPU time
            run(records)
        preds = as_predictions(results, records)
        coco, _ = coco_metrics(gt_json, to_coco_results(preds, category_ids), classes,
                               [category_ids[k] for k in range(len(classes))])
        macs = macs_at(model, settings["size"])
        precision = settings.get("precision", "fp32")
        # bf16-backbone's yardstick is bf16's rate: most of the multiplications are the backbone's.
        achieved = 2 * macs * len(records) / seconds / 1e9
        limit = limits["fp32" if precision == "fp32" else "bf16"]
        rows.append({"variant": name, **settings, "precision": precision,
                     "images_per_s": len(records) / seconds,
                     "seconds_per_image": seconds / len(records),
                     "peak_memory_mib": memory.peak_mib,
                     "gpu_peak_memory_mib": memory.gpu_peak_mib,
                     "bbox_AP": coco["bbox"]["AP"], "bbox_AP50": coco["bbox"]["AP50"],
                     "segm_AP": coco["segm"]["AP"], "segm_AP50": coco["segm"]["AP50"],
                     "gmacs_per_image": macs / 1e9, "achieved_gflops": achieved,
                     "limit_gflops": limit, "achieved_over_limit": achieved / limit})
        preds_of[name] = preds
        del run, model
    reference, same_size = rows[0], rows[SAME_SIZE_REFERENCE]
    for row in rows:
        row["speedup"] = row["images_per_s"] / reference["images_per_s"]
        row["speedup_same_size"] = row["images_per_s"] / same_size["images_per_s"]
        row["AP_change_same_size"] = {k: row[k] - same_size[k] for k in EQUAL_AP_KEYS}
        row["equal_AP"] = row["size"] == same_size["size"] and all(
            abs(d) <= EQUAL_AP_POINTS for d in row["AP_change_same_size"].values())
    return rows, preds_of


# ---------------------------------------------------------------- where the time goes
class StageTimer:
    """Seconds spent in the named submodules of ``model`` (dotted names, as ``named_modules``
    gives them; a name the model lacks stays 0), summed over every call while the context is open.
    Forward hooks read ``clock`` on entering and leaving each; on a GPU the device is synchronized
    first, so that a stage's time is its work's and not its launches'."""

    def __init__(self, model, names, clock=time.perf_counter):
        self.model, self.names, self.clock = model, list(names), clock
        self.seconds = dict.fromkeys(self.names, 0.0)
        self._entered, self._handles = {}, []
        on_gpu = any(p.is_cuda for p in model.parameters())
        self._sync = torch.cuda.synchronize if on_gpu else (lambda: None)

    def __enter__(self):
        modules = dict(self.model.named_modules())
        for name in self.names:
            if name in modules:
                self._handles += [
                    modules[name].register_forward_pre_hook(self._enter(name)),
                    modules[name].register_forward_hook(self._leave(name))]
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _enter(self, name):
        def hook(module, args):
            self._sync()
            self._entered[name] = self.clock()
        return hook

    def _leave(self, name):
        def hook(module, args, output):  # returns None: the output is left as it is
            self._sync()
            self.seconds[name] += self.clock() - self._entered[name]
        return hook


# The submodules of Detectron2's GeneralizedRCNN that StageTimer times for ``stage_seconds``.
TIMED_MODULES = ("backbone", "proposal_generator", "roi_heads", "roi_heads.box_pooler",
                 "roi_heads.mask_pooler", "roi_heads.mask_head")
STAGES = ("backbone (ResNet + FPN)", "RPN", "box RoIAlign", "box head and NMS", "mask head",
          "everything else")


def stage_seconds(timed, wall):
    """Seconds in each of STAGES from StageTimer's TIMED_MODULES and the wall time of the pass:
    the box head with NMS is the RoI heads less the box RoIAlign (pooling every proposal's
    features, timed apart as it takes about as long as the RPN) and the mask head (its own RoIAlign
    included); everything else is what no hook covers (reading and decoding, resizing,
    normalizing and padding, pasting masks at the image's size, RLE encoding, and for
    BatchPredictor the wait for its decoding workers). With an ONNX Runtime backbone, the
    backbone's time includes the RPN head's convolutions, which run in the same session."""
    mask = timed["roi_heads.mask_pooler"] + timed["roi_heads.mask_head"]
    pooling = timed["roi_heads.box_pooler"]
    stages = [timed["backbone"], timed["proposal_generator"], pooling,
              timed["roi_heads"] - pooling - mask, mask]
    return dict(zip(STAGES, stages + [wall - sum(stages)]))


def benchmark_stages(cfg, dataset_name, warmup_images):
    """Where each inference variant at the config's size spends its time, from one pass over the
    split with StageTimer's hooks: seconds per image by stage, and the speed-up over
    DefaultPredictor at that size that the variant would reach if its backbone took no time at
    all, which bounds what quantizing or compiling the backbone alone can give (Amdahl)."""
    records = DatasetCatalog.get(dataset_name)
    rows = []
    for name, settings in inference_variants(cfg)[SAME_SIZE_REFERENCE:]:
        logger.info(f"stage timing: {name} on {len(records)} images")
        make = default_predictor_runner if settings["runner"] == "DefaultPredictor" \
            else batch_predictor_runner
        run, model = make(cfg, settings)
        run(records[:warmup_images])
        with StageTimer(model, TIMED_MODULES) as timer:
            start = time.perf_counter()
            run(records)
            wall = time.perf_counter() - start
        stages = stage_seconds(timer.seconds, wall)
        rows.append({"variant": name, "seconds_per_image": wall / len(records),
                     "stage_seconds_per_image": {k: v / len(records) for k, v in stages.items()}})
        del run, model
    reference = rows[0]["seconds_per_image"]
    for row in rows:
        rest = row["seconds_per_image"] - row["stage_seconds_per_image"][STAGES[0]]
        row["speedup_same_size"] = reference / row["seconds_per_image"]
        row["speedup_same_size_without_backbone"] = reference / rest
    return {"images": len(records), "variants": rows}


# ---------------------------------------------------------------- evaluation
def run_evaluator(evaluator, inputs, outputs):
    evaluator.reset()
    for x, out in zip(inputs, outputs):
        evaluator.process([x], [out])
    with contextlib.redirect_stdout(open(os.devnull, "w")):
        return evaluator.evaluate()


def benchmark_evaluation(cfg, dataset_name, preds, repeats):
    """Seconds to evaluate the split's predictions: Detectron2's COCOEvaluator against ours (COCO
    AP plus Dice, IoU and sensitivity, as Trainer.test runs it), and the full report of
    tools/evaluate.py (COCO AP and AR per class and class-agnostic, clinical figures, plots)."""
    records = {r["image_id"]: r for r in DatasetCatalog.get(dataset_name)}
    inputs = [records[p["image_id"]] for p in preds]
    outputs = [{"instances": to_instances(p)} for p in preds]
    out = {"images": len(preds)}
    with tempfile.TemporaryDirectory() as tmp:
        evaluators = {
            "detectron2 COCOEvaluator": COCOEvaluator(dataset_name, output_dir=tmp,
                                                                use_fast_impl=False),
            "tumorseg_d2 Trainer.test evaluators": Trainer.build_evaluator(cfg, dataset_name, tmp),
        }
        for name, evaluator in evaluators.items():
            seconds, _ = median_seconds(lambda: run_evaluator(evaluator, inputs, outputs), repeats)
            out[name] = {"seconds": seconds}
        seconds, _ = median_seconds(
            lambda: evaluate_predictions(preds, dataset_name, tmp, 0.5, "fixed"), repeats)
        out["tumorseg_d2 full report (tools/evaluate.py)"] = {"seconds": seconds}
    reference = out["detectron2 COCOEvaluator"]["seconds"]
    for name in list(evaluators) + ["tumorseg_d2 full report (tools/evaluate.py)"]:
        out[name]["speed_ratio"] = reference / out[name]["seconds"]
    return out


# ---------------------------------------------------------------- the whole run
def macs_counter(dataset_name):
    """MACs of a model on the split's first image resized to a given shortest edge, cached by size
    (the mask head's share varies a little with the number of detections)."""
    image = read_image(DatasetCatalog.get(dataset_name)[0]["file_name"], "BGR")
    cache = {}

    def macs_at(model, size):
        if size not in cache:
            resized = T.ResizeShortestEdge(size, 10**4).get_transform(image).apply_image(image)
            tensor = torch.as_tensor(resized.transpose(2, 0, 1).copy())
            cache[size] = model_macs(model, tensor)["total"]
        return cache[size]
    return macs_at


def run_benchmarks(cfg, dataset_name, sections, save, repeats=3, warmup_images=8, train_warmup=5,
                   train_iters=20, train_rounds=2, load_batches=20, profile_iters=10):
    """The sections asked for, in order; ``save(result)`` is called after each, so a failure or an
    interruption keeps what was measured."""
    result = {"machine": machine(), "dataset": dataset_name, "weights": cfg.MODEL.WEIGHTS or None,
              "config": {"MIN_SIZE_TEST": cfg.INPUT.MIN_SIZE_TEST,
                         "MIN_SIZE_TRAIN": list(cfg.INPUT.MIN_SIZE_TRAIN),
                         "backbone_depth": cfg.MODEL.RESNETS.DEPTH}}
    device = cfg.MODEL.DEVICE
    limits = {"fp32": matmul_gflops(torch.float32, device),
              "bf16": matmul_gflops(torch.bfloat16, device)}
    result["limit"] = {"matmul_gflops": limits}
    model = build_model(cfg).eval()
    SafeCheckpointer(model, same_classes=True).load(resolve_weights(cfg.MODEL.WEIGHTS))
    macs_at = macs_counter(dataset_name)
    result["limit"]["gmacs_per_image"] = {
        str(size): macs_at(model, size) / 1e9
        for size in sorted({cfg.INPUT.MIN_SIZE_TEST, ZOO_MIN_SIZE_TEST})}
    del model
    save(result)
    if "train" in sections:
        result["training"] = benchmark_training(cfg, train_warmup, train_iters, train_rounds)
        save(result)
    if "profile" in sections:
        result["training_profile"] = profile_training(cfg, train_warmup, profile_iters)
        save(result)
    if "load" in sections:
        result["loading"] = benchmark_loading(cfg, 3, load_batches)
        save(result)
    if "infer" in sections or "eval" in sections:
        with tempfile.TemporaryDirectory() as tmp:
            gt_json = os.path.join(tmp, "gt.json")
            convert_to_coco_json(dataset_name, gt_json, allow_cached=False)
            rows, preds_of = benchmark_inference(cfg, dataset_name, repeats, warmup_images, gt_json,
                                                 macs_at, limits)
        result["inference"] = rows
        save(result)
        if "eval" in sections:
            result["evaluation"] = benchmark_evaluation(cfg, dataset_name,
                                                        preds_of[rows[0]["variant"]], repeats)
            save(result)
    if "stages" in sections:
        result["stages"] = benchmark_stages(cfg, dataset_name, warmup_images)
        save(result)
    return result


# ---------------------------------------------------------------- Markdown
def _side_by_side(title, section, what, time_label, time_key):
    """A section's rows (ours, Detectron2's, and our bf16 training where measured) and their
    images/s ratios to Detectron2, as Markdown lines."""
    names = [k for k in (OURS, DETECTRON2, OURS_BF16, OURS_BF16_PLAIN, OURS_FP16, DETECTRON2_AMP)
             if k in section]
    rows = [[k, fmt_value(section[k][time_key], digits=3),
             fmt_value(section[k]["images_per_s"], digits=2)] for k in names]
    ratios = f"Ratio tumorseg_d2 / Detectron2: **{section['ratio']:.3f}**"
    if "bf16_ratio" in section:
        ratios += (f"; with bf16 autocast: **{section['bf16_ratio']:.3f}**"
                   + ("" if section["bf16_native"] else " (this CPU has no native bfloat16: "
                      "PyTorch's reference convolution)"))
    if "fp16_ratio_to_detectron2_amp" in section:
        ratios += ("; fp16 autocast against Detectron2's AMP: "
                   f"**{section['fp16_ratio_to_detectron2_amp']:.3f}**")
    return [title, "", markdown_table([what, time_label, "images/s"], rows), "", ratios, ""]


def markdown(result):
    """The benchmark's tables, with the ratios to Detectron2 in the same run."""
    m, lines = result["machine"], []
    lines += [f"Machine: {m['cpu']} ({m['cpu_capability']}, bfloat16 "
              f"{'native' if m['native_bf16'] else 'not native'}), {m['cores']} cores, "
              f"{m['memory_gib']} GiB, torch {m['torch']} "
              f"({m['torch_threads']} threads)"
              + (f"; GPU {m['gpu']} ({m['gpu_memory_gib']} GiB, CUDA {m['cuda']})"
                 if m.get("gpu") else "") + f". Dataset {result['dataset']}; weights "
              f"{result['weights'] or 'none (random initialization: AP is meaningless)'}.", ""]
    limit = result["limit"]
    lines += ["Limit: measured matmul " + ", ".join(
        f"{k} {v:.0f} GFLOP/s" for k, v in limit["matmul_gflops"].items()) + "; model " + ", ".join(
        f"{g:.1f} GMAC/image at {s} px" for s, g in limit["gmacs_per_image"].items()) + ".", ""]
    if "training" in result:
        lines += _side_by_side("Training throughput (median s/iteration after warm-up, same "
                               "config, SGD):", result["training"], "trainer", "s/iter",
                               "seconds_per_iter")
    if "training_profile" in result:
        t = result["training_profile"]
        c = t["config"]
        lines += [f"Where training spends its time ({c['iters_profiled']} iterations under "
                  f"torch.profiler, {c['optimizer']}, AMP {c['AMP']}, RoIAlign {c['ROI_ALIGN']}, "
                  f"channels-last {c['CHANNELS_LAST']}; {t['seconds_per_iter']:.3f} s/iteration "
                  "with the profiler on" + _faults_text(t.get("page_faults_per_iter")) + "):", "",
                  markdown_table(["operator (self time)", "ms/iteration", "share", "calls/iteration"],
                                 [[o["name"], f"{o['ms_per_iter']:.1f}", f"{100 * o['share']:.1f}%",
                                   f"{o['calls_per_iter']:.0f}"] for o in t["operators"]]), ""]
    if "loading" in result:
        lines += _side_by_side("Data loading alone (training loader, "
                               f"{result['loading']['config']['NUM_WORKERS']} workers):",
                               result["loading"], "loader", "s/batch", "seconds_per_batch")
    if "inference" in result:
        rows = result["inference"]
        lines += [f"Inference on {result['dataset']} (reading and decoding the files and encoding "
                  "the masks as RLE included; peak memory of this process and its workers):", "",
                  markdown_table(
                      ["variant", "px", "images/s", "s/image", "speed-up", "same size",
                       "peak MiB", "bbox AP", "bbox AP50", "segm AP", "segm AP50", "equal AP",
                       "achieved GFLOP/s", "/ limit"],
                      [[r["variant"], str(r["size"]), fmt_value(r["images_per_s"], digits=2),
                        fmt_value(r["seconds_per_image"], digits=3), f"{r['speedup']:.2f}x",
                        f"{r['speedup_same_size']:.2f}x", f"{r['peak_memory_mib']:.0f}"
                        + (f" (GPU {r['gpu_peak_memory_mib']:.0f})"
                           if r.get("gpu_peak_memory_mib") is not None else ""),
                        fmt_value(r["bbox_AP"], digits=1), fmt_value(r["bbox_AP50"], digits=1),
                        fmt_value(r["segm_AP"], digits=1), fmt_value(r["segm_AP50"], digits=1),
                        "yes" if r["equal_AP"] else "no",
                        fmt_value(r["achieved_gflops"], digits=0),
                        f"{100 * r['achieved_over_limit']:.0f}% of {r['precision']}"]
                       for r in rows]), "",
                  *([] if m["native_bf16"] or "bf16" in {r["precision"] for r in rows} else
                    ["bf16 not timed: this CPU has no native bfloat16.", ""]),
                  f"Speed-up: against the first row; same size: against DefaultPredictor at the "
                  f"config's size. Equal AP: bbox and segm AP and AP50 each within "
                  f"{EQUAL_AP_POINTS} point of DefaultPredictor at the same size.", ""]
    if "stages" in result:
        rows = result["stages"]["variants"]
        lines += [f"Where the time goes ({result['stages']['images']} images, one pass with "
                  "forward hooks; seconds per image):", "",
                  markdown_table(
                      ["variant", "s/image", *STAGES, "same size",
                       "same size, backbone free"],
                      [[r["variant"], fmt_value(r["seconds_per_image"], digits=4),
                        *[fmt_value(r["stage_seconds_per_image"][k], digits=4) for k in STAGES],
                        f"{r['speedup_same_size']:.2f}x",
                        f"{r['speedup_same_size_without_backbone']:.2f}x"] for r in rows]), "",
                  "Everything else: reading and decoding, resizing, normalizing, pasting masks, "
                  "RLE encoding, waiting for decoding workers. Backbone free: the speed-up over "
                  "DefaultPredictor at the same size if the variant's backbone took no time, the "
                  "bound on what a faster backbone alone can give.", ""]
    if "evaluation" in result:
        e = result["evaluation"]
        names = [k for k in e if isinstance(e[k], dict)]
        lines += [f"Evaluation of the reference's predictions ({e['images']} images):", "",
                  markdown_table(["evaluator", "seconds", "speed vs Detectron2"],
                                 [[k, fmt_value(e[k]["seconds"], digits=2),
                                   f"{e[k]['speed_ratio']:.2f}x"]
                                  for k in names]), ""]
    return "\n".join(lines)


def first_images(name, n):
    """A split registered under a new name with only its first ``n`` images."""
    subset = f"{name}_first{n}"
    if subset not in DatasetCatalog.list():
        DatasetCatalog.register(subset, lambda: DatasetCatalog.get(name)[:n])
        meta = MetadataCatalog.get(name).as_dict()
        meta.pop("name")
        meta.pop("json_file", None)  # the subset's COCO file is written from its records
        MetadataCatalog.get(subset).set(**meta)
    return subset


def save_results(result, output):
    """benchmark.json (NaN as null) and benchmark.md in ``output``."""
    write_json(os.path.join(output, "benchmark.json"), result, indent=2)
    with open(os.path.join(output, "benchmark.md"), "w") as f:
        f.write(markdown(result) + "\n")
