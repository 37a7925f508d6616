"""Will it fit: what a compiled program needs (XLA's `memory_analysis`) against what the device has (for the CPU, two
thirds of the host's available memory, or of what the process's memory cgroup or address-space limit leaves), capped
by `MNIST_JAX_MEMORY_LIMIT` (bytes, or 512M, 2G...) to leave room for others or act out a smaller device."""

from __future__ import annotations

import os
import re
import resource
from pathlib import Path
from typing import TYPE_CHECKING

from mnist_jax.errors import DoesNotFit, UsageError

if TYPE_CHECKING:
    import jax

LIMIT_ENV = "MNIST_JAX_MEMORY_LIMIT"
_SUFFIXES = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_size(text: str) -> int:
    """'1500000', '512M', '2.5G' -> bytes: ASCII digits, an optional K, M, G or T, nothing else."""
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]*)?)([KMGTkmgt]?)", text)
    size = float(match[1]) * _SUFFIXES[match[2].upper()] if match else 0
    if not 1 <= size < 2**60:
        raise UsageError(f"{LIMIT_ENV}={text!r}: expected a positive size such as 2G or 512M")
    return int(size)


def _kilobytes(path: str, field: str) -> int:
    with open(path) as f:
        return int(next(line for line in f if line.startswith(field + ":")).split()[1]) * 1024


def _cgroup_file(folder: Path, name: str) -> str | None:
    try:
        return (folder / name).read_text()
    except OSError:  # (absent at the root, or not ours to read)
        return None


def cgroup_room(cgroup: str = "/proc/self/cgroup", mount: str = "/sys/fs/cgroup") -> int | None:
    """Bytes the memory cgroups of this process (a container's or a cluster job's limit; v2, or v1's memory controller)
    still let it allocate: the least over its cgroup and their ancestors, counting inactive file cache as free (the kernel
    reclaims it first). None where no limit is set or none can be read."""
    try:
        with open(cgroup) as f:
            entries = [line.rstrip("\n").split(":", 2) for line in f if line.count(":") >= 2]
    except OSError:
        return None
    rooms = []
    for _, controllers, path in entries:
        if controllers == "":
            root, limit_file, usage_file, cache_field = Path(mount), "memory.max", "memory.current", "inactive_file"
        elif "memory" in controllers.split(","):
            root, limit_file, usage_file, cache_field = Path(mount, "memory"), "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"
        else:
            continue
        folder = root / path.lstrip("/")
        if not folder.is_dir():  # a cgroup namespace shows the process's own cgroup at the root
            folder = root
        for level in (folder, *(p for p in folder.parents if p.is_relative_to(root))):
            limit, usage = _cgroup_file(level, limit_file), _cgroup_file(level, usage_file)
            if limit is None or usage is None or not limit.strip().isdigit() or int(limit) >= 2**60:  # "max", or v1's unlimited
                continue
            stat = _cgroup_file(level, "memory.stat") or ""
            cache = next((int(line.split()[1]) for line in stat.splitlines() if line.split()[:1] == [cache_field]), 0)
            rooms.append(max(int(limit) - int(usage) + cache, 0))
    return min(rooms, default=None)


def host_room() -> tuple[int, str]:
    """(bytes, what bounds them) a CPU program may allocate: the host's available memory, or less where this process's
    memory cgroup or its address-space limit leaves less."""
    rooms = [(_kilobytes("/proc/meminfo", "MemAvailable"), "the host's free memory")]
    if (room := cgroup_room()) is not None:  # a container's or a cluster job's limit: its OOM killer ends the run unannounced
        rooms.append((room, "what its memory cgroup leaves"))
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        rooms.append((soft - _kilobytes("/proc/self/status", "VmSize"), "what its address-space limit leaves"))
    return min(rooms)


def available_bytes() -> int:
    """Bytes a new program may still allocate on this process's first device; with several processes, the least of theirs."""
    import jax  # here, not above: the scripts read the limit before JAX is imported

    stats = jax.local_devices()[0].memory_stats()
    if stats and "bytes_limit" in stats:
        available = stats["bytes_limit"] - stats.get("bytes_in_use", 0)
    else:  # the rest for what XLA's figures leave out: peaks 15-34% above them were measured
        available = host_room()[0] * 2 // 3
    if os.environ.get(LIMIT_ENV):
        available = min(available, parse_size(os.environ[LIMIT_ENV]))
    if jax.process_count() > 1:  # each process calls this at the same point: all decide (chunks, refusals) by the least
        import numpy as np
        from jax.experimental import multihost_utils

        available = 1024 * int(multihost_utils.process_allgather(np.int32(min(available // 1024, 2**31 - 1))).min())
    return available


def tree_bytes(tree) -> int:
    """Bytes of the arrays (or `jax.ShapeDtypeStruct`s) in `tree`."""
    import jax

    return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))


def program_bytes(compiled: jax.stages.Compiled) -> int:
    """What XLA says a run of a compiled program allocates beside its arguments: outputs and temporaries."""
    m = compiled.memory_analysis()
    return m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes


def gigabytes(n: int) -> str:
    return f"{n / 2**30:.2f} GB" if n >= 2**27 else f"{n / 2**20:.1f} MB"


def check(what: str, needed: int) -> None:
    """Raise `DoesNotFit` unless the `needed` bytes of `what` (plural) are available."""
    available = available_bytes()
    if needed > available:
        import jax

        device = jax.devices()[0]
        kept = f" (two thirds of {host_room()[1]})" if device.platform == "cpu" and not os.environ.get(LIMIT_ENV) else ""
        raise DoesNotFit(f"{what} need about {gigabytes(needed)} of memory; {device.platform} device {device.id} "
                         f"has {gigabytes(available)} available{kept}")
