import gzip
import shutil

import numpy as np
import pytest

from ffjax import data

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_idx_reader_gives_known_mnist_statistics(mnist):
    assert mnist.x_train.shape == (60000, 784) and mnist.x_train.dtype == np.uint8
    assert mnist.x_test.shape == (10000, 784)
    assert mnist.y_train[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert mnist.y_test[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert np.bincount(mnist.y_train).tolist() == MNIST_TRAIN_COUNTS
    assert np.bincount(mnist.y_test).tolist() == MNIST_TEST_COUNTS
    assert abs(mnist.x_train.mean() / 255 - 0.130660) < 1e-5
    assert mnist.num_classes == 10


def test_fashion_mnist_statistics(data_dir):
    ds = data.load("fashion_mnist", data_dir)
    assert ds.y_train[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert np.bincount(ds.y_test).tolist() == [1000] * 10
    assert ds.class_names[9] == "Ankle boot"


def _copy_mnist(data_dir, tmp_path):
    dst = tmp_path / "mnist"
    shutil.copytree(data_dir / "mnist", dst)
    return dst


def test_truncated_gzip_gives_clear_error(data_dir, tmp_path):
    d = _copy_mnist(data_dir, tmp_path)
    f = d / "t10k-labels-idx1-ubyte.gz"
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(data.DataError, match="corrupt or truncated gzip"):
        data.load("mnist", tmp_path)


def test_truncated_idx_body_gives_clear_error(tmp_path):
    f = tmp_path / "labels.gz"
    header = (0x801).to_bytes(4, "big") + (100).to_bytes(4, "big")
    f.write_bytes(gzip.compress(header + bytes(60)))
    with pytest.raises(data.DataError, match="promises dims \\(100,\\).*holds 60"):
        data.read_idx(f, expect="labels")


def test_wrong_magic_gives_clear_error(tmp_path):
    f = tmp_path / "x.gz"
    f.write_bytes(gzip.compress((0x801).to_bytes(4, "big") + (1).to_bytes(4, "big") + b"\0"))
    with pytest.raises(data.DataError, match="wrong magic number 0x00000801"):
        data.read_idx(f, expect="images")


def test_image_label_count_mismatch(data_dir, tmp_path):
    d = _copy_mnist(data_dir, tmp_path)
    header = (0x801).to_bytes(4, "big") + (5).to_bytes(4, "big")
    (d / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(header + bytes(5)))
    with pytest.raises(data.DataError, match="10000 images but .* 5 labels"):
        data.load("mnist", tmp_path)


def test_missing_folder_and_files_say_where_they_looked(tmp_path):
    with pytest.raises(data.DataError, match="does not exist.*--data-dir"):
        data.load("mnist", tmp_path / "nowhere")
    with pytest.raises(data.DataError, match="looked in .*mnist"):
        data.load("mnist", tmp_path)
    with pytest.raises(data.DataError, match="unknown dataset 'cifar'"):
        data.load("cifar", tmp_path)


def test_tfds_path_finds_and_verifies_the_official_files_offline(data_dir, tmp_path):
    """TFDS's DownloadManager with the registered checksums and manual_dir: the real
    code path a user with internet takes, minus the network."""
    pytest.importorskip("tensorflow_datasets")
    ds = data.load_tfds("mnist", download_dir=tmp_path / "dl", manual_dir=data_dir / "mnist")
    assert ds.y_test[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert np.bincount(ds.y_train).tolist() == MNIST_TRAIN_COUNTS


def test_tfds_path_rejects_a_file_with_the_wrong_checksum(data_dir, tmp_path):
    pytest.importorskip("tensorflow_datasets")
    d = _copy_mnist(data_dir, tmp_path)
    f = d / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(f.read_bytes())
    raw[100] ^= 0xFF
    f.write_bytes(bytes(raw))
    with pytest.raises(data.DataError, match="could not fetch mnist.*checksum"):
        data.load_tfds("mnist", download_dir=tmp_path / "dl", manual_dir=d)


@pytest.mark.parametrize("x, y, c, msg", [
    (np.zeros((4,)), np.zeros(4, int), 3, r"\(N, \.\.\.\) array"),
    (np.zeros((4, 8)), np.zeros((4, 1), int), 3, "1-D"),
    (np.zeros((4, 8)), np.zeros(5, int), 3, "4 feature rows but 5 labels"),
    (np.zeros((4, 8)), np.zeros(4), 3, "integers"),
    (np.zeros((4, 8)), np.array([0, 1, 2, 3]), 3, r"\[0, 3\].*\[0, 3\)"),
    (np.zeros((4, 8)), np.array([0, -1, 2, 1]), 3, "labels range"),
    (np.array([[np.nan, 0.0]] * 4), np.zeros(4, int), 2, "NaN or Inf"),
    (np.zeros((4, 8), np.int64), np.zeros(4, int), 3, "uint8 .* or float"),
    (np.zeros((0, 8)), np.zeros(0, int), 3, "empty"),
])
def test_check_arrays_names_the_problem(x, y, c, msg):
    with pytest.raises(ValueError, match=msg):
        data.check_arrays(x, y, num_classes=c)


def test_split_validation_takes_the_last_examples():
    x, y = np.arange(20).reshape(10, 2), np.arange(10)
    xf, yf, xv, yv = data.split_validation(x, y, 3)
    assert yf.tolist() == list(range(7)) and yv.tolist() == [7, 8, 9]
    with pytest.raises(ValueError):
        data.split_validation(x, y, 10)


def test_default_path_without_network_fails_in_seconds(tmp_path, monkeypatch):
    """No data dir, nothing cached, host unreachable: one DataError at once, not
    minutes of TFDS retries."""
    import time
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(data, "_reachable", lambda host, timeout=5.0: False)
    t0 = time.perf_counter()
    with pytest.raises(data.DataError, match="cannot be reached"):
        data.load_tfds("fashion_mnist", download_dir=tmp_path / "dl")
    assert time.perf_counter() - t0 < 30


def _cifar_archive(path, records_per_batch=2, test_records=3):
    """A tiny archive in CIFAR-10's binary format: record k of every batch has label
    k % 10 and planes red = k, green = 100 + k, blue = 200 + k."""
    import io
    import tarfile

    def batch(n):
        return b"".join(bytes([k % 10]) + bytes([k]) * 1024 + bytes([100 + k]) * 1024
                        + bytes([200 + k]) * 1024 for k in range(n))

    with tarfile.open(path, "w:gz") as tar:
        for name, n in [*((f"data_batch_{i}.bin", records_per_batch) for i in range(1, 6)),
                        ("test_batch.bin", test_records)]:
            raw = batch(n)
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


def test_cifar10_in_its_own_binary_format(tmp_path):
    (tmp_path / "cifar10").mkdir()
    _cifar_archive(tmp_path / "cifar10" / data.CIFAR10_ARCHIVE)
    ds = data.load("cifar10", tmp_path)
    assert ds.x_train.shape == (10, 32 * 32 * 3) and ds.x_test.shape == (3, 3072)
    assert ds.y_train.tolist() == [0, 1] * 5 and ds.num_classes == 10
    img = data.reshaped(ds, (32, 32, 3)).x_test[2]  # (H, W, C): red, green, blue planes
    assert img.shape == (32, 32, 3) and img[5, 7].tolist() == [2, 102, 202]
    assert ds.class_names[9] == "truck"
    # The same files extracted into their folder read the same.
    import tarfile
    with tarfile.open(tmp_path / "cifar10" / data.CIFAR10_ARCHIVE) as tar:
        tar.extractall(tmp_path / "extracted", filter="data")
    again = data.load("cifar10", tmp_path / "extracted")
    np.testing.assert_array_equal(again.x_train, ds.x_train)


def test_broken_cifar10_files_are_named(tmp_path):
    folder = tmp_path / data.CIFAR10_FOLDER
    folder.mkdir()
    for name in (*data.CIFAR10_TRAIN, *data.CIFAR10_TEST):
        (folder / name).write_bytes(bytes(3073 * 2))
    (folder / "data_batch_3.bin").write_bytes(bytes(3073 + 5))
    with pytest.raises(data.DataError, match="data_batch_3.bin: 3078 bytes is not a whole "
                                             "number of CIFAR-10 records"):
        data.load("cifar10", tmp_path)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / data.CIFAR10_ARCHIVE).write_bytes(b"\x1f\x8b not really")
    with pytest.raises(data.DataError, match="corrupt or truncated archive"):
        data.load("cifar10", tmp_path / "c")
    (tmp_path / "empty").mkdir()
    with pytest.raises(data.DataError, match="found neither cifar-10-binary.tar.gz"):
        data.load("cifar10", tmp_path / "empty")


def test_cifar10_through_tfds_checks_the_archive(tmp_path):
    """TFDS's download manager verifies CIFAR-10's registered checksum: an archive that
    is not the official one is refused in one line."""
    manual = tmp_path / "manual"
    manual.mkdir()
    _cifar_archive(manual / data.CIFAR10_ARCHIVE)
    with pytest.raises(data.DataError, match="could not fetch cifar10"):
        data.load_tfds("cifar10", download_dir=tmp_path / "dl", manual_dir=manual)
