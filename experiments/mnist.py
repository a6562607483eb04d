"""MNIST with a Forward-Forward MLP: `python -m experiments.mnist --help`.

Default: the README's best run, the reference update on 4 x 2000 hidden units for 100
epochs, batch 100, every layer scored (about 90 minutes on 2 CPU cores).
The quick start: `python -m experiments.mnist --hidden 500 500 --epochs 25` (about a minute).
"""

import sys

from ffjax.experiment import Config, main

DEFAULTS = Config(dataset="mnist")

if __name__ == "__main__":
    sys.exit(main(DEFAULTS, __doc__.splitlines()[0]))
