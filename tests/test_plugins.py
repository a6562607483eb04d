"""Extending ffjax from outside it: registered label encodings and negative generators,
--plugins, and the refusal of a generator whose negatives do not fit the encoding."""

import json
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ffjax
from conftest import quietly
from ffjax import config, encodings, negatives
from ffjax.config import UsageError
from ffjax.negatives import Minibatch

PLUGIN = "experiments.self_contrastive"  # the fresh_registries fixture (conftest) unloads it


def _cfg(argv):
    cfg = config.parse_config(argv, config.Config())
    config.check_config(cfg)
    return cfg


def test_a_registered_encoding_is_a_command_line_choice(fresh_registries):
    made = []

    def factory(*, num_classes, strength):
        made.append((num_classes, strength))
        return encodings.NoLabel()

    encodings.ENCODINGS["blank"] = factory
    cfg = _cfg(["--label-encoding", "blank", "--negatives", "hybrid", "--hidden", "8"])
    assert isinstance(config.spec_of(cfg, 10, (28, 28, 1)).encoding, encodings.NoLabel)
    assert (10, 1.0) in made
    # What the encoding is, not its name, decides the checks: no label, no goodness readout.
    with pytest.raises(UsageError, match="--no-readout: with --label-encoding blank"):
        _cfg(["--label-encoding", "blank", "--negatives", "hybrid", "--hidden", "8",
              "--no-readout"])


def test_plugins_are_imported_before_the_names_are_read(fresh_registries):
    with pytest.raises(UsageError, match="--label-encoding pair: choose one of"):
        _cfg(["--label-encoding", "pair", "--negatives", "pair", "--hidden", "8"])
    cfg = _cfg(["--plugins", PLUGIN, "--label-encoding", "pair", "--negatives", "pair",
                "--hidden", "8"])
    spec = config.spec_of(cfg, 10, (28, 28, 1))
    plugin = sys.modules[PLUGIN]
    assert isinstance(spec.encoding, plugin.Pair) and spec.layer_shapes == ((8,),)
    assert spec.negative_generator is negatives.GENERATORS["pair"]
    assert not spec.negative_generator.uses_labels


def test_pair_positives_are_an_image_twice_and_negatives_two_different_images(
        fresh_registries):
    config.load_plugins(config.Config(plugins=(PLUGIN,)))
    x = jax.random.uniform(jax.random.key(0), (6, 784))
    pos = encodings.ENCODINGS["pair"](num_classes=10, strength=1.0).embed(x, None)
    np.testing.assert_array_equal(pos, jnp.concatenate([x, x], 1))
    neg = negatives.GENERATORS["pair"].generate(jax.random.key(1), Minibatch(x, None), None)
    np.testing.assert_array_equal(neg[:, :784], x)
    partners = [int(np.flatnonzero((np.asarray(x) == np.asarray(n)).all(1))[0])
                for n in neg[:, 784:]]
    assert all(p != i for i, p in enumerate(partners))  # never the image itself
    with pytest.raises(ValueError, match="batch size of at least 2"):
        negatives.GENERATORS["pair"].generate(jax.random.key(2), Minibatch(x[:1], None), None)


def test_an_unknown_plugin_is_refused_in_one_line(fresh_registries):
    with pytest.raises(UsageError, match="--plugins no_such_module: cannot import it"):
        _cfg(["--plugins", "no_such_module", "--hidden", "8"])


def test_negatives_that_do_not_fit_the_encoding_are_refused(fresh_registries, data_dir,
                                                             tmp_path, capsys):
    from experiments import mnist
    from ffjax import experiment
    # On the command line: in one line, before the run directory is made.
    out = tmp_path / "run"
    assert experiment.main(mnist.DEFAULTS, "t", [
        "--data-dir", str(data_dir), "--plugins", PLUGIN, "--label-encoding", "none",
        "--negatives", "pair", "--hidden", "8", "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: negatives 'pair' made examples of shape (1568,)")
    assert "\n" not in err and not out.exists()
    # In the library: when the step is traced, never a shape error from inside JAX.
    halves = negatives.NegativeGenerator(lambda key, batch, spec: batch.x[:, :392],
                                         uses_labels=False)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(40, 784)).astype(np.uint8)
    y = rng.integers(0, 10, size=40)
    spec = ffjax.FFSpec(hidden=(8,), label_encoding="none", negatives=halves)
    with pytest.raises(ValueError, match=r"made examples of shape \(392,\), but "
                                         r"label_encoding 'none' makes positives"):
        ffjax.fit(jax.random.key(0), x, y, spec, epochs=1, batch_size=20)
    short = negatives.NegativeGenerator(lambda key, batch, spec: batch.x[:3],
                                        uses_labels=False)
    with pytest.raises(ValueError, match="made 3 negatives for 20 positives"):
        ffjax.fit(jax.random.key(0), x, y,
                  ffjax.FFSpec(hidden=(8,), label_encoding="none", negatives=short),
                  epochs=1, batch_size=20)


def test_a_plugin_run_saves_its_plugins_and_resumes_bit_identically(
        fresh_registries, data_dir, tmp_path):
    from experiments import mnist
    from ffjax import experiment

    def main(argv):
        return quietly(experiment.main, mnist.DEFAULTS, "test", argv)[0]

    common = ["--data-dir", str(data_dir), "--hidden", "16", "8", "--epochs", "2",
              "--plugins", PLUGIN, "--label-encoding", "pair", "--negatives", "pair",
              "--train-size", "1000", "--checkpoint-every", "1"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main([*common, "--out-dir", str(whole)]) == 0
    assert json.loads((whole / "config.json").read_text())["plugins"] == [PLUGIN]
    shutil.copytree(whole, cut)
    shutil.rmtree(cut / "checkpoints" / "2")  # as if stopped after epoch 1
    (cut / "results.json").unlink()
    # A fresh process would not have the plugin: --resume imports it from config.json.
    del sys.modules[PLUGIN]
    del encodings.ENCODINGS["pair"], negatives.GENERATORS["pair"]
    assert main(["--resume", str(cut)]) == 0
    a, b = (json.loads((d / "results.json").read_text()) for d in (whole, cut))
    assert a["test_accuracy"] == b["test_accuracy"]
    assert a["test_accuracy_per_layer"] == b["test_accuracy_per_layer"]
