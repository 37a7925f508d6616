"""Several processes (`jax.distributed`, here on 127.0.0.1, each with simulated CPU
devices) train one study or grid as one process does: the models split over every
process's devices by one global mesh, only process 0 writing. A process that dies stops
the others within the timeout, in one line."""

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, assert_one_line_error, assert_tensorboard_log, in_cgroup, memory_cgroup, run_script, run_script_in_process

from mnist_jax import distributed, memory
from mnist_jax.distributed import GLOO_LINE, diagnosis, forward, requested
from mnist_jax.stages import STAGES


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def devices_env(n: int) -> dict:
    return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}


def start(script: str, args: list, process: int, processes: int, port: int, devices: int = 2, env: dict | None = None,
          cgroup: Path | None = None) -> subprocess.Popen:
    argv = [sys.executable, str(ROOT / "scripts" / script), *map(str, args),
            "--coordinator", f"127.0.0.1:{port}", "--num-processes", str(processes), "--process-id", str(process)]
    return subprocess.Popen(argv if cgroup is None else in_cgroup(cgroup, argv), env={**devices_env(devices), **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def start_processes(script: str, args: list, processes: int = 2, devices: int = 2) -> list[subprocess.Popen]:
    port = free_port()
    return [start(script, args, i, processes, port, devices) for i in range(processes)]


def start_alone(script: str, args: list, devices: int) -> subprocess.Popen:
    """One process of `devices` simulated devices."""
    return subprocess.Popen([sys.executable, str(ROOT / "scripts" / script), *map(str, args)], env=devices_env(devices),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(procs: list[subprocess.Popen]) -> list[tuple[int, str, str]]:
    outputs = [p.communicate(timeout=600) for p in procs]
    return [(p.returncode, *output) for p, output in zip(procs, outputs)]


def run_processes(script: str, args: list, processes: int = 2, devices: int = 2) -> list[tuple[int, str, str]]:
    return finish(start_processes(script, args, processes, devices))


@pytest.fixture(scope="module")
def studies(tmp_path_factory, data_args):
    """4 seeds of `linear_ce` and `mlp` (one on each device of the run), one epoch: two
    processes of 2 devices each (logging to TensorBoard), one process of 4 devices, one
    process of one device, all at once (the two processes wait on each other at every
    collective: the others use that time)."""
    args = ["--stages", "linear_ce,mlp", "--seeds", 4, "--epochs", 1, *data_args]
    out = {name: tmp_path_factory.mktemp(name) for name in ("two_processes", "four_devices", "one_device")}
    two = start_processes("study.py", [*args, "--out", out["two_processes"] / "run",
                                       "--tensorboard", out["two_processes"] / "board"])
    alone = [start_alone("study.py", [*args, "--out", out[name] / "run"], devices) for name, devices in (("four_devices", 4), ("one_device", 1))]
    finished = finish(two)
    for status, _, stderr in finish(alone):
        assert status == 0, stderr
    return finished, {name: folder / "run" for name, folder in out.items()}


@pytest.mark.slow
def test_two_processes_train_a_study_exactly_as_one_process_and_as_one_device(studies):
    finished, out = studies
    for status, _, stderr in finished:
        assert status == 0, stderr
    (_, stdout_0, _), (_, stdout_1, _) = finished
    assert "4 x cpu" in stdout_0 and "2 processes" in stdout_0 and stdout_1 == ""  # process 0 speaks for the run
    reports = {name: json.loads((folder / "results.json").read_text()) for name, folder in out.items()}
    assert reports["two_processes"]["device"].endswith("2 processes")
    for name in ("four_devices", "one_device"):
        for stage in ("linear_ce", "mlp"):
            ours, theirs = reports["two_processes"]["stages"][stage], reports[name]["stages"][stage]
            assert ours["test_accuracies"] == theirs["test_accuracies"], (name, stage)  # float32, exactly
            assert ours["history"] == theirs["history"], (name, stage)
        with np.load(out["two_processes"] / "study_arrays.npz") as ours, np.load(out[name] / "study_arrays.npz") as theirs:
            np.testing.assert_array_equal(ours["linear_ce_weights"], theirs["linear_ce_weights"])
            np.testing.assert_array_equal(ours["mlp_confusion"], theirs["mlp_confusion"])
    assert len(set(reports["two_processes"]["stages"]["mlp"]["test_accuracies"])) == 4  # four seeds, four models


@pytest.mark.slow
def test_a_study_logs_each_seed_to_tensorboard_once_from_process_0(studies):
    board = studies[1]["two_processes"].parent / "board"
    report = json.loads((studies[1]["two_processes"] / "results.json").read_text())
    for stage, r in report["stages"].items():
        for seed, history, accuracy in zip(r["seeds"], r["history"], r["test_accuracies"], strict=True):
            hparams = {"stage": stage, "epochs": 1, "batch_size": 128, "lr": 1e-3, "seed": seed, "hidden": STAGES[stage].hidden,
                       "dropout": 0}
            assert_tensorboard_log(board / f"{stage}-seed{seed}", history, accuracy, hparams)  # one event file: process 0's
    assert len(list(board.iterdir())) == 8


@pytest.mark.slow
def test_two_processes_train_a_grid_as_one_process_does(tmp_path, data_args):
    args = ["--stages", "linear_ce", "--lr", "1e-3,1e-2", "--seeds", 4, "--epochs", 1, *data_args]
    cache = Path(os.environ["JAX_COMPILATION_CACHE_DIR"])  # the session's, which the scripts share
    kept_by_jax = set(cache.glob("jit_epoch-*"))
    two, alone = start_processes("sweep.py", [*args, "--out", tmp_path / "two"]), start_alone("sweep.py", [*args, "--out", tmp_path / "one"], 1)
    for status, _, stderr in finish([*two, alone]):
        assert status == 0, stderr
    two, one = (json.loads((tmp_path / name / "sweep.json").read_text()) for name in ("two", "one"))
    assert two["rows"] == one["rows"] and len(two["rows"]) == 8
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["sweep.json"]
    assert set(cache.glob("jit_epoch-*")) - kept_by_jax  # several processes keep no program whole: JAX's cache keeps theirs


@pytest.mark.slow
def test_a_killed_process_stops_the_other_within_the_timeout_in_one_line(tmp_path, data_args):
    port, timeout = free_port(), 6
    args = ["--stages", "linear_ce", "--seeds", 8, "--epochs", 1000, "--timeout", timeout, "--out", tmp_path / "run", *data_args]
    survivor, victim = start("study.py", args, 0, 2, port), start("study.py", args, 1, 2, port)
    for line in survivor.stdout:  # joined, compiled, training
        if line.startswith("linear_ce, 8 seeds: epoch 1/1000"):
            break
    assert survivor.poll() is None and victim.poll() is None, survivor.stderr.read()
    os.killpg(victim.pid, 9)  # the process and its supervised child
    killed = time.monotonic()
    stdout, stderr = survivor.communicate(timeout=120)
    assert time.monotonic() - killed < timeout + 20
    assert survivor.returncode == 6, stderr
    assert stderr.strip().splitlines() == ["process 1 of the run stopped answering (it died or hung); this process stopped too, writing nothing"]
    assert not (tmp_path / "run" / "results.json").exists()
    victim.communicate()


@pytest.mark.slow
def test_processes_started_unalike_are_refused_by_each_in_one_line(tmp_path, data_args):
    port = free_port()
    args = ["--stages", "linear_ce", "--seeds", 2, "--epochs", 1, "--out", tmp_path / "run", "--timeout", 30, *data_args]
    first = start("study.py", args, 0, 2, port)
    second = start("study.py", args, 1, 3, port)  # --num-processes 3, against the run's 2
    for proc in (first, second):
        stdout, stderr = proc.communicate(timeout=300)
        assert_one_line_error(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr),
                              "were not started alike", "--num-processes 2")
    assert not (tmp_path / "run" / "results.json").exists()


@pytest.mark.slow
def test_seeds_that_leave_a_device_idle_or_unlike_devices_are_refused_by_each_process_in_one_line(tmp_path, data_args):
    """Each process of a run must hold models: 2 seeds over 8 devices left one without any (it hung for minutes), as would
    chunks of 2 seeds over 4 devices."""
    args = ["--stages", "linear_ce", "--epochs", 1, "--timeout", 60, *data_args]
    port = free_port()
    few = start_processes("study.py", [*args, "--seeds", 2, "--out", tmp_path / "few"], devices=4)
    chunks = start_processes("study.py", [*args, "--seeds", 8, "--seeds-at-once", 2, "--out", tmp_path / "chunks"], devices=2)
    unlike = [start("study.py", [*args, "--seeds", 4, "--out", tmp_path / "unlike"], i, 2, port, devices) for i, devices in enumerate((1, 3))]
    for proc, fragment in [*((p, "--seeds: 2 seeds do not split evenly over the 8 devices of 2 processes") for p in few),
                           *((p, "--seeds-at-once: 2 seeds do not split evenly over the 4 devices of 2 processes") for p in chunks),
                           *((p, "hold different numbers of devices") for p in unlike)]:
        stdout, stderr = proc.communicate(timeout=300)
        assert_one_line_error(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), fragment)
    assert not list(tmp_path.rglob("results.json"))


@pytest.mark.slow
def test_processes_that_see_different_memory_decide_alike_by_the_least(tmp_path, data_args):
    """Memory is each process's own figure; chunk sizes and refusals must agree: process 0 capped below any model, process 1
    free, both refuse in one line (before, process 1 went on alone and ended 40 s later with a raw Gloo error)."""
    args = ["--epochs", 1, "--seeds", 4, "--timeout", 60, *data_args]
    port, shared_port = free_port(), free_port()
    capped = [start("study.py", [*args, "--stages", "linear_ce", "--out", tmp_path / "run"], i, 2, port,
                    env={memory.LIMIT_ENV: "1M"} if i == 0 else {}) for i in range(2)]
    # without a cap, the processes of a run on one host split its free memory between them, and say so
    sharing = [start("study.py", [*args, "--stages", "mlp", "--hidden", 20_000_000, "--out", tmp_path / "shared"], i, 2, shared_port)
               for i in range(2)]
    lines = refusals(capped + sharing)
    assert lines[0].endswith("available (MNIST_JAX_MEMORY_LIMIT=1M)\n") and lines[1].endswith("(MNIST_JAX_MEMORY_LIMIT in process 0)\n")
    assert all("split between the 2 processes of the run that share it" in line for line in lines[2:]), lines


def refusals(procs: list[subprocess.Popen]) -> list[str]:
    """The one line of each process, each refused for memory (status 4)."""
    lines = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert_one_line_error(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), "need about", status=4)
        lines.append(stderr)
    return lines


