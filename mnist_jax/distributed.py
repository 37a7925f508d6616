"""Many processes: JAX's multi-process runtime (`jax.distributed`), for studies and grids
larger than one machine. Every process runs the same script; one global mesh splits the
models over the devices of all of them (`sharding`); every process loads MNIST itself,
the results are gathered, and only process 0 writes.

JAX ends a process whose peer died, or whose coordinator it cannot reach, with a C++
abort and a stack trace. So the work runs in a child process and this one supervises
it: such an end becomes one line and exit status `EXIT_PEER_LOST`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from typing import NoReturn

import jax
import numpy as np

EXIT_PEER_LOST = 6  # another process of the run died or hung, or the coordinator could not be reached
CHILD_ENV = "MNIST_JAX_SUPERVISOR"  # set in the child: its supervisor's process id
OPTIONS = ("--coordinator", "--num-processes", "--process-id")
LOCAL_OPTIONS = {"process_id", "coordinator", "timeout", "data_dir", "source", "compile_cache", "no_cache", "out", "overwrite"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("several processes (jax.distributed; none given: a cluster JAX detects, else one process)")
    group.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0, which coordinates the run")
    group.add_argument("--num-processes", type=int, metavar="N", help="processes in the run")
    group.add_argument("--process-id", type=int, metavar="I", help="this process's number, 0..N-1")
    group.add_argument("--timeout", type=int, default=120, metavar="SECONDS",
                       help="how long to wait for every process to join, and for a silent one before stopping")


def cluster_detected() -> bool:
    """Whether `jax.distributed.initialize()` would find a cluster it knows (TPU pod,
    SLURM, Open MPI, ...). JAX keeps its list of clusters private; without it, none."""
    try:
        from jax._src.clusters import ClusterEnv

        return any(cluster.is_env_present() for cluster in ClusterEnv._cluster_types)
    except Exception:  # noqa: BLE001  (a JAX without that list: detect nothing)
        return False


def requested(argv: list[str]) -> bool:
    """Whether this command line runs as one process of several."""
    return any(arg.split("=")[0] in OPTIONS for arg in argv) or cluster_detected()


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    given = [getattr(args, o[2:].replace("-", "_")) is not None for o in OPTIONS]
    if any(given) and not all(given):
        parser.error("--coordinator, --num-processes and --process-id go together (or none, on a cluster JAX detects)")
    if args.coordinator is not None:
        if not re.fullmatch(r"[\w.\-\[\]:]+:\d{1,5}", args.coordinator) or not 0 < int(args.coordinator.rsplit(":", 1)[1]) < 65536:
            parser.error(f"argument --coordinator: expected HOST:PORT, got {args.coordinator!r}")
        if not args.num_processes > 0:
            parser.error(f"argument --num-processes: expected a positive number, got {args.num_processes}")
        if not 0 <= args.process_id < args.num_processes:
            parser.error(f"argument --process-id: expected 0 to {args.num_processes - 1} (--num-processes {args.num_processes}), got {args.process_id}")
    if not 0 < args.timeout <= 86400:
        parser.error(f"argument --timeout: expected 1 to 86400 seconds, got {args.timeout}")


def initialize(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Join the run (in the supervised child), then check that every process was started
    for the same work (the same options, bar where it finds MNIST and caches, writes, and
    its --process-id): else each says so and stops."""
    check_arguments(parser, args)
    _exit_with_supervisor()
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # the CPU's collectives between processes (GPUs, TPUs have their own)
    jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id,
                               initialization_timeout=args.timeout, heartbeat_timeout_seconds=args.timeout)
    from jax.experimental import multihost_utils

    work = {k: v for k, v in vars(args).items() if k not in LOCAL_OPTIONS}  # what every process must agree on
    digest = np.frombuffer(hashlib.sha256(json.dumps(work, sort_keys=True, default=str).encode()).digest()[:8], np.uint32)
    mine = np.concatenate([[args.num_processes or jax.process_count()], digest]).astype(np.uint32)
    every = multihost_utils.process_allgather(mine)
    if not (every == mine).all():
        parser.error(f"the {jax.process_count()} processes of the run were not started alike: each needs the same options, "
                     f"with --num-processes {jax.process_count()}, and its own --process-id")
    if getattr(args, "seeds", 0) % jax.process_count():  # each process holds as many models
        parser.error(f"argument --seeds: {args.seeds} seeds do not split evenly over {jax.process_count()} processes; "
                     f"give a multiple of {jax.process_count()}")


