"""ffjax: the Forward-Forward algorithm as pure JAX functions."""

from ffjax.data import Dataset, DataError, check_arrays, load, split_validation
from ffjax.driver import (DivergedError, EpochReport, FitResult, GridPoint, fit, fit_grid,
                          make_grid, model_state)
from ffjax.epoch import (LayerState, TrainState, init_train_state, local_losses,
                         make_train_epoch, make_train_step, params_of, train_step)
from ffjax.inference import (Predictions, accuracy, label_scores, layer_goodness,
                             make_predict, predict)
from ffjax.encodings import Channels, FirstFeatures, NoLabel
from ffjax.labels import embed_label, embed_neutral, to_float, uniform_wrong_labels
from ffjax.layers import (Block, Conv, Dense, DenseParams, Local, from_flax, from_nnx,
                          init_dense, normalize, parse_block)
from ffjax.negatives import Minibatch, NegativeGenerator
from ffjax.network import forward, init_network
from ffjax.objective import LayerMetrics, ff_loss, goodness, make_objective
from ffjax.optim import OptimizerSpec, make_layer_optimizers, make_optimizer
from ffjax.spec import FFSpec

__version__ = "0.1.0"
