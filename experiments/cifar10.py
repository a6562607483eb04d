"""CIFAR-10 with a convolutional Forward-Forward network: `python -m experiments.cifar10 --help`.

Default: --preset cifar10-conv (four conv layers, channel-wise class-group competition,
50 epochs; a GPU job, not yet measured). The data come from --data-dir (a folder holding
cifar10/cifar-10-binary.tar.gz or its extracted cifar-10-batches-bin/) or through TFDS.
"""

import sys

from ffjax.experiment import Config, main

DEFAULTS = Config(dataset="cifar10", preset="cifar10-conv")

if __name__ == "__main__":
    sys.exit(main(DEFAULTS, __doc__.splitlines()[0]))
