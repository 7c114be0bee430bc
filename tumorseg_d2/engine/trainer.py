"""The tumorseg-d2 trainer: Detectron2's DefaultTrainer with Adam/AdamW, validation-driven
checkpoint selection, validation loss, early stopping, weights that fail fast when missing, atomic
checkpoints and a --resume that continues exactly (optimizer, schedule, random state, data order)."""
import contextlib
import logging
import os
import re
import shutil
import time
import weakref

import torch
from detectron2.data import MetadataCatalog, build_detection_train_loader
from detectron2.engine import DefaultTrainer, TrainerBase, hooks
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import DatasetEvaluators
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter, EventStorage, JSONWriter, TensorboardXWriter

from ..checkpoint import SafeCheckpointer, resolve_weights
from ..config import derived
from ..data.loader import (TrainingState, build_resumable_train_loader, build_test_loader,
                           train_mapper)
from ..evaluation.evaluators import OverlapEvaluator, TumorCOCOEvaluator
from ..evaluation.report import format_results
from ..files import write_json
from ..modeling.gather_roi_align import use_gather_roi_align
from ..rng import preserve_rng
from .hooks import (BestCheckpointer, DeferredWriter, EarlyStopping, FlushBeforeCheckpoint,
                    ValidationLoss, drop_metrics_from)
from .amp import step_trainer
from .ema import EMAHook, ModelEMA
from .schedule import build_lr_scheduler

logger = logging.getLogger(__name__)


