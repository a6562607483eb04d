"""Timing helpers shared by the benchmarks: blocked, repeated wall-clock measurements."""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp


def timed(fn, repeats: int) -> list:
    """Wall-clock seconds of `repeats` calls of fn, each blocked until its result is ready."""
    times = []
    for _ in range(int(repeats)):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return times


def median_seconds(fn, repeats: int, *, warmup: int = 1) -> float:
    """Median of `repeats` blocked calls after `warmup` untimed ones (compilation, caches)."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    return statistics.median(timed(fn, repeats))


def matmul_peak_flops(n: int, repeats: int = 10) -> float:
    """Measured FLOP/s of one (n, n) @ (n, n) float32 matmul at JAX's default precision
    (the precision training uses; TF32 on recent NVIDIA GPUs): the device's practical peak."""
    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (n, n), jnp.float32)
    b = jax.random.normal(kb, (n, n), jnp.float32)
    f = jax.jit(jnp.matmul)
    return 2.0 * n ** 3 / median_seconds(lambda: f(a, b), repeats)
