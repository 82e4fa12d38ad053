#!/usr/bin/env python3
"""Draw RUN_DIR/curves.png (loss, accuracy, validation, learning rate, throughput) for an existing run.

  python scripts/plot_run.py runs/demo
"""
import os
import sys

from trainer import curves


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0].startswith("-"):
        print("error: pass one run directory: python scripts/plot_run.py RUN_DIR", file=sys.stderr)
        return 2
    if not os.path.isfile(os.path.join(argv[0], "steps.csv")):
        print(f"error: {argv[0]} holds no steps.csv: pass the --output_dir of a training run", file=sys.stderr)
        return 2
    path = curves.draw(argv[0])
    if path is None:
        print("error: nothing drawn: install matplotlib (pip install -e '.[bench]'), or the run logged no step",
              file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