def test_a_memory_cgroups_limit_is_split_between_the_processes_under_it_alone(tmp_path, data_args):
    """(Jobs or containers on one host: the run's processes were taken to share what each one's limit leaves; and tasks
    under one job's limit, each in a cgroup of its own, were not.)"""
    args = ["--stages", "mlp", "--hidden", 20_000_000, "--seeds", 4, "--timeout", 60, "--out", tmp_path / "run", *data_args]
    port = free_port()
    with memory_cgroup(3 * 2**30, "a") as first, memory_cgroup(3 * 2**30, "b") as second:
        lines = refusals([start("study.py", args, i, 2, port, cgroup=cgroup) for i, cgroup in enumerate((first, second))])
    assert all("(two thirds of what its memory cgroup leaves" in line and "split" not in line for line in lines), lines
    # a cluster job's tasks (SLURM's job/step/task cgroups): the limit is their parent's, which they split
    with memory_cgroup(3 * 2**30, "job") as job:
        tasks, port = [job.parent / f"task_{i}" for i in range(2)], free_port()
        for task in tasks:
            task.mkdir()
        try:
            lines = refusals([start("study.py", args, i, 2, port, cgroup=task / "cgroup.procs") for i, task in enumerate(tasks)])
        finally:
            for task in tasks:
                task.rmdir()
    assert all("(two thirds of what its memory cgroup leaves, split between the 2 processes of the run that share it" in line
               for line in lines), lines
    assert not list(tmp_path.rglob("results.json"))


