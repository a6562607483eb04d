import json

import numpy as np
import pytest

from benchmarks import epoch_time


def test_epoch_time_benchmark_writes_its_record(tmp_path):
    out = tmp_path / "bench.json"
    epoch_time.main(["--configs", "784-16", "--repeats", "1", "--out", str(out)])
    record = json.loads(out.read_text())
    assert {"device", "jax_version", "date", "command", "results"} <= set(record)
    rows = record["results"]
    assert [r["variant"] for r in rows] == ["plain", "recipe"]
    for r in rows:
        assert r["sizes"] == [784, 16] and r["epoch_seconds_median"] > 0
        assert r["compile_seconds"] > 0 and r["infer_10k_seconds_median"] > 0
    assert rows[0]["one_pass_infer_10k_seconds_median"] is None
    assert rows[1]["one_pass_infer_10k_seconds_median"] > 0


def test_label_inference_benchmark_writes_its_record(tmp_path):
    from benchmarks import label_inference
    out = tmp_path / "li.json"
    label_inference.main(["--configs", "784-16-16", "--repeats", "1", "--out", str(out)])
    (row,) = json.loads(out.read_text())["results"]
    assert row["prediction_agreement"] > 0.99 and row["max_rel_goodness_diff"] < 1e-4
    assert row["shared_seconds_median"] > 0 and row["per_label_seconds_median"] > 0


def test_conv_compare_benchmark_writes_its_record(data_dir, tmp_path):
    from benchmarks import conv_compare
    out = tmp_path / "cc.json"
    conv_compare.main(["--data-dir", str(data_dir), "--hidden", "conv:4:3:s2:p2", "16",
                       "--output-norm", "batch", "--epochs", "1", "--train-size", "10000",
                       "--out", str(out)])
    rec = json.loads(out.read_text())
    assert rec["split"] == "validation" and rec["hidden"] == ["conv:4:3:s2:p2", "16"]
    assert rec["ff_config"]["output_norm"] == "batch"
    assert rec["ff_over_bp_epoch_time"] > 0
    assert 0.5 < rec["bp"][0]["accuracy"] <= 1 and 0 < rec["ff"][0]["accuracy"] <= 1


