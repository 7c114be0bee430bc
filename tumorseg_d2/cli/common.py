"""What every command's argument parser shares: its name under ``tumorseg``, the description and
example from the command module's docstring, and the trailing KEY VALUE config overrides."""
import argparse
import os
import re

CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")


def command_parser(name, doc):
    """An ArgumentParser for ``tumorseg <name>``: ``doc``'s first line is the description, the rest
    (examples) is shown after the options."""
    summary, _, example = doc.strip().partition("\n")
    return argparse.ArgumentParser(
        prog=f"tumorseg {name}", description=summary,
        epilog=f"example:\n{example.strip(chr(10))}" if example.strip() else None,
        formatter_class=argparse.RawDescriptionHelpFormatter)


def add_overrides(parser, help="KEY VALUE config overrides (last on the line)"):
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE", help=help)


def split_overrides(items):
    """(paths, overrides): ``items`` cut at the first config key that is not an existing path."""
    for i, item in enumerate(items):
        if CONFIG_KEY.match(item) and not os.path.exists(item):
            return items[:i], items[i:]
    return items, []