@pytest.mark.slow
def test_a_process_that_cannot_reach_its_coordinator_gives_up_within_the_timeout(tmp_path):
    start_time = time.monotonic()
    proc = run_script("sweep.py", "--stages", "linear_ce", "--out", tmp_path / "run", "--coordinator", f"127.0.0.1:{free_port()}",
                      "--num-processes", "2", "--process-id", "1", "--timeout", "5")
    assert time.monotonic() - start_time < 5 + 30
    assert_one_line_error(proc, "could not join the run", status=6)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_coordinator_port_already_in_use_is_refused_by_process_0_in_one_line(tmp_path):
    """(JAX's coordination service, failing to listen there, crashes the process.)"""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        proc = run_script("study.py", "--stages", "linear_ce", "--out", tmp_path / "run", "--coordinator", address,
                          "--num-processes", "2", "--process-id", "0", "--timeout", "5")
    assert_one_line_error(proc, f"--coordinator {address}: process 0 cannot listen on port", "choose another port")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.parametrize("args, fragment, where", [
    (["--num-processes", "2", "--process-id", "2", "--coordinator", "127.0.0.1:1234"], "--process-id: expected 0 to 1", "process"),
    (["--num-processes", "2", "--process-id", "0"], "go together", "in process"),
    (["--num-processes", "2", "--process-id", "0", "--coordinator", "localhost"], "expected HOST:PORT", "in process"),
])
def test_a_wrong_process_number_or_address_is_refused_in_one_line(tmp_path, args, fragment, where):
    """The first as a user meets it: its supervisor runs the command again as a child,
    whose refusal (status 2, one line) passes through. The others against the script's
    parsing, in this process: the same check of the same arguments."""
    run = run_script if where == "process" else run_script_in_process
    assert_one_line_error(run("study.py", *args, "--out", tmp_path / "run"), fragment)


