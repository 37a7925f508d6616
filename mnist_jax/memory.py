"""Will it fit: what a compiled program needs (XLA's `memory_analysis`) against what the device has (for the CPU, two
thirds of the host's available memory, or of what the process's memory cgroup or address-space limit leaves), capped
by `MNIST_JAX_MEMORY_LIMIT` (bytes, or 512M, 2G...) to leave room for others or act out a smaller device."""

from __future__ import annotations

import os
import re
import resource
import socket
import zlib
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


def _kilobytes(path: str, field: str) -> int | None:
    """The `field` of a /proc file in bytes; None where there is none (a system without /proc: macOS)."""
    try:
        with open(path) as f:
            return int(next(line for line in f if line.startswith(field + ":")).split()[1]) * 1024
    except (OSError, StopIteration, IndexError, ValueError):
        return None


def _cgroup_number(folder: Path, name: str, field: str | None = None) -> int | None:
    """The number in a cgroup file (or after `field` in a flat-keyed one, as memory.stat): None where it is absent, not
    ours to read, "max" or malformed."""
    try:
        text = (folder / name).read_text()
    except (OSError, UnicodeDecodeError):  # (absent at the root)
        return None
    if field is not None:
        text = next((line.removeprefix(field) for line in text.splitlines() if line.startswith(field + " ")), "")
    return int(text) if text.strip().isascii() and text.strip().isdigit() else None


def cgroup_limits(cgroup: str = "/proc/self/cgroup", mount: str = "/sys/fs/cgroup") -> list[tuple[int, str]]:
    """(bytes, folder) of each memory cgroup of this process, or ancestor, that sets a limit (a container's or a cluster
    job's; v2, or v1's memory controller): what it still lets its processes allocate, counting file cache as free (the
    kernel reclaims it before it kills)."""
    try:
        with open(cgroup, errors="replace") as f:
            entries = [line.rstrip("\n").split(":", 2) for line in f if line.count(":") >= 2]
    except OSError:
        return []
    rooms = []
    for _, controllers, path in entries:
        if controllers == "":
            root, limit_file, usage_file, prefix = Path(mount), "memory.max", "memory.current", ""
        elif "memory" in controllers.split(","):
            root, limit_file, usage_file, prefix = Path(mount, "memory"), "memory.limit_in_bytes", "memory.usage_in_bytes", "total_"
        else:
            continue
        folder = root / path.lstrip("/")
        if not folder.is_dir():  # a cgroup namespace shows the process's own cgroup at the root
            folder = root
        for level in (folder, *(p for p in folder.parents if p.is_relative_to(root))):
            limit, usage = _cgroup_number(level, limit_file), _cgroup_number(level, usage_file)
            if limit is None or usage is None or limit >= 2**60:  # none, or v1's unlimited
                continue
            cache = sum(_cgroup_number(level, "memory.stat", prefix + lru) or 0 for lru in ("active_file", "inactive_file"))
            rooms.append((max(limit - usage + min(cache, usage), 0), str(level)))
    return rooms


HOST_BOUNDS = ("the host's free memory", "what its memory cgroup leaves", "what its address-space limit leaves",
               "the host's memory")  # (the last where the system tells no free memory)
LIMITED = len(HOST_BOUNDS)  # the bound `MNIST_JAX_MEMORY_LIMIT` sets


