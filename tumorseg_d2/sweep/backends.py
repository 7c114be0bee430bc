"""Where the sweep's trials run: one after another here, or as Ray Tune trials."""
import logging
import os

from .trial import read_rows, run_trial

logger = logging.getLogger("tumorseg_d2")


def run_trials_sequential(cfg, trials, dirs):
    """One trial after another, with the sweep's remaining time in the progress lines."""
    results = []
    for i, ((lr, lengths), out_dir) in enumerate(zip(trials, dirs)):
        later = list(zip(trials[i + 1:], dirs[i + 1:]))
        todo = [(ls, read_rows(d)) for (_, ls), d in later]
        progress = {"index": i + 1, "trials": len(trials),
                    "iters_after": sum(max(ls) - max(rows, default=0) for ls, rows in todo),
                    "evals_after": sum(k not in rows for ls, rows in todo for k in ls)}
        os.makedirs(out_dir, exist_ok=True)  # named below: it exists when the line is read
        logger.info(f"[sweep] trial {i + 1}/{len(trials)}: lr {lr:g}, lengths "
                    f"{', '.join(map(str, lengths))} -> {out_dir}")
        results += run_trial(cfg, lr, lengths, out_dir, progress)
    return results


def run_trials_ray(cfg, trials, dirs, output, address=None, resources=None):
    """Each trial as a Ray Tune trial on the cluster at ``address`` (None: a local Ray)."""
    try:
        import ray
        from ray import tune
    except ImportError as e:
        raise RuntimeError("--backend ray needs Ray Tune: pip install -e '.[ray]' (or "
                           "pip install 'ray[tune]'), or leave --backend at 'sequential'.") from e
    if not ray.is_initialized():
        ray.init(address=address, runtime_env={"env_vars": {
            k: v for k, v in os.environ.items() if k in ("DETECTRON2_DATASETS", "TUMORSEG_OFFLINE")
        }})
    cfg_yaml = cfg.dump()

    def trainable(config):
        lr, lengths, out_dir = config["trial"]
        rows = run_trial(cfg_yaml, lr, lengths, out_dir)
        tune.report({k: v for k, v in rows[-1].items() if isinstance(v, (int, float))})

    grid = [(lr, lengths, os.path.abspath(d)) for (lr, lengths), d in zip(trials, dirs)]
    tuner = tune.Tuner(
        tune.with_resources(trainable, resources or {"cpu": 1}),
        param_space={"trial": tune.grid_search(grid)},
        run_config=tune.RunConfig(name="tune", storage_path=os.path.abspath(
            os.path.join(output, "ray")), verbose=1),
    )
    failed = [r for r in tuner.fit() if r.error]
    if failed:
        raise RuntimeError(f"{len(failed)} Ray trial(s) failed; the first error: {failed[0].error}"
                           " (trial logs: <output>/trials/*/log.txt). Rerun to resume.")
    return [row for (_, lengths), d in zip(trials, dirs) for row in
            sorted(read_rows(d).values(), key=lambda r: r["iters"]) if row["iters"] in lengths]
