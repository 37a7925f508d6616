"""Many devices: a one-axis `jax.make_mesh` mesh and `NamedSharding`s over it.

Several seeds are split over the `seed` axis (one model per device, no
communication); a single run splits each batch over the `batch` axis, and XLA
inserts the all-reduces, so BatchNorm sees the statistics of the global batch.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec


def make_mesh(axis: str, *sizes: int) -> Mesh:
    """A 1-D mesh named `axis` over the most devices that divide every one of `sizes`
    (one device when nothing divides; `make_mesh(axis, 1)` asks for one)."""
    n = math.gcd(jax.device_count(), *sizes)
    return jax.make_mesh((n,), (axis,), (AxisType.Auto,), devices=jax.devices()[:n])


def chunk_granule() -> int:
    """What a chunk of models must be a multiple of: with several processes, every device of the run, else a
    process would hold none of the chunk's models (and wait for the others' collectives); 1 otherwise."""
    return jax.device_count() if jax.process_count() > 1 else 1


def place(tree, mesh: Mesh, *spec):
    """Put `tree` on `mesh`, its leaves split as `PartitionSpec(*spec)`; no spec: copied to
    every device. With several processes each passes the same whole `tree` and keeps the
    pieces that fall on its own devices."""
    sharding = NamedSharding(mesh, PartitionSpec(*spec))
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def one(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(one(jax.random.key_data(x)))
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(one, tree)


def gather(tree):
    """`tree`'s arrays whole, as NumPy arrays, in every process (`place`'s converse)."""
    return jax.device_get(tree) if jax.process_count() == 1 else multihost_utils.process_allgather(tree, tiled=True)


def abstract(tree, mesh: Mesh, *spec):
    """The shapes of `tree` as they would lie on `mesh` after `place(tree, mesh, *spec)`."""
    sharding = NamedSharding(mesh, PartitionSpec(*spec))
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), tree)