class Trainer(DefaultTrainer):
    def __init__(self, cfg):
        # DefaultTrainer.__init__, but with a model that DistributedDataParallel can wrap on the
        # CPU too (v0.6 always passes a GPU index), so the distributed path runs without a GPU.
        TrainerBase.__init__(self)
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        on_gpu = any(p.is_cuda for p in model.parameters())
        model = create_ddp_model(model, broadcast_buffers=False,
                                 device_ids=[comm.get_local_rank()] if on_gpu else None)
        self._trainer = step_trainer(cfg, model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = SafeCheckpointer(model, cfg.OUTPUT_DIR, averaged=False,
                                             trainer=weakref.proxy(self))
        self.ema = ModelEMA(model, cfg.MODEL_EMA.DECAY) if cfg.MODEL_EMA.ENABLED else None
        if self.ema is not None:
            self.checkpointer.add_checkpointable("ema", self.ema)
        self.start_iter, self.max_iter, self.cfg = 0, cfg.SOLVER.MAX_ITER, cfg
        self._stop_requested = False
        # Wall seconds of the sessions that trained the iterations before the start one (one entry
        # per session, from the checkpoint resumed from): each iteration is counted once.
        self._sessions, self._session_start = [], None
        self.register_hooks(self.build_hooks())
        if comm.is_main_process():
            os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)  # Detectron2's writers made it; ours wait
            check_disk_space(cfg, self.model)

    @classmethod
    def build_model(cls, cfg):
        """Detectron2's model, with the RoIAlign and memory layout of MODEL.ROI_ALIGN and
        MODEL.CHANNELS_LAST: the same parameters, so checkpoints load anywhere."""
        model = super().build_model(cfg)
        if cfg.MODEL.ROI_ALIGN == "gather":
            use_gather_roi_align(model, flatten_pixels_first=False)
        if cfg.MODEL.CHANNELS_LAST:
            model.to(memory_format=torch.channels_last)
        return model

    @classmethod
    def build_optimizer(cls, cfg, model):
        name = cfg.SOLVER.OPTIMIZER.upper()
        if name == "SGD":
            return super().build_optimizer(cfg, model)
        params = get_default_optimizer_params(
            model,
            base_lr=cfg.SOLVER.BASE_LR,
            weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
            bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
            weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
        )
        optim = {"ADAM": torch.optim.Adam, "ADAMW": torch.optim.AdamW}[name]
        # On the CPU, fused: one kernel over all parameters instead of a dozen small operations
        # per tensor (the same update). Not on CUDA, where the default is already batched and a
        # fused step would take float16's GradScaler unscaling inside it, after Detectron2's
        # gradient clipping, which would then clip scaled gradients.
        on_cpu = all(p.device.type == "cpu" for p in model.parameters())
        return maybe_add_gradient_clipping(cfg, optim)(
            params, lr=cfg.SOLVER.BASE_LR, betas=tuple(cfg.SOLVER.BETAS),
            weight_decay=cfg.SOLVER.WEIGHT_DECAY, fused=on_cpu or None,
        )

    @classmethod
    def build_train_loader(cls, cfg):
        """A loader that --resume continues exactly (tumorseg_d2/data/loader.py); Detectron2's for
        samplers other than TrainingSampler."""
        if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
            logger.warning(f"DATALOADER.SAMPLER_TRAIN {cfg.DATALOADER.SAMPLER_TRAIN}: Detectron2's "
                           "loader, which restarts its data order on --resume.")
            return build_detection_train_loader(cfg, mapper=train_mapper(cfg))
        # Every process must draw from one stream (each takes its share of the positions).
        seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
        return build_resumable_train_loader(cfg, seed)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_test_loader(cfg, dataset_name)

    @property
    def data_stream(self):
        return getattr(self._trainer.data_loader, "stream", None)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        if not cfg.MODEL.MASK_ON:
            return TumorCOCOEvaluator(dataset_name, output_folder, tasks=("bbox",))
        return DatasetEvaluators([TumorCOCOEvaluator(dataset_name, output_folder),
                                  OverlapEvaluator(dataset_name)])

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """Evaluate on cfg.DATASETS.TEST; print and save each dataset's table and metrics.json."""
        results = super().test(cfg, model, evaluators)
        # DefaultTrainer.test unwraps the results of a single dataset.
        per_dataset = {cfg.DATASETS.TEST[0]: results} if len(cfg.DATASETS.TEST) == 1 else results
        if comm.is_main_process():
            for name, res in per_dataset.items():
                folder = os.path.join(cfg.OUTPUT_DIR, "inference", name)
                write_json(os.path.join(folder, "metrics.json"), res, indent=2)
                logger.info(f"COCO results on {name} (saved in {folder}/metrics.json):\n"
                            + format_results(res))
        return results

    def build_writers(self):
        """Detectron2's writers, made at the first write: by then --resume has dropped the
        metrics.json rows it will compute again, and TensorBoard hides the events of those
        iterations from the earlier session (purge_step)."""
        out = self.cfg.OUTPUT_DIR
        return [CommonMetricPrinter(self.max_iter),
                DeferredWriter(lambda: JSONWriter(os.path.join(out, "metrics.json"))),
                DeferredWriter(lambda: TensorboardXWriter(out, purge_step=self.start_iter or None))]

    def build_hooks(self):
        cfg = self.cfg
        ret = super().build_hooks()
        if self.data_stream is not None:
            ret.insert(0, TrainingState(self.data_stream))
        # DefaultTrainer evaluates DATASETS.TEST while training; we validate on DATASETS.VAL so the
        # test split never takes part in a choice.
        val_cfg = derived(cfg, {"DATASETS.TEST": cfg.DATASETS.VAL})
        at = next(i for i, h in enumerate(ret) if isinstance(h, hooks.EvalHook))
        period = cfg.TEST.EVAL_PERIOD
        extra = [hooks.EvalHook(period, lambda: self.validate(val_cfg))]
        if cfg.TEST.VAL_LOSS and cfg.DATASETS.VAL:
            extra.insert(0, ValidationLoss(cfg, cfg.DATASETS.VAL[0], period))
        if self.ema is not None:  # before validation, which judges the average
            extra.insert(0, EMAHook(self.ema))
        # On every process: each takes the same decisions from the same (broadcast) figures;
        # only the main process writes.
        if cfg.TEST.BEST_METRIC and period > 0:
            extra.append(BestCheckpointer(period, self.checkpointer, cfg.TEST.BEST_METRIC,
                                          cfg.TEST.BEST_MODE))
        if cfg.TEST.EARLY_STOP_PATIENCE > 0:
            extra.append(EarlyStopping(period, cfg.TEST.BEST_METRIC, cfg.TEST.EARLY_STOP_PATIENCE,
                                       cfg.TEST.BEST_MODE))
        ret[at:at + 1] = extra
        for saver in (h for h in ret if isinstance(h, hooks.PeriodicCheckpointer)):
            saver.max_to_keep = cfg.SOLVER.CHECKPOINTS_TO_KEEP or None
        return checkpoint_last(ret)

    def validated_weights(self):
        """A block within which the model holds the weights validation judges: the moving average
        with MODEL_EMA, else its own."""
        return self.ema.applied_to(self.model) if self.ema is not None else \
            contextlib.nullcontext()

    def validate(self, val_cfg):
        # preserve_rng: so that validating does not change what is trained
        with preserve_rng(), self.validated_weights():
            results = self.test(val_cfg, self.model)
        # Evaluators return the figures on the main process only ({} elsewhere): share them, so
        # that best checkpoint and early stop are decided alike on every process.
        return comm.all_gather(results)[0] if comm.get_world_size() > 1 else results

    def resume_or_load(self, resume=True):
        if not (resume and self.checkpointer.has_checkpoint()):
            # Only the initial weights are resolved: a resumed run reads its own last checkpoint.
            self.cfg.defrost()
            self.cfg.MODEL.WEIGHTS = resolve_weights(self.cfg.MODEL.WEIGHTS)
            self.cfg.freeze()
        super().resume_or_load(resume=resume)
        if self.ema is not None and self.ema.updates == 0:
            # Not resumed from an average: start it from the weights training starts from.
            self.ema.reset(self.model)
        if self.data_stream is not None:  # continue the data stream where the checkpoint left it
            self.data_stream.start = self.start_iter * self.cfg.SOLVER.IMS_PER_BATCH
        if comm.is_main_process():
            dropped = drop_metrics_from(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json"),
                                        self.start_iter)
            if dropped:
                logger.info(f"metrics.json: {dropped} row(s) from iteration {self.start_iter} on, "
                            "written by an earlier session, are dropped (they are computed again).")

    # Detectron2 v0.6's DefaultTrainer leaves the optimizer out of its checkpoints, so --resume
    # restarted Adam's moments; later Detectron2 saves it under "_trainer", as here.
    def state_dict(self):
        ret = super().state_dict()
        # The last iteration done: after a completed run iter is MAX_ITER (one past it), and
        # model_best.pth, saved by the validation after training, must not make --resume skip one.
        ret["iteration"] = min(ret["iteration"], self.max_iter - 1)
        ret["_trainer"] = self._trainer.state_dict()
        ret["sessions"] = self.sessions()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])
        else:
            logger.warning("The checkpoint has no optimizer state (saved by Detectron2 v0.6?): the "
                           "optimizer starts afresh.")
        self._sessions = list(state_dict.get("sessions", []))

    def iterations_done(self):
        # iter is the iteration in progress inside the loop, MAX_ITER + 0/1 after a completed one.
        return min(self.iter + 1, self.max_iter)

    def sessions(self):
        """[{"from", "to", "seconds"}]: the iterations each training session ran (from inclusive,
        to exclusive) and its wall seconds, up to now; a resumed session starts where the
        checkpoint ended, so no iteration is counted twice."""
        done = list(self._sessions)
        if self._session_start is not None:
            done.append({"from": self.start_iter, "to": self.iterations_done(),
                         "seconds": round(time.perf_counter() - self._session_start, 3)})
        return done

    def request_stop(self):
        self._stop_requested = True

    def train(self):
        """TrainerBase.train's loop with one addition: a hook may end it early (request_stop)."""
        logger.info(f"Starting training from iteration {self.start_iter}")
        self.iter = self.start_iter
        self._session_start = time.perf_counter()
        with EventStorage(self.start_iter) as self.storage:
            try:
                self.before_train()
                for self.iter in range(self.start_iter, self.max_iter):
                    self.before_step()
                    self.run_step()
                    self.after_step()
                    if self._stop_requested:
                        break
                else:
                    self.iter += 1  # iter == max_iter tells after_train the run completed
            except FloatingPointError as e:
                raise FloatingPointError(self._diverged_message(e)) from e
            except Exception:
                logger.exception("Exception during training:")
                raise
            finally:
                self.after_train()
                stop_loader_workers(self._trainer)

    def _diverged_message(self, error):
        bad = re.findall(r"'(\w+)': (?:nan|-?inf)", str(error)) or ["total_loss"]
        last = (os.path.basename(self.checkpointer.get_checkpoint_file())
                if self.checkpointer.has_checkpoint() else None)
        return (f"Training stopped: {', '.join(bad)} became NaN or infinite at iteration "
                f"{self.iter}. Nothing after the last good checkpoint was saved: "
                + (f"{last} in {self.cfg.OUTPUT_DIR} (continue from it with --resume once fixed). "
                   if last else "there is none yet. ")
                + "Lower SOLVER.BASE_LR or lengthen SOLVER.WARMUP_ITERS, enable "
                "SOLVER.CLIP_GRADIENTS.ENABLED True, or check the data with tools/check_dataset.py."
                f"\n(Detectron2: {error})")


