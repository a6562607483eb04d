import json

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
                       "--epochs", "1", "--train-size", "10000", "--out", str(out)])
    rec = json.loads(out.read_text())
    assert rec["split"] == "validation" and rec["hidden"] == ["conv:4:3:s2:p2", "16"]
    assert rec["ff_over_bp_epoch_time"] > 0
    assert 0.5 < rec["bp"][0]["accuracy"] <= 1 and 0 < rec["ff"][0]["accuracy"] <= 1
