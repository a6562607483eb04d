"""MNIST with a Forward-Forward MLP: `python -m experiments.mnist --help`.

Default: 4 x 2000 hidden units, 60 epochs, batch 100 (the paper's setting; a GPU job).
A CPU-sized run: `python -m experiments.mnist --hidden 500 500 --epochs 2`.
"""

import sys

from ffjax.experiment import Config, main

DEFAULTS = Config(dataset="mnist")

if __name__ == "__main__":
    sys.exit(main(DEFAULTS, __doc__.splitlines()[0]))
