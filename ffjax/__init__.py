"""ffjax: the Forward-Forward algorithm as pure JAX functions."""

from ffjax.data import Dataset, DataError, check_arrays, load, split_validation
from ffjax.trainer import EpochReport, FitResult, fit
from ffjax.inference import (Predictions, accuracy, label_scores, layer_goodness,
                             make_predict, predict)
from ffjax.labels import embed_label, embed_neutral, to_float, uniform_wrong_labels
from ffjax.layers import DenseParams, block, forward, init_dense, init_network, normalize
from ffjax.objective import LayerMetrics, ff_loss, goodness, layer_metrics
from ffjax.optim import layer_learning_rates, make_layer_optimizers, make_optimizer
from ffjax.train import (LayerState, TrainState, init_train_state, local_losses,
                         make_train_epoch, params_of, train_step)

__version__ = "0.1.0"