def test_a_supervisors_variable_inherited_by_a_single_process_changes_nothing(tmp_path, monkeypatch):
    """(Set in a child by its supervisor alone: one left in a shell's environment made train.py end in an AttributeError
    and study.py exit silently with status 6.)"""
    monkeypatch.setenv(distributed.CHILD_ENV, "1")  # (after this process started: only what the scripts read later sees it)
    proc = run_script_in_process("study.py", "--stages", "linear_ce", "--seeds", "1", "--epochs", "1", "--out", tmp_path / "run")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert "wrote" in proc.stdout and (tmp_path / "run" / "results.json").is_file()


HEARTBEAT_ABORT = """E1202 03:16:59.052532    8764 coordination_service.cc:1549] [1028] Use error polling to propagate the following error to all tasks: UNAVAILABLE: The following tasks are unhealthy (stopped sending heartbeats):
1
The tasks have crashed. Check the task logs for an earlier error, or scheduler events (e.g. preemption, eviction) to debug further. [type.googleapis.com/tensorflow.CoordinationServiceError='']
F1202 03:16:59.054798    8782 client.h:80] Terminating process because the JAX distributed service detected fatal errors.
*** Check failure stack trace: ***
    @     0x7f34d2040634  absl::lts_20260107::log_internal::LogMessage::SendToLog()
"""
CONNECT_ABORT = """F1202 03:19:45.007156    9047 client.h:80] Terminating process because the JAX distributed service detected fatal errors. absl::Status: DEADLINE_EXCEEDED: Deadline Exceeded

RPC: /xla.coordination.CoordinationService/RegisterTask
*** Check failure stack trace: ***
"""


GLOO_NEVER_MET = """Traceback (most recent call last):
  File "scripts/study.py", line 104, in <module>
jax.errors.JaxRuntimeError: UNKNOWN: Gloo context initialization failed: DEADLINE_EXCEEDED: GetKeyValue() timed out with key: cpu:gloo/0,1,2048,2049/0 and duration: 29.9999998s [type.googleapis.com/tensorflow.CoordinationServiceError='']
"""


def test_the_runtimes_abort_is_read_as_one_line_naming_the_lost_process():
    """The logs JAX's runtime wrote when a peer was killed, when no coordinator answered, and when a peer refused its
    work (its --out held results) while this process went on to the first exchange of results."""
    assert diagnosis(GLOO_NEVER_MET.splitlines(keepends=True), 1).startswith("another process of the run stopped before")
    assert diagnosis(HEARTBEAT_ABORT.splitlines(keepends=True), -6).startswith("process 1 of the run stopped answering")
    assert diagnosis(CONNECT_ABORT.splitlines(keepends=True), -6).startswith("could not join the run")
    assert diagnosis([], -9) == "the run's work was ended by SIGKILL; nothing written"


