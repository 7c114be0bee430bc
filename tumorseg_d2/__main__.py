"""``python -m tumorseg_d2 <command>``: the ``tumorseg`` command without its console script."""
from .cli import console

if __name__ == "__main__":
    console()
