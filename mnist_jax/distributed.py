"""Many processes (`jax.distributed`) for studies and grids larger than one machine: each runs the same script and
loads MNIST, one global mesh splits the models over all devices (`sharding`), only process 0 writes. JAX ends a
process whose peer died, or whose coordinator is unreachable, with a C++ abort: so the work runs in a supervised
child, and such an end becomes `PeerLost` (one line, exit status 6)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from typing import TextIO

import numpy as np

from mnist_jax.errors import DOCUMENTED_EXITS, EXIT_PEER_LOST, PeerLost, StopAgreed, UsageError

CHILD_ENV = "MNIST_JAX_SUPERVISOR"  # set in the child: its supervisor's process id
OPTIONS = ("--coordinator", "--num-processes", "--process-id")


def cluster_detected(env: dict = os.environ) -> bool:
    """Whether a cluster started this as one of several, which `jax.distributed.initialize()` joins: SLURM, MPI, TPU."""
    slurm = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_PROCID", "SLURM_LOCALID")
    tasks = env.get("SLURM_NTASKS", "")
    return (all(v in env for v in slurm) and tasks.isdigit() and int(tasks) > 1
            or "OMPI_MCA_orte_hnp_uri" in env or "," in env.get("TPU_WORKER_HOSTNAMES", ""))


def requested(argv: list[str]) -> bool:
    """Whether this command line runs as one process of several."""
    names = [arg.split("=")[0] for arg in argv if arg.startswith("--") and len(arg.split("=")[0]) > 3]
    return any(option.startswith(name) for name in names for option in OPTIONS) or cluster_detected()  # abbreviated too


def join(coordinator: str | None, num_processes: int | None, process_id: int | None, timeout: int, work: dict) -> None:
    """Join the run (in the supervised child, which ends with its supervisor, as its peers then must); `UsageError`
    unless every process was started for the same `work` (the options that decide the results)."""
    import jax
    from jax.experimental import multihost_utils

    def exit_with_supervisor() -> None:
        while os.getppid() == int(os.environ[CHILD_ENV]):
            time.sleep(1)
        os._exit(EXIT_PEER_LOST)

    threading.Thread(target=exit_with_supervisor, daemon=True).start()
    if coordinator and process_id == 0:
        _refuse_a_busy_port(coordinator)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # between CPUs (GPUs, TPUs have their own)
    jax.distributed.initialize(coordinator, num_processes, process_id,
                               initialization_timeout=timeout, heartbeat_timeout_seconds=timeout)
    signal.signal(signal.SIGTERM, _ask_stop)  # in place of JAX's preemption notifier's: see `stop_if_agreed`
    if jax.device_count() != jax.local_device_count() * jax.process_count():  # (the gather below needs them alike)
        raise UsageError(f"the {jax.process_count()} processes of the run hold different numbers of devices "
                         f"({jax.device_count()} in all, {jax.local_device_count()} here); start each with the same")
    digest = np.frombuffer(hashlib.sha256(json.dumps(work, sort_keys=True, default=str).encode()).digest()[:8], np.uint32)
    mine = np.concatenate([[num_processes or jax.process_count()], digest]).astype(np.uint32)
    if not (multihost_utils.process_allgather(mine) == mine).all():
        raise UsageError(f"the {jax.process_count()} processes of the run were not started alike: each needs the same options, "
                         f"with --num-processes {jax.process_count()}, and its own --process-id")


def _refuse_a_busy_port(coordinator: str) -> None:
    """`UsageError` if process 0 cannot listen on the coordinator's port, as JAX's coordination service will (on
    every address, reusing one that lingers): JAX's own failure there is a crash."""
    port = int(coordinator.rsplit(":", 1)[1])
    try:
        probe = socket.socket(socket.AF_INET6)
    except OSError:  # (a host without IPv6)
        probe = socket.socket(socket.AF_INET)
    with probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("", port))
        except OSError as e:
            raise UsageError(f"--coordinator {coordinator}: process 0 cannot listen on port {port} ({e.strerror}); "
                             "choose another port") from None


_stop_asked = threading.Event()


def _ask_stop(_signum: int, _frame) -> None:
    _stop_asked.set()


def leave() -> None:
    """Leave the run as a normal exit does (`os._exit` skips it): a peer still connected to process 0's
    coordinator would otherwise abort when it goes."""
    import jax

    with contextlib.suppress(Exception):
        jax.distributed.shutdown()


def stop_asked() -> bool:
    """Whether a SIGTERM reached this process of several (`stop_if_agreed` acts on it after each epoch)."""
    return _stop_asked.is_set()


