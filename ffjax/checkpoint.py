"""Checkpoints of a training state with orbax: save after an epoch, restore the latest.

A checkpoint is the whole TrainState (every layer's parameters, optimizer state and peer
running means, the readout's state), stored under <run dir>/checkpoints/<epoch>/. The
data order and the negative labels of epoch e are a function of the seed and e alone
(driver.fit folds e into the data key), so a restored state plus its epoch number is
everything needed to continue a run exactly.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

SUBDIR = "checkpoints"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (missing, or of a different network)."""


class Checkpoints:
    """The checkpoints of one run directory (the `max_to_keep` most recent are kept).

    Saving is synchronous: when save() returns, the arrays are on disk, so the caller
    may donate the state to the next epoch right away.
    """

    def __init__(self, run_dir, *, max_to_keep: int = 2):
        self.directory = Path(run_dir).absolute() / SUBDIR
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                                 enable_async_checkpointing=False))

    def save(self, epoch: int, state) -> None:
        """Saves `state` as the checkpoint after `epoch` completed epochs."""
        self._manager.save(int(epoch), args=ocp.args.StandardSave(state), force=True)
        self._manager.wait_until_finished()

    def latest_epoch(self) -> int | None:
        """Number of completed epochs in the newest checkpoint, or None if there is none."""
        return self._manager.latest_step()

    def restore(self, epoch: int, like):
        """The state saved after `epoch` epochs, with the structure, shapes and dtypes of
        `like` (a freshly initialized state of the same network)."""
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        try:
            restored = self._manager.restore(int(epoch), args=ocp.args.StandardRestore(target))
        except Exception as e:  # structure or shape mismatch, unreadable files
            raise CheckpointError(
                f"the checkpoint of epoch {epoch} in {self.directory} does not fit this "
                f"network ({type(e).__name__}: {str(e).splitlines()[0][:200]}).") from None
        for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(like)):
            if np.shape(a) != np.shape(b):
                raise CheckpointError(f"the checkpoint of epoch {epoch} in {self.directory} "
                                      "holds arrays of other shapes than this network's.")
        return restored

    def close(self) -> None:
        self._manager.close()
