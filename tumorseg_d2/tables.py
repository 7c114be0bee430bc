"""The one number formatter and the one table writer (Markdown and CSV) of every report."""
import csv
import math

from tabulate import tabulate


def fmt_value(v, pct=False, digits=None):
    """A figure as text: "n/a" for a missing or undefined (NaN) one; floats with ``digits``
    decimals (default 2 for percentages, 3 for fractions); integers and text as they are."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits if digits is not None else 2 if pct else 3}f}"
    return str(v)


def markdown_table(headers, rows, aligned=False, floatfmt=".2f"):
    """A Markdown (pipe) table. Compact for files; ``aligned`` pads the columns for a console
    (numbers in ``floatfmt``, NaN as nan)."""
    if aligned:
        return tabulate(rows, headers=list(headers), floatfmt=floatfmt, tablefmt="pipe")
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def write_csv(path, rows, columns=None):
    """``rows`` (dicts) as CSV with ``columns`` (default: the first row's keys; others left out)."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns or rows[0]), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
