"""Fashion-MNIST with a Forward-Forward MLP: `python -m experiments.fashion_mnist --help`.

Default: the README's best run, the reference update on 4 x 2000 hidden units for 100
epochs, batch 100, with the Fashion-MNIST choices of the validation split: readout label
smoothing 0.1 and input noise 0.1 (about 90 minutes on 2 CPU cores).
A CPU-sized run: `python -m experiments.fashion_mnist --hidden 500 500 --epochs 25`.
"""

import sys

from ffjax.experiment import Config, main

DEFAULTS = Config(dataset="fashion_mnist", readout_label_smoothing=0.1, input_noise=0.1)

if __name__ == "__main__":
    sys.exit(main(DEFAULTS, __doc__.splitlines()[0]))