def test_gloos_lines_are_kept_from_stdout_even_when_two_interleave():
    """Gloo writes a line in pieces from a thread per device: another line can land between any two."""
    pieces = ["[Gloo] Rank ", "3", " is connected to ", "3", " peer ranks. ", "Expected number of connected peer ranks is : ",
              "3", "\n"]
    other = "[Gloo] Rank 2 is connected to 3 peer ranks. Expected number of connected peer ranks is : 3\n"
    ours = ["data: IDX files in mnist\n", "mlp, 4 seeds: epoch 1/1\n", "\n", "4 seeds, 1 epoch\n"]
    for cut in range(1, len(pieces)):
        written = "".join(pieces[:cut]) + other + "".join(pieces[cut:])
        passed, log = io.StringIO(), []
        forward(io.StringIO(ours[0] + written + "".join(ours[1:])), passed, GLOO_LINE, log)
        assert passed.getvalue() == "".join(ours), cut


def test_one_process_stays_one_process_unless_asked_or_on_a_cluster(monkeypatch):
    for variable in ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "OMPI_MCA_orte_hnp_uri"):
        monkeypatch.delenv(variable, raising=False)
    assert not requested(["--stages", "mlp", "--seeds", "10"])
    assert requested(["--coordinator=10.0.0.1:1234", "--num-processes", "2", "--process-id", "1"])


@pytest.mark.slow
def test_sigterm_to_every_process_stops_the_run_together_and_it_resumes_exactly(tmp_path, data_args):
    """As SLURM's scancel does: a stop signal to each process while the run trains. All agree on
    the epoch to stop after, save it, and end in one line with
    status 143 well within a cluster's 30 s of grace; two processes resumed end exactly as
    one process of four devices trained through, and a SIGTERM after their last epoch lets
    them write every result before they end with 143."""
    args = ["--stages", "linear_ce,mlp", "--seeds", 4, "--epochs", 2, *data_args]
    port, out = free_port(), tmp_path / "run"
    procs = [start("study.py", [*args, "--out", out], i, 2, port) for i in range(2)]
    for line in procs[0].stdout:
        if line.startswith("linear_ce, 4 seeds: epoch 1/2"):
            break
    signalled = time.monotonic()
    procs[0].send_signal(signal.SIGINT)  # Ctrl-C, and a closed terminal: each process's supervisor makes it a SIGTERM
    procs[1].send_signal(signal.SIGHUP)
    ends = [(proc.communicate(timeout=120)[1], proc.returncode) for proc in procs]
    for stderr, status in ends:
        assert status == 143, ends
        assert len(stderr.strip().splitlines()) == 1 and "stopped by SIGTERM:" in stderr and "--resume" in stderr
    assert time.monotonic() - signalled < 30
    assert not (out / "results.json").exists() and list((out / "progress").glob("*.npz"))
    resumed, alone = start_processes("study.py", [*args, "--out", out, "--resume"]), start_alone("study.py", [*args, "--out", tmp_path / "alone"], 4)
    for line in resumed[0].stdout:
        if line.startswith("mlp, 4 seeds: epoch 2/2"):  # the last epoch, agreed on: a SIGTERM now lets the run finish
            break
    for proc in resumed:
        proc.send_signal(signal.SIGTERM)
    *ends, (status, _, stderr) = finish([*resumed, alone])
    assert status == 0, stderr
    for status, _, stderr in ends:
        assert status == 143 and stderr == "stopped by SIGTERM: it came after the last epoch; every result is written\n", ends
    resumed, whole = (json.loads((folder / "results.json").read_text()) for folder in (out, tmp_path / "alone"))
    for stage in ("linear_ce", "mlp"):
        assert resumed["stages"][stage]["test_accuracies"] == whole["stages"][stage]["test_accuracies"]
        assert resumed["stages"][stage]["history"] == whole["stages"][stage]["history"]
