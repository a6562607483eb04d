"""benchmarks.compare: the --quick run writes a complete record, table and plots."""

import json

import pytest

from benchmarks import baselines, compare


def test_time_to_targets_takes_the_first_epoch_at_or_below_each_target():
    rows = [{"epoch": 1, "train_seconds_cumulative": 1.0, "test_accuracy": 0.95},
            {"epoch": 2, "train_seconds_cumulative": 2.0, "test_accuracy": 0.975},
            {"epoch": 3, "train_seconds_cumulative": 3.0, "test_accuracy": 0.99}]
    got = compare.time_to_targets(rows, [0.03, 0.02, 0.005])
    assert got == {"0.03": {"seconds": 2.0, "epoch": 2},
                   "0.02": {"seconds": 3.0, "epoch": 3}, "0.005": None}


def test_mlp_baseline_has_the_ff_architecture():
    import jax
    import jax.numpy as jnp
    model = baselines.MLP((32, 16), 10)
    params = model.init(jax.random.key(0), jnp.zeros((1, 784)))["params"]
    shapes = [params[f"Dense_{i}"]["kernel"].shape for i in range(3)]
    assert shapes == [(784, 32), (32, 16), (16, 10)]


def test_quick_compare_writes_record_table_and_plots(tmp_path, data_dir):
    argv = ["--quick", "--data-dir", str(data_dir), "--out-dir", str(tmp_path),
            "--epochs", "1", "--n-train", "1000", "--n-test", "500",
            "--widths", "16", "--depths", "2", "--batches", "100", "--name", "q",
            "--hidden", "16", "16", "--repeats", "1", "--matmul-n", "128"]
    assert compare.main(argv) == 0
    record_path = tmp_path / "q.json"
    record = json.loads(record_path.read_text())
    assert {"device", "jax_version", "date", "command", "matmul_peak_flops"} <= set(record)
    assert record["num_train"] == 1000 and record["num_test"] == 500
    assert [m["model"] for m in record["models"]] == list(compare.MODELS)
    for m in record["models"]:
        assert len(m["epochs"]) == 1 and 0.0 <= m["final_test_accuracy"] <= 1.0
        assert m["epoch_seconds_median"] > 0 and m["compile_seconds"] > 0
        assert set(m["time_to_target_error"]) == {"0.03", "0.02", "0.015"}
        assert m["step_flops"] > 0 and 0 < m["fraction_of_matmul_peak"]
        assert all(v > 0 for v in m["inference_seconds_median"].values())
    ff = record["models"][0]
    assert set(ff["inference_seconds_median"]) == {"ten_label_goodness", "one_pass_softmax"}
    assert "final_test_accuracy_softmax" in ff
    # FF does (B positives + B negatives) forward and weight-gradient work per layer plus
    # the readout's neutral pass: more FLOPs per step than backprop's B examples.
    assert ff["step_flops"] > record["models"][1]["step_flops"]
    assert set(record["scaling"]) == {"width", "depth", "batch_size"}
    width_points = record["scaling"]["width"]
    assert [(p["model"], p["hidden"]) for p in width_points] == [("ff", [16, 16]),
                                                                  ("bp_mlp", [16, 16])]
    for name in ("accuracy", "scaling"):
        assert (tmp_path / f"{record_path.stem}-{name}.png").stat().st_size > 0
    table = record_path.with_suffix(".md").read_text()
    assert "| ff |" in table and "| bp_cnn |" in table and "vs depth" in table
    # A second run refuses to replace the record without --overwrite.
    assert compare.main(argv) == 2


@pytest.mark.parametrize("flag", ["--epochs", "--batch-size", "--repeats"])
def test_non_positive_settings_are_refused(flag, capsys):
    with pytest.raises(SystemExit) as e:
        compare.parse_args(["--quick", flag, "0"])
    assert e.value.code == 2
    assert f"{flag}: must be positive" in capsys.readouterr().err
