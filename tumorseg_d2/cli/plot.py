"""Plot losses, learning rate and validation metrics of one or several training runs on shared axes.

  tumorseg plot output/run1 output/run2 --output output/curves/runs.png
"""
import os

from ..evaluation.curves import plot_runs
from ..files import refuse_output_in_training_run
from .common import command_parser


def main(argv=None):
    p = command_parser("plot", __doc__)
    p.add_argument("run_dirs", nargs="+", help="OUTPUT_DIRs of training runs")
    p.add_argument("--output", help="PNG path (default: output/curves/<first run>.png; never "
                   "inside a training run, which only its training writes)")
    args = p.parse_args(argv)
    first = os.path.basename(os.path.normpath(args.run_dirs[0]))
    output = args.output or os.path.join("output", "curves", f"{first}.png")
    refuse_output_in_training_run(os.path.dirname(os.path.abspath(output)))
    keys = plot_runs(args.run_dirs, output)
    print(f"{len(keys)} curves of {len(args.run_dirs)} run(s) written to {output}")
