"""The command line: ``tumorseg <command> [options]``, one module per command, each owning its
arguments. ``tools/*.py`` are Detectron2-style aliases of the same commands."""
import difflib
import importlib
import sys

# command: (module, what it does)
COMMANDS = {
    "demo": ("demo", "train, evaluate and draw on the real data, or on a phantom (README's first "
             "command)"),
    "train": ("train", "train a config, then evaluate on the test split (tools/train_net.py)"),
    "evaluate": ("evaluate", "COCO AP, Dice/IoU, detection figures, plots and report.md of a "
                 "checkpoint on a split; volumetric figures on a volume with its mask"),
    "predict": ("predict", "predict tumors on images (overlays, COCO json) and DICOM/NIfTI "
                "volumes (mask, montage, lesion volumes)"),
    "visualize": ("visualize", "panels (image, truth, prediction, probability) of a split"),
    "sweep": ("sweep", "grid search over learning rate and training length"),
    "crossval": ("crossval", "grouped k-fold cross-validation by patient: a table of every "
                 "figure per fold, mean +/- sd"),
    "compare": ("compare", "trained runs side by side on one split: table and figure"),
    "check": ("check", "check COCO splits for defects; write a fixed copy"),
    "benchmark": ("benchmark", "speed, memory and AP of inference, training and data loading"),
    "benchmark-eval": ("benchmark_eval", "speed of the evaluation itself"),
    "plot": ("plot", "training curves of one or several runs"),
}


def usage():
    width = max(map(len, COMMANDS))
    lines = ["usage: tumorseg <command> [options]   (tumorseg <command> --help for its options and "
             "an example)", "", "commands:"]
    lines += [f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return None
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        near = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" Did you mean '{near[0]}'?" if near else ""
        print(f"tumorseg: unknown command '{name}'.{hint}\n\n{usage()}", file=sys.stderr)
        sys.exit(2)
    module = importlib.import_module(f"{__name__}.{COMMANDS[name][0]}")
    return module.main(rest)


def console():
    """The ``tumorseg`` console script (its exit status is not the command's returned results)."""
    main()
