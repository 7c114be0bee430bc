r"""Grid search over training length and learning rate: one training per learning rate with a checkpoint at every length, chosen on validation, the choice evaluated on test.

  tumorseg sweep --config-file configs/mask_rcnn_R_18_FPN_scratch_cpu.yaml \
      --iters 200 400 600 --lrs 0.02 0.01 --metric segm/AP --output output/sweep

Rerun the same command to resume. --seeds N runs the grid once per seed (SEED s..s+N-1, s the
config's SEED or 0) into <output>/seed<k>, chooses on the mean over the seeds and reports the
chosen point's test figures as mean +/- sd.
"""
import os

from ..config import get_tumorseg_cfg, merge_config
from ..engine.run import setup
from ..sweep import DEFAULT_ITERS, DEFAULT_LRS, run_sweep, sweep_seed
from ..sweep.seeds import run_seeded_sweep
from .common import add_overrides, command_parser


def parse_args(argv=None):
    p = command_parser("sweep", __doc__)
    p.add_argument("--config-file", required=True)
    p.add_argument("--iters", type=int, nargs="+", default=list(DEFAULT_ITERS),
                   help="training lengths (default: %(default)s)")
    p.add_argument("--lrs", type=float, nargs="+", default=list(DEFAULT_LRS),
                   help="learning rates, SOLVER.BASE_LR (default: %(default)s)")
    p.add_argument("--metric", default="segm/AP",
                   help="validation figure that chooses (default: %(default)s; losses are "
                   "minimised, the rest maximised)")
    p.add_argument("--seeds", type=int, default=1, metavar="N",
                   help="train the grid with N seeds and choose on the mean (default: 1)")
    p.add_argument("--output", default="output/sweep")
    p.add_argument("--backend", choices=("sequential", "ray"), default="sequential",
                   help="'ray': trials as Ray Tune trials (pip install -e '.[ray]')")
    p.add_argument("--ray-address", help="an existing Ray cluster, e.g. 'auto' (default: a local "
                   "Ray); <output> must be on storage every node sees")
    p.add_argument("--cpus-per-trial", type=float, default=1)
    p.add_argument("--gpus-per-trial", type=float, default=0)
    add_overrides(p)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if any(k <= 0 for k in args.iters) or any(lr <= 0 for lr in args.lrs) or args.seeds < 1:
        raise SystemExit("--iters, --lrs and --seeds take positive values.")
    configured = merge_config(get_tumorseg_cfg(), args.config_file, args.opts).SEED
    resources = {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial}
    if args.seeds > 1:
        return seeded(args, max(configured, 0), resources)
    opts = list(args.opts) + ["SEED", str(sweep_seed(args.output, configured)),
                              "OUTPUT_DIR", args.output]
    cfg = setup(args.config_file, opts, training=True)  # logging in the sweep folder
    best = run_sweep(cfg, args.lrs, args.iters, args.output, args.metric, args.backend,
                     args.ray_address, resources)
    print(f"\n[sweep] chosen on {best['validated_on']} by {best['metric']}: lr {best['lr']:g}, "
          f"{best['iters']} iterations ({best['metric']} {best['value']:.4g})")
    if best["test"]:
        coco = best["test"]["coco"]
        print(f"[sweep] test split {best['test']['dataset']}, chosen point: " + ", ".join(
            f"{task} AP {res['AP']:.1f} AP50 {res['AP50']:.1f}" for task, res in coco.items()))
    print(f"[sweep] training iterations: {best['training_iterations']:,} for "
          f"{len(args.lrs) * len(set(args.iters))} grid points (separate runs would need "
          f"{best['separate_runs_iterations']:,})")
    written = [name for name in ("results.csv", "best.json", "validation.png", "test/report.md")
               if os.path.isfile(os.path.join(args.output, name))]
    print(f"[sweep] results: {os.path.join(args.output, 'results.md')} (and "
          f"{', '.join(written)} in {args.output})")
    return best


def seeded(args, first_seed, resources):
    seeds = list(range(first_seed, first_seed + args.seeds))
    cfg = setup(args.config_file, list(args.opts) + ["OUTPUT_DIR", args.output], training=True)
    best = run_seeded_sweep(cfg, seeds, args.lrs, args.iters, args.output, args.metric,
                            backend=args.backend, ray_address=args.ray_address,
                            resources=resources)
    print(f"\n[sweep] chosen on the mean over seeds {seeds} by {best['metric']}: lr "
          f"{best['lr']:g}, {best['iters']} iterations ({best['mean']:.4g} +/- {best['sd']:.2g})")
    for label, v in (best["test"] or {}).items():
        print(f"[sweep] test {label}: {v['mean']:.4g} +/- {v['sd']:.2g} over the seeds")
    print(f"[sweep] results: {os.path.join(args.output, 'results.md')} (and seeds.csv, "
          f"seeds.png, best.json, seed<k>/)")
    return best
