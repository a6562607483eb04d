"""Placement over several devices with jax.sharding: data parallelism and model grids.

Data parallelism: a one-axis Mesh ("data") over the devices; parameters, optimizer
states and the (small) dataset are replicated, every minibatch is split along "data".
The epoch function is the same; jit propagates the layout, each device computes the
forward and gradient work of its rows, and XLA sums the gradients across devices. The
global batch size stays what the user set and the shuffling is global, so a run on
several devices computes what the single-device run computes (up to the order of float
sums).

Model grids (sweeps, several seeds): the leading model axis of a vmapped training state
is split along a "models" mesh axis, so each device trains its share of the models.

Several hosts: call `initialize_distributed` (jax.distributed.initialize) in every
process before anything else touches JAX; jax.devices() then lists the devices of all
processes and the same code runs unchanged. Each process loads the dataset (MNIST is
47 MB) and `replicate` builds the global array from the process's own copy.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
MODEL_AXIS = "models"


def select_devices(count: int | None = None) -> list:
    """The first `count` devices of jax.devices() (all of them when None)."""
    devices = jax.devices()
    if count is None:
        return devices
    if not 1 <= int(count) <= len(devices):
        raise ValueError(f"devices={count}: this machine has {len(devices)} "
                         f"{devices[0].platform} device(s); choose 1..{len(devices)}.")
    return devices[: int(count)]


def data_mesh(devices: Sequence) -> Mesh:
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def check_batch_divides(batch_size: int, num_devices: int) -> None:
    if int(batch_size) % int(num_devices):
        lower = int(batch_size) // int(num_devices) * int(num_devices)
        raise ValueError(
            f"batch_size={batch_size} does not split evenly across {num_devices} devices; "
            f"choose a multiple of {num_devices} (e.g. {max(lower, num_devices)}) or fewer "
            "devices.")


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows split along the data axis, other dimensions whole."""
    return NamedSharding(mesh, P(DATA_AXIS))


def _put(a, sharding):
    """`a` laid out with `sharding`. Across processes, every process passes the same
    full value and contributes the shards on its own devices."""
    if sharding.is_fully_addressable:
        return jax.device_put(a, sharding)
    if jax.dtypes.issubdtype(getattr(a, "dtype", np.float32), jax.dtypes.prng_key):
        return jax.random.wrap_key_data(_put(jax.random.key_data(a), sharding),
                                        impl=jax.random.key_impl(a))
    host = np.asarray(a)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def replicate(tree, mesh: Mesh):
    """Every array of `tree` copied to every device of the mesh (all processes)."""
    return jax.tree.map(lambda a: _put(a, replicated(mesh)), tree)


def model_mesh(devices: Sequence, num_models: int) -> Mesh:
    """A "models" mesh over as many of `devices` as evenly divide the model count."""
    n = math.gcd(len(devices), int(num_models))
    return Mesh(np.asarray(list(devices)[:n]), (MODEL_AXIS,))


def shard_models(tree, mesh: Mesh):
    """Every array of `tree` split along its leading (model) axis over the mesh."""
    sharding = NamedSharding(mesh, P(MODEL_AXIS))
    return jax.tree.map(lambda a: _put(a, sharding), tree)


def initialize_distributed(coordinator: str, num_processes: int, process_id: int) -> None:
    """Joins a multi-process JAX run (one process per host, or several per host on CPU).

    Every process calls this with the same coordinator address ("host:port" of process
    0) and process count, and its own id, before any other JAX call.
    """
    if not 0 <= int(process_id) < int(num_processes):
        raise ValueError(f"process_id={process_id} must be in [0, {num_processes}).")
    # CPU devices of different processes talk through gloo (GPU/TPU use their own links).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator,
                               num_processes=int(num_processes), process_id=int(process_id))