def stop_loader_workers(step_trainer):
    """End the training loader's worker processes when training ends. Left to the garbage
    collector (the trainer sits in reference cycles), the loader's queues may be finalized before
    it, and each worker then waits out PyTorch's 5 s shutdown timeout: 40 s with 8 workers, found
    on a GPU, where the workers of a finished run also slowed the next one down."""
    batches = getattr(step_trainer, "_data_loader_iter", None)
    if hasattr(batches, "close"):  # a generator (batching by aspect ratio) holding the iterator
        batches.close()
    elif hasattr(batches, "_shutdown_workers"):  # a DataLoader's own iterator
        batches._shutdown_workers()


def checkpoint_last(hooks_list):
    """Move the periodic checkpointer after validation, checkpoint selection and early stopping
    (Detectron2 saves before them), with the pending metrics written just before it: a checkpoint
    then holds the state of every decision up to its iteration, and --resume neither repeats nor
    skips one."""
    saver = next((h for h in hooks_list if isinstance(h, hooks.PeriodicCheckpointer)), None)
    if saver is None:  # not the main process
        return hooks_list
    ret = [h for h in hooks_list if h is not saver]
    writer = next((h for h in ret if isinstance(h, hooks.PeriodicWriter)), None)
    if writer is not None:
        ret.append(FlushBeforeCheckpoint(writer, saver.period))
    return ret + [saver]


