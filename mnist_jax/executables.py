"""Compiled programs kept between processes: JAX's persistent cache skips compiling, but every start
still traces and lowers each program to find its entry; this keeps the executable itself, found by
what decides it (the project's code, the packages, the machine, JAX's settings, the arguments), so a
warm start neither traces nor lowers. It lives in JAX's cache folder and is off where that is off;
like JAX's own entries, its files are machine code, to keep in a folder only you can write.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import math
import os
import pickle
import platform
import time
from functools import cache
from pathlib import Path
from typing import Callable

import jax
import jaxlib
import ml_dtypes
import numpy as np
import optax
from jax.experimental import serialize_executable

from mnist_jax import files

PREFIX = "mnist_jax-"  # beside JAX's own entries, in the same folder
UNUSED_DAYS = 30  # an entry no start has loaded for this long is deleted when another is kept
# JAX's settings that never change a program: the cache's own (some JAX sets, some `_compile_afresh` changes), and logging
CACHE_SETTINGS = {"jax_compilation_cache_dir", "jax_enable_compilation_cache", "jax_compilation_cache_max_size",
                  "jax_persistent_cache_min_compile_time_secs", "jax_persistent_cache_min_entry_size_bytes",
                  "jax_log_compiles", "jax_explain_cache_misses", "jax_logging_level"}


@cache
def _machine_and_code() -> str:
    """What decides a program and stays as it is for the process: the project's code, the packages, the CPU."""
    source = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        source.update(path.read_bytes())
    cpu = [platform.machine(), platform.processor()]
    if os.path.exists("/proc/cpuinfo"):  # XLA:CPU compiles for this CPU's instruction sets
        cpu += sorted({line for line in Path("/proc/cpuinfo").read_text().splitlines()
                       if line.startswith(("model name", "flags", "Features", "CPU part"))})
    versions = [(m.__name__, m.__version__) for m in (jax, jaxlib, optax, np, ml_dtypes)] + [("flax", _flax_version())]
    flags = os.environ.get("XLA_FLAGS", "")
    if flags.strip() and not flags.strip().startswith("--"):  # XLA reads such a value as the name of a file of flags
        with contextlib.suppress(OSError, UnicodeDecodeError):
            flags += "\n" + Path(flags.strip()).read_text()
    return repr((source.hexdigest(), versions, cpu, flags))


def _flax_version() -> str:
    try:
        return importlib.metadata.version("flax")  # without importing Flax, which a warm start does not need
    except importlib.metadata.PackageNotFoundError:  # a Flax without its metadata (a source folder on the path)
        import flax

        return flax.__version__


def _folder() -> Path | None:
    if jax.process_count() > 1 or not jax.config.jax_enable_compilation_cache:
        return None
    folder = jax.config.jax_compilation_cache_dir
    return Path(folder) if folder else None


def _key(what: str, args: tuple) -> str:
    """All that decides the program: what it closes over, its arguments' types and places, and `_machine_and_code`,
    JAX's settings and devices (read each time: a process may change them)."""
    leaves, tree = jax.tree.flatten(args)
    avals = [(jax.typeof(x), getattr(x, "sharding", None)) for x in leaves]
    settings = sorted(((k, v) for k, v in jax.config.values.items() if k not in CACHE_SETTINGS), key=str)
    settings.append(jax.sharding.get_abstract_mesh())  # (`jax.set_mesh`'s, kept apart from the settings)
    devices = [(d.platform, d.device_kind, d.id, d.client.platform_version) for d in jax.devices()]
    return hashlib.sha256(repr((_machine_and_code(), settings, devices, jax.process_count(), what, str(tree), avals)).encode()).hexdigest()


_events = {"/jax/core/compile/backend_compile_duration": 0, "/jax/compilation_cache/cache_hits": 0}  # this process's


def _count(event: str, *_, **__) -> None:
    if event in _events:
        _events[event] += 1


