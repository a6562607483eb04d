"""Checkpoints of a training state with orbax: save after an epoch, restore the latest.

A checkpoint is the whole TrainState (every layer's parameters, optimizer state and peer
running means, the readout's state), stored under <run dir>/checkpoints/<epoch>/. The
data order and the negative labels of epoch e are a function of the seed and e alone
(driver.fit folds e into the data key), so a restored state plus its epoch number is
everything needed to continue a run exactly.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

SUBDIR = "checkpoints"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, of another network, or unreadable."""


class CorruptCheckpoint(CheckpointError):
    """A checkpoint whose files cannot be read back (truncated, overwritten, ...)."""


@contextlib.contextmanager
def _orbax_quiet():
    """Orbax logs every unreadable checkpoint file to the absl logger, as an error; ffjax
    reports such a checkpoint itself, in one line, so those logs are held back here."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        absl.setLevel(level)


def _key_name(entry) -> str:
    for attr in ("name", "key", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def _leaf_names(tree) -> dict:
    """{"layers.0.params.w": leaf}: the dotted names orbax gives a pytree's leaves
    (NamedTuple fields and dict keys by name, sequence items by index)."""
    return {".".join(_key_name(k) for k in path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _first_difference(saved: dict, like: dict) -> str | None:
    """The first leaf (in this network's order) whose presence, shape or dtype differs
    between a checkpoint's metadata and the network, said in words; None if none does."""
    for name, leaf in like.items():
        if name not in saved:
            return f"{name} is not in the checkpoint"
        s_shape, s_dtype = tuple(saved[name].shape), np.dtype(saved[name].dtype)
        if s_shape != tuple(np.shape(leaf)) or s_dtype != np.dtype(leaf.dtype):
            return (f"{name} is {s_dtype}{list(s_shape)} there and "
                    f"{np.dtype(leaf.dtype)}{list(np.shape(leaf))} here")
    extra = sorted(set(saved) - set(like))
    return f"the checkpoint also holds {extra[0]}" if extra else None


class Checkpoints:
    """The checkpoints of one run directory (the `max_to_keep` most recent are kept).

    Saving is synchronous: when save() returns, the arrays are on disk, so the caller
    may donate the state to the next epoch right away. Orbax writes each checkpoint into
    a temporary folder and renames it when complete, so a save interrupted by a kill
    leaves no checkpoint that resume would pick.
    """

    def __init__(self, run_dir, *, max_to_keep: int = 2):
        self.directory = Path(run_dir).absolute() / SUBDIR
        with _orbax_quiet():  # a corrupt checkpoint is reported by newest_readable
            self._manager = ocp.CheckpointManager(
                self.directory,
                options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                                     enable_async_checkpointing=False),
                item_handlers=ocp.StandardCheckpointHandler())

    def save(self, epoch: int, state) -> None:
        """Saves `state` as the checkpoint after `epoch` completed epochs."""
        self._manager.save(int(epoch), args=ocp.args.StandardSave(state), force=True)
        self._manager.wait_until_finished()

    def latest_epoch(self) -> int | None:
        """Number of completed epochs in the newest checkpoint, or None if there is none."""
        return self._manager.latest_step()

    def _corrupt(self, epoch: int, e: Exception) -> CorruptCheckpoint:
        return CorruptCheckpoint(
            f"the checkpoint of epoch {epoch} in {self.directory} is corrupt: its files "
            f"cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:160]})")

    def check_readable(self, epoch: int) -> None:
        """Reads the checkpoint of `epoch` back whole; CorruptCheckpoint if it cannot."""
        try:
            with _orbax_quiet():
                self._manager.restore(int(epoch))
        except Exception as e:  # orbax/tensorstore raise many kinds for damaged files
            raise self._corrupt(epoch, e) from None

    def newest_readable(self) -> tuple:
        """(the newest epoch whose checkpoint reads back, or None; the messages of the
        newer corrupt ones). Each corrupt checkpoint is moved aside, to
        checkpoints/corrupt-<epoch>, so it is kept for inspection, never resumed, and
        the epoch can be saved again."""
        skipped = []
        for epoch in sorted(self._manager.all_steps(), reverse=True):
            try:
                self.check_readable(epoch)
                return epoch, skipped
            except CorruptCheckpoint as e:
                aside = self.directory / f"corrupt-{epoch}"
                (self.directory / str(epoch)).rename(aside)
                with _orbax_quiet():
                    self._manager.reload()
                skipped.append(f"{e}; moved it to {aside}")
        return None, skipped

    def restore(self, epoch: int, like):
        """The state saved after `epoch` epochs, with the structure, shapes and dtypes of
        `like` (a freshly initialized state of the same network). A different network is
        refused naming the first leaf that differs, before any array is read."""
        try:
            saved = _leaf_names(self._manager.item_metadata(int(epoch)))
        except Exception as e:
            raise self._corrupt(epoch, e) from None
        diff = _first_difference(saved, _leaf_names(like))
        if diff is not None:
            raise CheckpointError(f"the checkpoint of epoch {epoch} in {self.directory} is "
                                  f"of another network: {diff}.")
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        try:
            return self._manager.restore(int(epoch), args=ocp.args.StandardRestore(target))
        except Exception as e:
            raise self._corrupt(epoch, e) from None

    def close(self) -> None:
        """Closes the manager (idempotent)."""
        if self._manager is not None:
            self._manager.close()
            self._manager = None