def stop_if_agreed() -> None:
    """`StopAgreed` once a SIGTERM (a cluster's warning) reached any process of several: every process calls
    this at the same points of the work and all-gathers its flag, so all stop at the same one. (JAX's
    preemption service agrees in threads of its own: on a loaded 2-core machine one process once stopped while
    the other waited on it.)"""
    import jax
    from jax.experimental import multihost_utils

    if jax.process_count() > 1 and multihost_utils.process_allgather(np.int32(stop_asked())).any():
        raise StopAgreed


# Decided at import, at the process's start: a child whose supervisor dies later stays one (and leaves, `join`).
_CHILD = os.environ.get(CHILD_ENV) == str(os.getppid())


def is_child() -> bool:
    """Whether this process is the child `supervise` started (an inherited or stray `CHILD_ENV` names no parent)."""
    return _CHILD


def is_main() -> bool:
    """Process 0: the one that writes and prints (a process alone is)."""
    if not is_child():
        return True
    import jax

    return jax.process_index() == 0


def supervise() -> int:
    """This command run again as a child: its exit status, or `PeerLost` if JAX's runtime aborted it. Its stdout
    passes through; of its stderr, the lines this project writes."""
    # the command as typed (python scripts/study.py, mnist-jax study, python -m mnist_jax study), its interpreter's options too
    child = subprocess.Popen([sys.executable, *sys.orig_argv[1:]], env={**os.environ, CHILD_ENV: str(os.getpid())},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace", bufsize=1)
    for stop in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # each becomes the SIGTERM that `stop_if_agreed` agrees on
        signal.signal(stop, lambda *_: child.send_signal(signal.SIGTERM))
    runtime_log = []
    out = threading.Thread(target=forward, args=(child.stdout, sys.stdout, GLOO_LINE, runtime_log))
    out.start()
    forward(child.stderr, sys.stderr, RUNTIME_LINE, runtime_log)
    out.join()
    status = child.wait()
    if status in DOCUMENTED_EXITS:  # (a signal's end is negative)
        return status
    raise PeerLost(diagnosis(runtime_log, status))


def forward(stream: Iterable[str], to: TextIO, runtime: re.Pattern, log: list[str]) -> None:
    """Pass on this project's lines; keep in `log`, for `diagnosis`, those `runtime` finds, a traceback on, and a
    blank line after a kept one (the end of a line cut in two)."""
    in_traceback = kept = False
    for line in stream:
        in_traceback = in_traceback or line.startswith("Traceback (most recent call last):")
        kept = in_traceback or bool(runtime.search(line)) or (kept and not line.strip())
        if kept:
            log.append(line)
        else:
            to.write(line)
            to.flush()


# Gloo prints to stdout from a thread per device, so two of its lines can interleave, leaving pieces of one
GLOO_LINE = re.compile(r"\[Gloo\]|peer ranks|^\d+$|^ is connected to |^Expected number")
RUNTIME_LINE = re.compile(r"\[Gloo\]|^(?:[EFWI]\d{4} |\*\*\*|    @ |\S+Warning: |  warnings\.warn|RPC: |\d+$|"
                          r"The tasks have crashed|absl::|\s*$|terminate called|  what\(\))")


def diagnosis(log: list[str], status: int) -> str:
    """One line: why the child ended, from the runtime's log."""
    text = "".join(log)
    if m := re.search(r"tasks are unhealthy \(stopped sending heartbeats\):\s*([\d,\s]+?)\n\S", text + "\nX"):
        ids = ", ".join(m.group(1).split())
        return f"process {ids} of the run stopped answering (it died or hung); this process stopped too, writing nothing"
    if "RegisterTask" in text or "Barrier" in text and "DEADLINE_EXCEEDED" in text:
        return "could not join the run: the coordinator is unreachable, or not every process started in time; nothing written"
    if "Gloo context initialization failed" in text and "GetKeyValue() timed out" in text:  # a peer never came to the exchange
        return ("another process of the run stopped before its first exchange of results (its own line says why); "
                "this process stopped too, writing nothing")
    if status < 0:
        return f"the run's work was ended by {signal.Signals(-status).name}; nothing written"
    if m := re.search(r"absl::Status: (.*)", text):
        return f"the run stopped: {m.group(1)}; nothing written"
    if m := re.search(r"Traceback \(most recent call last\):\n(?:[ \t].*\n)*(\S.*)", text):
        return f"the run's work failed: {m.group(1)}; nothing written"
    return f"the run's work ended with status {status}; nothing written"

