"""Shared test setup: key-reuse checking on, the shared data folder, small helpers."""

import os
from pathlib import Path

import jax
import pytest

jax.config.update("jax_debug_key_reuse", True)

REPO = Path(__file__).resolve().parents[1]
_DEFAULT_DATA = REPO.parent / "shared" / "data"
DATA_DIR = Path(os.environ.get("FFJAX_DATA_DIR") or _DEFAULT_DATA)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "mnist").is_dir():
        pytest.skip(f"no MNIST under {DATA_DIR}; set FFJAX_DATA_DIR")
    return DATA_DIR


@pytest.fixture(scope="session")
def mnist(data_dir):
    from ffjax import data
    return data.load("mnist", data_dir)