def check_disk_space(cfg, model):
    """Fail before training, not at the first save, when a checkpoint cannot fit."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    per_param = {"SGD": 2, "ADAM": 3, "ADAMW": 3}.get(cfg.SOLVER.OPTIMIZER.upper(), 3)
    per_param += cfg.MODEL_EMA.ENABLED  # the moving average
    checkpoint = weights * per_param  # weights plus the optimizer's state
    free = shutil.disk_usage(cfg.OUTPUT_DIR).free
    if free < 2 * checkpoint:  # an atomic save holds the new file beside the old one
        raise OSError(
            f"Only {free / 1e6:.0f} MB free on the disk of OUTPUT_DIR {cfg.OUTPUT_DIR}; a checkpoint "
            f"of this model takes about {checkpoint / 1e6:.0f} MB and saving one safely needs twice "
            "that. Free some space or set OUTPUT_DIR to a folder on another disk.")


def check_num_classes(cfg):
    """MODEL.ROI_HEADS.NUM_CLASSES must match the training dataset's classes."""
    for name in cfg.DATASETS.TRAIN + cfg.DATASETS.VAL + cfg.DATASETS.TEST:
        classes = MetadataCatalog.get(name).get("thing_classes")
        if classes is not None and len(classes) != cfg.MODEL.ROI_HEADS.NUM_CLASSES:
            raise ValueError(
                f"MODEL.ROI_HEADS.NUM_CLASSES is {cfg.MODEL.ROI_HEADS.NUM_CLASSES} but dataset "
                f"'{name}' has {len(classes)} classes {classes}. Set MODEL.ROI_HEADS.NUM_CLASSES "
                f"{len(classes)} (the *_agnostic_* datasets have 1 class, the others 2)."
            )