jax.monitoring.register_event_listener(_count)  # JAX's persistent cache serving a program
jax.monitoring.register_event_duration_secs_listener(_count)  # a program compiled or served


def _compile_afresh(lower: Callable[[], jax.stages.Lowered]) -> tuple[jax.stages.Compiled, bool]:
    """The program compiled, and whether XLA compiled it just now: XLA:CPU serializes an executable it loaded (from
    JAX's persistent cache, even by way of JAX's in-memory one) without its functions, and the copy fails on its first
    run, so only a fresh one is kept. JAX does not write these programs to its cache, so that a fresh compile fills this one."""
    lowered = lower()  # (outside the count: whatever building it compiles is not this program)
    (compiled, served), least = _events.values(), jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_persistent_cache_min_compile_time_secs", math.inf)
    try:
        program = lowered.compile()
        now_compiled, now_served = _events.values()
        return program, now_compiled > compiled and now_served == served  # (JAX's in-memory cache: neither event)
    finally:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", least)


_in_memory: dict[str, jax.stages.Compiled] = {}  # this process's programs, by `_key`


def compiled(what: str, build: Callable[[], Callable], *args) -> jax.stages.Compiled:
    """The jitted function `build()` returns, compiled for `args` (no static or donated arguments: a program a JAX cache
    served is compiled again as `jax.jit(lambda *a: build()(*a))`); `what` names all it closes over (its function
    and the configuration it was built from). Compiled once per process (each run builds its functions anew, so
    `jax.jit`'s own cache never serves them); between processes, loaded from JAX's cache folder when kept there
    (`build` is not called), else compiled and kept; a folder that cannot be read or written costs only the time this saves.
    The project's code is read once per process: after editing it, start a new process (a reload is not seen)."""
    key = _key(what, args)
    if key not in _in_memory:
        _in_memory[key] = _loaded_or_compiled(key, build, args)
    return _in_memory[key]


def _loaded_or_compiled(key: str, build: Callable[[], Callable], args: tuple) -> jax.stages.Compiled:
    folder = _folder()
    if folder is None:  # nothing kept here: JAX's persistent cache, if on, keeps what it compiles
        return build().lower(*args).compile()
    path = folder / f"{PREFIX}{key}"
    with contextlib.suppress(Exception):  # none, damaged, another's, or not to be read: compiled below, and replaced
        payload = path.read_bytes() if path.is_file() else b""
        if hashlib.sha256(key.encode() + payload[32:]).digest() == payload[:32]:  # this key's, whole
            devices, *serialized = pickle.loads(payload[32:])
            by_id = {d.id: d for d in jax.devices()}
            program = serialize_executable.deserialize_and_load(*serialized, execution_devices=[by_id[i] for i in devices])
            os.utime(path)  # used: not pruned
            return program
    program, fresh = _compile_afresh(lambda: build().lower(*args))
    if not fresh:  # one of JAX's caches served it (this process had it, or JAX's folder): compiled as a program of its own
        program, fresh = _compile_afresh(lambda: jax.jit(lambda *a: build()(*a)).lower(*args))
    if fresh:
        with contextlib.suppress(Exception):  # (not kept: the next start compiles it again)
            devices = [d.id for d in program.runtime_executable().local_devices()]  # the ones it runs on, in order
            body = pickle.dumps((devices, *serialize_executable.serialize(program)))
            with files.atomic_write(path) as partial:
                partial.write_bytes(hashlib.sha256(key.encode() + body).digest() + body)
            _prune(folder)
    return program


def _prune(folder: Path) -> None:
    """Delete this cache's entries that no start has loaded for `UNUSED_DAYS` (a change of the code leaves its
    programs behind)."""
    old = time.time() - UNUSED_DAYS * 86400
    for entry in folder.glob(f"{PREFIX}{'[0-9a-f]' * 64}"):  # (only names `compiled` gives)
        with contextlib.suppress(OSError):
            if entry.is_file() and not entry.is_symlink() and entry.stat().st_mtime < old:
                entry.unlink()