class StopAgreed(Exception):
    """A SIGTERM reached a process of the run, and all agreed to stop at this point."""


_sync_points = 0


def stop_if_agreed() -> None:
    """In a run of several processes, raise `StopAgreed` once a SIGTERM (as a cluster
    sends every process before it ends them) has reached any of them: JAX's preemption
    service takes the signal and names the point where all stop together. Every process
    must call this at the same points of the work; a lone process has its own handler."""
    global _sync_points
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        _sync_points += 1
        if multihost_utils.reached_preemption_sync_point(_sync_points):
            raise StopAgreed


def is_main() -> bool:
    """Process 0: the one that writes and prints."""
    return jax.process_index() == 0


def supervise() -> NoReturn:
    """Run this command again as a child and stop as it does; a child aborted by JAX's
    runtime (a peer died, the coordinator is unreachable) ends in one line. The child's
    stdout passes through; of its stderr, the lines this project writes."""
    child = subprocess.Popen([sys.executable, *sys.argv], env={**os.environ, CHILD_ENV: str(os.getpid())},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace", bufsize=1)
    for stop in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # each becomes the SIGTERM JAX's preemption service takes
        signal.signal(stop, lambda *_: child.send_signal(signal.SIGTERM))
    runtime_log = []

    def forward(stream, to, runtime) -> None:
        for line in stream:
            if runtime(line):
                runtime_log.append(line)
            else:
                to.write(line)
                to.flush()

    out = threading.Thread(target=forward, args=(child.stdout, sys.stdout, lambda line: "[Gloo]" in line or "peer ranks" in line))  # Gloo prints to stdout, its lines at times cut in two
    out.start()
    in_traceback = []  # a Python traceback of the child (a collective failing as a peer dies) is the runtime's too

    def runtime(line: str) -> bool:
        if line.startswith("Traceback (most recent call last):"):
            in_traceback.append(True)
        return bool(in_traceback) or _runtime_line(line)

    forward(child.stderr, sys.stderr, runtime)
    out.join()
    status = child.wait()
    from mnist_jax import cli

    if status >= 0 and status in cli.DOCUMENTED_EXITS:
        sys.exit(status)
    cli.fail(diagnosis(runtime_log, status), EXIT_PEER_LOST)


def _runtime_line(line: str) -> bool:
    """A line of JAX's C++ runtime, Gloo or a Python warning, not of this project."""
    return "[Gloo]" in line or bool(re.match(r"[EFWI]\d{4} |\*\*\*|    @ |\S+Warning: |  warnings\.warn|RPC: |\d+$|The tasks have crashed|"
                         r"absl::|\s*$|terminate called|  what\(\)", line))


def diagnosis(log: list[str], status: int) -> str:
    """One line: why the child ended, from the runtime's log."""
    text = "".join(log)
    if m := re.search(r"tasks are unhealthy \(stopped sending heartbeats\):\s*([\d,\s]+?)\n\S", text + "\nX"):
        ids = ", ".join(m.group(1).split())
        return f"process {ids} of the run stopped answering (it died or hung); this process stopped too, writing nothing"
    if "RegisterTask" in text or "Barrier" in text and "DEADLINE_EXCEEDED" in text:
        return "could not join the run: the coordinator is unreachable, or not every process started in time; nothing written"
    if status < 0:
        return f"the run's work was ended by {signal.Signals(-status).name}; nothing written"
    if m := re.search(r"absl::Status: (.*)", text):
        return f"the run stopped: {m.group(1)}; nothing written"
    if m := re.search(r"Traceback \(most recent call last\):\n(?:[ \t].*\n)*(\S.*)", text):
        return f"the run's work failed: {m.group(1)}; nothing written"
    return f"the run's work ended with status {status}; nothing written"


def _exit_with_supervisor() -> None:
    """In the child: stop when the supervisor is gone (killed), as the run's peers then must."""
    supervisor = os.environ.get(CHILD_ENV)
    if supervisor is None:
        return

    def watch() -> None:
        while os.getppid() == int(supervisor):
            time.sleep(1)
        os._exit(EXIT_PEER_LOST)

    threading.Thread(target=watch, daemon=True).start()