def test_refit_readout_reproduces_the_runs_own_readout_and_leaves_the_run_unchanged(
        data_dir, tmp_path, capsys):
    """The refit reads the features the run's own readout reads (its accuracy from them
    is the run's recorded validation figure), trains a readout that learns, writes its
    record, leaves the run directory byte-identical, and refuses runs it cannot score."""
    import hashlib
    from benchmarks import refit_readout
    from experiments import mnist
    from ffjax import experiment
    run = tmp_path / "run"
    assert experiment.main(mnist.DEFAULTS, "t", [
        "--data-dir", str(data_dir), "--hidden", "32", "32", "--epochs", "1",
        "--train-size", "3000", "--validation-size", "1000", "--out-dir", str(run)]) == 0

    def digest():
        return {p.relative_to(run): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(run.rglob("*")) if p.is_file()}

    before = digest()
    out = tmp_path / "refit.json"
    assert refit_readout.main([str(run), "--layers", "0", "1", "--epochs", "2",
                               "--out", str(out)]) == 0
    assert digest() == before
    rec = json.loads(out.read_text())
    results = json.loads((run / "results.json").read_text())
    assert abs(rec["own_readout_validation_accuracy"]
               - results["validation_accuracy_softmax"]) <= 1 / 1000
    (one,) = rec["refits"]
    assert one["refit"]["layers"] == [0, 1] and len(one["validation_accuracy_per_epoch"]) == 2
    assert one["validation_accuracy"] > 0.7 and {"device", "jax_version"} <= set(rec)
    # Refusals: one line each, nothing written.
    capsys.readouterr()
    assert refit_readout.main([str(run), "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert refit_readout.main([str(run), "--layers", "2", "--out", str(tmp_path / "x")]) == 2
    assert "the run has 2 layers" in capsys.readouterr().err
    no_val = tmp_path / "no-val"
    no_val.mkdir()
    cfg = json.loads((run / "config.json").read_text())
    (no_val / "config.json").write_text(json.dumps({**cfg, "validation_size": 0}))
    assert refit_readout.main([str(no_val), "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert "never on the test set" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_refit_readout_scores_the_joint_readout_with_either_readout(data_dir, tmp_path):
    """On a class-group run, the joint readout with the run's own readout is the run's
    recorded joint figure, and the refitted readout (here with dropout on its features)
    gives its own joint figures from the same class-group goodness."""
    from benchmarks import refit_readout
    from experiments import mnist
    from ffjax import experiment
    run = tmp_path / "run"
    assert experiment.main(mnist.DEFAULTS, "t", [
        "--data-dir", str(data_dir), "--hidden", "40", "40", "--objective", "group_softmax",
        "--label-encoding", "none", "--negatives", "none", "--peer-strength", "0",
        "--epochs", "1", "--train-size", "3000", "--validation-size", "1000",
        "--out-dir", str(run)]) == 0
    out = tmp_path / "refit.json"
    assert refit_readout.main([str(run), "--epochs", "2", "--dropout", "0", "0.2",
                               "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    recorded = json.loads((run / "results.json").read_text())[
        "validation_accuracy_joint_by_score_layers"]
    assert set(rec["own_joint_validation_accuracy"]) == set(recorded) == {
        "all", "all_but_first"}
    for name, acc in recorded.items():
        assert abs(rec["own_joint_validation_accuracy"][name] - acc) <= 1 / 1000
    # One refit per value, the features computed once; dropout changes the readout.
    assert [r["refit"]["dropout"] for r in rec["refits"]] == [0.0, 0.2]
    plain, dropped = rec["refits"]
    assert plain["validation_accuracy_per_epoch"] != dropped["validation_accuracy_per_epoch"]
    for r in rec["refits"]:
        assert r["validation_accuracy"] > 0.3
        assert all(0 < a <= 1 for a in r["joint_validation_accuracy"].values())
    # --from-own goes on from the run's readout: with a vanishing rate it is that readout.
    own = tmp_path / "own.json"
    assert refit_readout.main([str(run), "--from-own", "--epochs", "1", "--lr", "1e-12",
                               "--weight-decay", "0", "--out", str(own)]) == 0
    rec = json.loads(own.read_text())
    (one,) = rec["refits"]
    assert abs(one["validation_accuracy"] - rec["own_readout_validation_accuracy"]) <= 1e-3
    for name, acc in rec["own_joint_validation_accuracy"].items():
        assert abs(one["joint_validation_accuracy"][name] - acc) <= 1e-3
    assert refit_readout.main([str(run), "--dropout", "1", "--out",
                               str(tmp_path / "x.json")]) == 2
    assert refit_readout.main([str(run), "--from-own", "--standardize", "--out",
                               str(tmp_path / "x.json")]) == 2
    from benchmarks import rescore  # this run has no batch norm to recalibrate
    assert rescore.main([str(run), "--recalibrate-bn", "--out",
                         str(tmp_path / "x.json")]) == 2
    assert not (tmp_path / "x.json").exists()


def test_rescore_reproduces_the_runs_final_evaluation_and_leaves_the_run_unchanged(
        data_dir, tmp_path, capsys):
    """Rescoring a finished class-group run gives its own recorded validation figures
    (every readout, the joint one included), writes its record, leaves the run directory
    byte-identical, and refuses an existing --out in one line."""
    from benchmarks import rescore
    from experiments import mnist
    from ffjax import experiment
    run = tmp_path / "run"
    assert experiment.main(mnist.DEFAULTS, "t", [
        "--data-dir", str(data_dir), "--preset", "mnist-conv", "--hidden", "conv:10:3:p2",
        "20", "--epochs", "1", "--train-size", "3000", "--validation-size", "1000",
        "--out-dir", str(run)]) == 0
    before = {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    out = tmp_path / "rescore.json"
    assert rescore.main([str(run), "--out", str(out)]) == 0
    assert {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()} == before
    (rec,) = json.loads(out.read_text())["runs"]
    results = json.loads((run / "results.json").read_text())
    for key in ("validation_accuracy", "validation_accuracy_softmax",
                "validation_accuracy_per_layer", "validation_accuracy_by_score_layers",
                "validation_accuracy_joint_by_score_layers"):
        np.testing.assert_allclose(np.asarray(pytree_values(rec[key])),
                                   np.asarray(pytree_values(results[key])), atol=1e-6)
    assert "joint (all but first)" in capsys.readouterr().out
    # Weighted joint readouts: weight 1 is the recorded joint readout, and weight 0 over
    # all layers is the class-group readout (the log-softmax of each layer's goodness is
    # the goodness up to a per-example constant).
    weighted = tmp_path / "weighted.json"
    assert rescore.main([str(run), "--out", str(weighted), "--joint-weights", "0", "1"]) == 0
    (wrec,) = json.loads(weighted.read_text())["runs"]
    by = wrec["validation_accuracy_joint_weighted"]
    assert set(by) == {"all", "all_but_first", "last_two", "last"}
    for name in ("all", "all_but_first"):
        assert by[name]["1.0"] == pytest.approx(
            results["validation_accuracy_joint_by_score_layers"][name], abs=1e-6)
    assert by["all"]["0.0"] == pytest.approx(
        results["validation_accuracy_by_score_layers"]["all"], abs=1e-6)
    assert "readout x 1.0" in capsys.readouterr().out
    # With recomputed batch-norm statistics: every readout again, the run untouched.
    recal = tmp_path / "recal.json"
    assert rescore.main([str(run), "--out", str(recal), "--recalibrate-bn"]) == 0
    assert {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()} == before
    (rrec,) = json.loads(recal.read_text())["runs"]
    assert set(rrec["recalibrated_bn"]) == {k for k in rrec if k.startswith("validation_")}
    assert all(0 < a <= 1 for a in pytree_values(
        rrec["recalibrated_bn"]["validation_accuracy_joint_by_score_layers"]))
    assert "with recalibrated batch-norm statistics" in capsys.readouterr().out
    assert rescore.main([str(run), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "exists" in err and len(err.strip().splitlines()) == 1


def pytree_values(v):
    """A result's number, list or dict of numbers as a flat list (dicts by sorted key)."""
    if isinstance(v, dict):
        return [x for k in sorted(v) for x in pytree_values(v[k])]
    return list(v) if isinstance(v, list) else [v]


def test_goodness_gap_reads_the_runs_layers_and_leaves_the_run_unchanged(
        data_dir, tmp_path, capsys):
    """The positives' pass rates on the training images match the goodness the
    ten-label inference computes at the true label (another code path), the negatives'
    are fractions, the run directory is untouched, and bad --examples is refused."""
    import hashlib

    import numpy as np
    from benchmarks import finished_run, goodness_gap
    from experiments import mnist
    from ffjax import experiment, inference
    run = tmp_path / "run"
    assert experiment.main(mnist.DEFAULTS, "t", [
        "--data-dir", str(data_dir), "--hidden", "32", "32", "--epochs", "1",
        "--train-size", "3000", "--validation-size", "1000", "--out-dir", str(run)]) == 0
    before = {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    out = tmp_path / "gap.json"
    assert goodness_gap.main([str(run), "--examples", "1000", "--out", str(out)]) == 0
    assert {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()} == before
    rec = json.loads(out.read_text())
    _, spec, split, state, _ = finished_run.load_run(run)
    params = tuple(layer.params for layer in state.layers)
    g = np.asarray(inference.layer_goodness(params, split.x_fit[:1000], spec))
    g_true = g[np.arange(1000), :, np.asarray(split.y_fit[:1000])]  # (B, L)
    expected = np.mean(g_true > np.asarray(spec.thetas), 0)
    assert np.allclose(rec["training"]["positives_above_theta"], expected, atol=2e-3)
    for part in ("training", "validation"):
        assert all(0 <= v <= 1 for v in rec[part]["negatives_below_theta"])
    capsys.readouterr()
    for bad in ("500", "2000"):  # not a multiple of 1000; more than the validation split
        assert goodness_gap.main([str(run), "--examples", bad, "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err
        assert "multiple of 1000 up to" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
    # The weighted joint readout of benchmarks.rescore needs class groups: this dense
    # run with the label in the input is refused in one line, before any evaluation.
    from benchmarks import rescore
    assert rescore.main([str(run), "--joint-weights", "1", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--joint-weights needs" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_every_ablation_row_is_a_valid_command(fresh_registries):
    """Each row of benchmarks.ablations (the commands the docs give to regenerate their
    validation tables) is accepted by the entry point's checks and builds its spec, so a
    regeneration never stops on a row that no longer parses. (A row's --plugins is
    imported by the checks; the fixture keeps what it registers from the other tests.)"""
    from benchmarks import ablations
    from experiments import mnist
    from ffjax import config, data
    for question, label, flags in ablations.ROWS:
        cfg = config.parse_config(ablations.run_flags(flags), mnist.DEFAULTS)
        config.check_config(cfg)
        shape = data.IMAGE_SHAPES[data.canonical_name(cfg.dataset)]
        spec = config.spec_of(cfg, 10, shape)
        assert len(spec.hidden) == len(cfg.hidden), (question, label)


def test_a_standardized_refit_is_the_plain_refit_of_standardized_features():
    """--standardize scales every feature with the training split's mean and std, the
    same for the validation split, and changes nothing else."""
    import dataclasses

    import numpy as np
    from benchmarks import refit_readout
    rng = np.random.default_rng(0)
    fit = [rng.exponential(size=(300, 6)).astype(np.float32) * [1, 10, 0.1, 1, 5, 0]]
    val = [rng.exponential(size=(100, 6)).astype(np.float32) * [1, 10, 0.1, 1, 5, 0]]
    y_fit, y_val = rng.integers(0, 3, 300), rng.integers(0, 3, 100)
    how = refit_readout.Refit(layers=(0,), epochs=2, lr=0.05, momentum=0.9,
                              weight_decay=0.0, label_smoothing=0.0, batch_size=50, seed=0,
                              standardize=True, dropout=0.0, optimizer="sgd")
    mean, std = fit[0].mean(0), fit[0].std(0) + 1e-3
    scaled = refit_readout.refit(fit, y_fit, val, y_val, how, 3)
    by_hand = refit_readout.refit([(fit[0] - mean) / std], y_fit, [(val[0] - mean) / std],
                                  y_val, dataclasses.replace(how, standardize=False), 3)
    assert scaled.curve == by_hand.curve
    assert scaled.train_accuracy == by_hand.train_accuracy
    np.testing.assert_array_equal(scaled.val_logits, by_hand.val_logits)