def host_rooms(meminfo: str = "/proc/meminfo") -> list[tuple[int, int, str | None]]:
    """(bytes, which of `HOST_BOUNDS`, what shares it) of each bound on what a CPU program may allocate: the host's
    available memory (where the system tells none, as macOS, its memory), each memory cgroup that sets a limit, the
    address-space limit. What shares a bound: a name every process under it has alike; None for the process's own."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:  # (containers on one host have names of their own, not memory)
            host = f.read().strip()
    except OSError:
        host = socket.gethostname()
    free = _kilobytes(meminfo, "MemAvailable")
    rooms = [(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), 3, host) if free is None else (free, 0, host)]
    rooms += [(room, 1, f"{host}:{folder}") for room, folder in cgroup_limits()]
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        rooms.append((soft - (_kilobytes("/proc/self/status", "VmSize") or 0), 2, None))
    return rooms


def _shared_rooms(rooms: list[tuple[int, int, str | None]]) -> tuple[int, int, int]:
    """(bytes, bound, sharing): the least of `rooms`, each split between the processes of the run that share it (those
    on its host its free memory, those under a cgroup its limit). Every process calls it at once."""
    import jax

    if jax.process_count() == 1:
        return (*min((room, bound) for room, bound, _ in rooms), 1)
    import numpy as np
    from jax.experimental import multihost_utils

    hashes = [None if name is None else zlib.crc32(name.encode()) & 0x7FFFFFFF for _, _, name in rooms]
    keys = np.full(16, -1, np.int32)  # (the host, and up to 15 cgroups: a hierarchy is never that deep)
    shared = [h for h in hashes if h is not None][:16]
    keys[: len(shared)] = shared
    everyone = multihost_utils.process_allgather(keys)
    shares = [1 if h is None else int((everyone == h).any(axis=1).sum()) for h in hashes]
    return min((room // n, bound, n) for (room, bound, _), n in zip(rooms, shares))


def available(held: int = 0) -> tuple[int, str]:
    """(bytes, what bounds them) the arrays and programs of a new piece of work may take on this process's first device,
    `held` bytes of them already allocated (which the device's free memory no longer counts); with several processes,
    the least of theirs, and what bounds that one's."""
    import jax  # here, not above: the scripts read the limit before JAX is imported

    stats, sharing = jax.local_devices()[0].memory_stats(), 1
    if stats and "bytes_limit" in stats:
        room, bound = stats["bytes_limit"] - stats.get("bytes_in_use", 0) + held, -1
    else:  # two thirds: the rest for what XLA's figures leave out (peaks 15-34% above them were measured)
        room, bound, sharing = _shared_rooms(host_rooms())
        room = room * 2 // 3 + held
    limit = parse_size(os.environ[LIMIT_ENV]) if os.environ.get(LIMIT_ENV) else None
    if limit is not None and limit < room:
        room, bound = limit, LIMITED
    process = 0
    if jax.process_count() > 1:  # each process calls this at the same point: all decide (chunks, refusals) by the least
        import numpy as np
        from jax.experimental import multihost_utils

        rows = multihost_utils.process_allgather(np.array([min(room // 1024, 2**31 - 1), bound, sharing], np.int32))
        process = int(rows[:, 0].argmin())
        room, bound, sharing = 1024 * int(rows[process, 0]), int(rows[process, 1]), int(rows[process, 2])
    where = f" in process {process}" if process != jax.process_index() else ""
    if bound == LIMITED:
        return room, f" ({LIMIT_ENV}={os.environ[LIMIT_ENV]})" if not where else f" ({LIMIT_ENV}{where})"
    if bound >= 0:
        split = f", split between the {sharing} processes of the run that share it" if sharing > 1 else ""
        return room, f" (two thirds of {HOST_BOUNDS[bound]}{split}{where and ','}{where})"
    return room, f" ({where.strip()})" if where else ""


def available_bytes() -> int:
    """Bytes a new program may still allocate on this process's first device; with several processes, the least of theirs."""
    return available()[0]


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


def check(what: str, needed: int, held: int = 0) -> None:
    """Raise `DoesNotFit` unless the `needed` bytes of `what` (plural), `held` of them already allocated, are available."""
    room, why = available(held)
    if needed > room:
        import jax

        device = jax.devices()[0]
        raise DoesNotFit(f"{what} need about {gigabytes(needed)} of memory; {device.platform} device {device.id} "
                         f"has {gigabytes(room)} available{why}")
