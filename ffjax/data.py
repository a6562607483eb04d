"""Datasets as uint8 arrays: IDX files from a local folder or via TFDS, checks, splits."""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import socket
import urllib.parse
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

DATA_DIR_ENV = "FFJAX_DATA_DIR"

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}

# name -> (folder under the data directory, TFDS builder name, class names)
DATASETS = {
    "mnist": ("mnist", "mnist", tuple(str(i) for i in range(10))),
    "fashion_mnist": ("fashion-mnist", "fashion_mnist", (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")),
}

# CIFAR-10 in its binary release (the archive TFDS fetches): five training batches and
# one test batch of 10000 records, each one label byte then 3072 pixel bytes (1024 red,
# 1024 green, 1024 blue, row-major 32 x 32).
CIFAR10 = "cifar10"
CIFAR10_ARCHIVE = "cifar-10-binary.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-bin"
CIFAR10_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR10_TEST = ("test_batch.bin",)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
DATASETS[CIFAR10] = ("cifar10", "cifar10", CIFAR10_CLASSES)

# One example's image shape (H, W, C) per dataset.
IMAGE_SHAPES = {"mnist": (28, 28, 1), "fashion_mnist": (28, 28, 1), CIFAR10: (32, 32, 3)}

# SHA-256 of the official training labels (60000 uint8 values, in order): tells the two
# datasets apart whatever the files are called or however they were compressed.
_TRAIN_LABELS_SHA256 = {
    "mnist": "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
    "fashion_mnist": "657fbd221bfc9f4198cc14b5619cc33ec57c58dd0e47af4d99d6650759e869a7",
}

_IMAGES_MAGIC = 0x00000803
_LABELS_MAGIC = 0x00000801


class DataError(ValueError):
    """A dataset could not be found or read; the message says what and how to fix it."""


class Dataset(NamedTuple):
    """Features (N, D) uint8 or float32 and labels (N,) int32, train and test."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    class_names: tuple


def _read_bytes(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found.") from None
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror}).") from None
    if raw[:2] != b"\x1f\x8b":  # not gzipped: accept the decompressed IDX file as is
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as e:
        raise DataError(
            f"{path}: corrupt or truncated gzip file ({e}). Delete it and fetch it again."
        ) from None


def read_idx(path, *, expect: str) -> np.ndarray:
    """Reads an IDX file (optionally gzipped) into a uint8 array.

    Args:
      path: the file.
      expect: "images" (magic 0x00000803, dims (N, rows, cols)) or "labels"
        (magic 0x00000801, dims (N,)).

    Raises:
      DataError: the file is missing, corrupt, truncated or of the wrong kind.
    """
    path = Path(path)
    magic_expected = {"images": _IMAGES_MAGIC, "labels": _LABELS_MAGIC}[expect]
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"{path}: too short to be an IDX file ({len(data)} bytes).")
    magic = int.from_bytes(data[:4], "big")
    if magic != magic_expected:
        raise DataError(
            f"{path}: wrong magic number 0x{magic:08x}, expected 0x{magic_expected:08x} "
            f"for an IDX {expect} file. Is this the right file?"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header.")
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims))
    body = len(data) - header
    if body != expected:
        raise DataError(
            f"{path}: the header promises dims {dims} ({expected} bytes of data) but the "
            f"file holds {body}; it is truncated or corrupt. Fetch it again."
        )
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def read_idx_split(images_path, labels_path) -> tuple[np.ndarray, np.ndarray]:
    """Images flattened to (N, rows*cols) uint8 and labels (N,) int32, counts checked."""
    x = read_idx(images_path, expect="images")
    y = read_idx(labels_path, expect="labels")
    if x.shape[0] != y.shape[0]:
        raise DataError(
            f"{images_path} holds {x.shape[0]} images but {labels_path} holds "
            f"{y.shape[0]} labels; the files do not belong together."
        )
    return x.reshape(x.shape[0], -1), y.astype(np.int32)


def _from_files(files: dict, name: str) -> Dataset:
    x_train, y_train = read_idx_split(files["train_images"], files["train_labels"])
    x_test, y_test = read_idx_split(files["test_images"], files["test_labels"])
    if x_train.shape[1] != x_test.shape[1]:
        raise DataError(
            f"{files['train_images']} holds images of {x_train.shape[1]} pixels but "
            f"{files['test_images']} images of {x_test.shape[1]}; the files do not belong "
            "to one dataset.")
    _, _, class_names = DATASETS[name]
    num_classes = len(class_names)
    digest = hashlib.sha256(y_train.astype(np.uint8).tobytes()).hexdigest()
    for other, known in _TRAIN_LABELS_SHA256.items():
        if other != name and digest == known:
            folder = DATASETS[other][0]
            raise DataError(
                f"{files['train_labels']} holds {other}'s training labels, not {name}'s: "
                f"this folder is {other}. Point --data-dir at the folder that holds "
                f"{DATASETS[name][0]}/ (and {folder}/).")
    for split, y in (("train", y_train), ("test", y_test)):
        if y.size and int(y.max()) >= num_classes:
            raise DataError(
                f"{name} {split} labels go up to {int(y.max())}, but {name} has "
                f"{num_classes} classes; the label file is not {name}'s."
            )
    return Dataset(x_train, y_train, x_test, y_test, num_classes, class_names)


def read_cifar10_batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 binary batch: images (N, 32 * 32 * 3) uint8, flattened in (H, W, C)
    order like the other datasets' pixels, and labels (N,) int32."""
    record = 1 + 32 * 32 * 3
    if not raw or len(raw) % record:
        raise DataError(f"{where}: {len(raw)} bytes is not a whole number of CIFAR-10 "
                        f"records ({record} bytes each); the file is truncated or not "
                        "CIFAR-10's binary release.")
    rows = np.frombuffer(raw, np.uint8).reshape(-1, record)
    y = rows[:, 0].astype(np.int32)
    if int(y.max()) >= len(CIFAR10_CLASSES):
        raise DataError(f"{where}: labels go up to {int(y.max())}, but CIFAR-10 has 10 "
                        "classes; the file is not CIFAR-10's binary release.")
    x = rows[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).reshape(len(rows), -1)
    return np.ascontiguousarray(x), y


def _cifar10_from(read, where: str) -> Dataset:
    """CIFAR-10 from `read(member name) -> bytes` (a folder or the archive)."""
    parts = {}
    for split, names in (("train", CIFAR10_TRAIN), ("test", CIFAR10_TEST)):
        batches = [read_cifar10_batch(read(n), f"{where}/{n}") for n in names]
        parts[split] = (np.concatenate([b[0] for b in batches]),
                        np.concatenate([b[1] for b in batches]))
    return Dataset(*parts["train"], *parts["test"], len(CIFAR10_CLASSES), CIFAR10_CLASSES)


def load_cifar10_archive(path) -> Dataset:
    """CIFAR-10 from its binary release's archive (cifar-10-binary.tar.gz), read in
    place."""
    import tarfile
    path = Path(path)
    try:
        with tarfile.open(path, "r:gz") as tar:
            def read(name):
                member = f"{CIFAR10_FOLDER}/{name}"
                try:
                    return tar.extractfile(member).read()
                except KeyError:
                    raise DataError(f"{path} has no {member}: it is not CIFAR-10's binary "
                                    "release.") from None
            return _cifar10_from(read, f"{path}:{CIFAR10_FOLDER}")
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise DataError(f"{path}: corrupt or truncated archive ({e}). Delete it and fetch "
                        "it again.") from None


def _load_cifar10_local(root: Path) -> Dataset:
    for d in (root / "cifar10", root):
        if (d / CIFAR10_ARCHIVE).is_file():
            return load_cifar10_archive(d / CIFAR10_ARCHIVE)
        folder = d / CIFAR10_FOLDER
        if folder.is_dir():
            return _cifar10_from(lambda n: _read_bytes(folder / n), str(folder))
    raise DataError(f"cifar10: looked in {root / 'cifar10'} and {root} and found neither "
                    f"{CIFAR10_ARCHIVE} nor {CIFAR10_FOLDER}/ (the binary release's "
                    "folder).")


def canonical_name(name: str) -> str:
    """The dataset's key in DATASETS ("fashion-mnist" -> "fashion_mnist")."""
    return str(name).replace("-", "_").lower()


def _check_name(name: str) -> str:
    key = canonical_name(name)
    if key not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}.")
    return key


def load_local(name: str, data_dir) -> Dataset:
    """Loads a dataset from `data_dir/<folder>/` (folder `mnist` or `fashion-mnist`)
    holding the four standard IDX .gz files (or the same files gunzipped); `data_dir` may
    also be that folder itself. CIFAR-10: `data_dir/cifar10/` (or `data_dir`) holding
    cifar-10-binary.tar.gz or its extracted cifar-10-batches-bin/."""
    name = _check_name(name)
    folder, _, _ = DATASETS[name]
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        what = "is a file, not a directory" if root.exists() else "does not exist"
        files = (f"{CIFAR10_ARCHIVE} (or {CIFAR10_FOLDER}/)" if name == CIFAR10
                 else "the four IDX files")
        raise DataError(
            f"data directory {root} {what}. Point --data-dir (or {DATA_DIR_ENV}) "
            f"at a folder holding {folder}/ with {files}, or leave both unset "
            "to fetch the data with tensorflow-datasets."
        )
    if name == CIFAR10:
        return _load_cifar10_local(root)

    def find(d: Path, gz_name: str):  # the .gz file, or the same file gunzipped
        return next((d / n for n in (gz_name, gz_name[:-3]) if (d / n).is_file()), None)

    for d in (root / folder, root):
        found = {k: find(d, f) for k, f in IDX_FILES.items()}
        if all(found.values()):
            return _from_files(found, name)
    missing = [f for f in IDX_FILES.values() if find(root / folder, f) is None]
    raise DataError(
        f"{name}: looked in {root / folder} and found no {', '.join(missing)}. The data "
        f"directory must hold {folder}/ with the files {', '.join(IDX_FILES.values())}."
    )


def load_tfds(name: str, *, download_dir=None, manual_dir=None) -> Dataset:
    """Fetches (or finds) the raw files through TFDS and parses them; no TensorFlow.

    TFDS's DownloadManager, given the dataset's registered checksums, downloads the
    files (MNIST's four IDX files, CIFAR-10's binary archive) from the official source into `download_dir` (default
    ~/tensorflow_datasets/downloads), or takes them from `manual_dir`, and verifies
    every checksum.
    """
    name = _check_name(name)
    _, builder_name, _ = DATASETS[name]
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise DataError(
            "tensorflow-datasets is not installed, and no data directory was given. "
            f"Install it (pip install tensorflow-datasets) or pass --data-dir / set "
            f"{DATA_DIR_ENV} to a folder with the IDX files."
        ) from None
    if download_dir is None:
        download_dir = Path("~/tensorflow_datasets/downloads").expanduser()
    url_infos = tfds.builder_cls(builder_name).url_infos
    if manual_dir is None and not _cached(download_dir, url_infos):
        host = urllib.parse.urlparse(next(iter(url_infos))).hostname
        if not _reachable(host):
            # TFDS would retry for minutes before giving up: say so at once instead.
            raise DataError(
                f"{name} is not in {download_dir} and {host} cannot be reached (no "
                f"internet?). Pass --data-dir / set {DATA_DIR_ENV} to a folder with the "
                "IDX files.")
    manager = tfds.download.DownloadManager(
        download_dir=download_dir, manual_dir=manual_dir, url_infos=url_infos,
        dataset_name=builder_name, force_checksums_validation=True)
    urls = {url.rsplit("/", 1)[-1]: url for url in url_infos}
    try:
        paths = manager.download(urls)
    except Exception as e:  # network errors, checksum mismatches: one clear message
        raise DataError(
            f"tensorflow-datasets could not fetch {name}: {type(e).__name__}: {e}. "
            f"Without internet, pass --data-dir / set {DATA_DIR_ENV} to a folder with the "
            "IDX files."
        ) from None
    if name == CIFAR10:
        return load_cifar10_archive(paths[CIFAR10_ARCHIVE])
    return _from_files({k: Path(paths[f]) for k, f in IDX_FILES.items()}, name)


def _cached(download_dir, url_infos) -> bool:
    """Whether TFDS already holds every file in download_dir (no network needed)."""
    from tensorflow_datasets.core.download import resource
    return all((Path(download_dir) / resource.get_dl_fname(url, info.checksum)).is_file()
               for url, info in url_infos.items())


def _reachable(host: str, timeout: float = 5.0) -> bool:
    """Whether a TCP connection to host:443 opens within `timeout` seconds."""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def load(name: str, data_dir=None) -> Dataset:
    """Loads MNIST, Fashion-MNIST or CIFAR-10: from `data_dir`, else $FFJAX_DATA_DIR,
    else TFDS."""
    data_dir = data_dir or os.environ.get(DATA_DIR_ENV) or None
    if data_dir:
        return load_local(name, data_dir)
    return load_tfds(name)


def reshaped(ds: Dataset, shape) -> Dataset:
    """The dataset with every example reshaped to `shape` (e.g. (28, 28, 1) for a conv
    network, (784,) for a dense one); no copy."""
    shape = tuple(int(s) for s in shape)
    if math.prod(shape) != math.prod(ds.x_train.shape[1:]):
        raise DataError(f"examples of shape {ds.x_train.shape[1:]} cannot be read as "
                        f"shape {shape}.")
    return ds._replace(x_train=ds.x_train.reshape((len(ds.x_train),) + shape),
                       x_test=ds.x_test.reshape((len(ds.x_test),) + shape))


def split_validation(x: np.ndarray, y: np.ndarray, size: int):
    """Holds out the last `size` examples: returns (x_fit, y_fit, x_val, y_val)."""
    size = int(size)
    if not 0 < size < len(x):
        raise ValueError(f"validation size {size} must be in (0, {len(x)}).")
    return x[:-size], y[:-size], x[-size:], y[-size:]


def check_arrays(x, y, *, num_classes: int, what: str = "data") -> None:
    """Checks user features/labels before anything is compiled.

    Args:
      x: (N, ...) examples (features or images), uint8 or float. y: (N,) integer labels
        in [0, num_classes).

    Raises:
      ValueError: with a message naming what is wrong.
    """
    x = np.asarray(x) if not hasattr(x, "shape") else x
    y = np.asarray(y) if not hasattr(y, "shape") else y
    if len(x.shape) < 2:
        raise ValueError(f"{what}: features must be an (N, ...) array, one example per "
                         f"row; got shape {tuple(x.shape)}.")
    if len(y.shape) != 1:
        raise ValueError(f"{what}: labels must be a 1-D (N,) array; got shape {tuple(y.shape)}.")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{what}: {x.shape[0]} feature rows but {y.shape[0]} labels.")
    if x.shape[0] == 0:
        raise ValueError(f"{what}: the dataset is empty.")
    if not np.issubdtype(np.dtype(y.dtype), np.integer):
        raise ValueError(f"{what}: labels must be integers; got dtype {y.dtype}.")
    if int(num_classes) < 2:
        raise ValueError(f"num_classes={num_classes} must be at least 2.")
    y_np = np.asarray(y)
    lo, hi = int(y_np.min()), int(y_np.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"{what}: labels range over [{lo}, {hi}] but must lie in "
                         f"[0, {num_classes}) for num_classes={num_classes}.")
    dt = np.dtype(x.dtype)
    if not (dt == np.uint8 or np.issubdtype(dt, np.floating)):
        raise ValueError(f"{what}: features must be uint8 (pixels) or float; got {dt}.")
    if np.issubdtype(dt, np.floating) and not bool(np.all(np.isfinite(np.asarray(x)))):
        raise ValueError(f"{what}: features contain NaN or Inf values.")
