"""What the scripts share: one parser for their common options, one-line failures with the exit
statuses of `errors`, progress lines, markdown tables. No JAX import until the arguments are checked."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


def _stop_before_work(signum: int, _frame) -> None:
    """Until `parse` has set JAX up (a signal inside its import can abort the process): one line, --out freed, out."""
    os.write(2, f"stopped by {signal.Signals(signum).name}: nothing was started\n".encode())
    release_locks = getattr(sys.modules.get("mnist_jax.files"), "release_locks", None)  # None while files is imported
    if release_locks:
        release_locks()
    os._exit(128 + signum)


# Before anything else is imported: a signal from a script's first milliseconds on ends in one line.
_here, _folder = Path(__file__).resolve().parent, Path(sys.argv[0]).resolve().parent
# One of this project's scripts: in a clone's scripts/ (whichever mnist_jax it imports), or installed (mnist_jax.__main__).
if _folder == _here / "scripts" or _folder.name == "scripts" and (_folder.parent / "mnist_jax" / "cli.py").is_file():
    for _signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(_signum) is not signal.SIG_IGN:
            signal.signal(_signum, _stop_before_work)

import argparse  # noqa: E402
import atexit  # noqa: E402
import concurrent.futures  # noqa: E402
import contextlib  # noqa: E402
import errno  # noqa: E402
import importlib  # noqa: E402
import io  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import stat  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from typing import Callable, NoReturn  # noqa: E402

from mnist_jax import distributed, files, memory  # noqa: E402
from mnist_jax.data import SOURCES, default_cache_dir  # noqa: E402
from mnist_jax.errors import (  # noqa: E402
    EXIT_BROKEN_PIPE, EXIT_DIVERGED, EXIT_DOES_NOT_FIT, EXIT_PEER_LOST, EXIT_USAGE, EXIT_WRITE_FAILED,
    DataError, DoesNotFit, NonFiniteLoss, PeerLost, ProgressError, StopAgreed, UsageError,
)
from mnist_jax.progress import GridProgress  # noqa: E402
from mnist_jax.stages import MAX_SEED, STAGES, TrainConfig, as_float32, count  # noqa: E402

MAX_INT = 2**31 - 1  # sizes, counts and epochs: what an int32 index holds
# Options that say where a process finds its inputs and puts its outputs, not what it computes.
LOCAL_OPTIONS = {"process_id", "coordinator", "timeout", "data_dir", "source", "compile_cache", "no_cache", "out", "overwrite",
                 "tensorboard", "chosen_on"}


def checked(convert: Callable[[str], object], accept: Callable[[object], bool], expected: str) -> Callable[[str], object]:
    """An argument type: `convert(text)` if `accept` takes it, else 'expected ..., got ...'."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


positive_int = checked(int, lambda v: 0 < v <= MAX_INT, f"an integer from 1 to {MAX_INT}")
seed = checked(int, lambda v: 0 <= v <= MAX_SEED, f"a seed from 0 to {MAX_SEED}")
positive_float = checked(float, lambda v: 0 < as_float32(v) < math.inf, "a positive number a float32 holds")
dropout_rate = checked(float, lambda v: 0 <= v and as_float32(v) < 1, "a rate in [0, 1) (as a float32: under 1)")
stage = checked(str, lambda v: v in STAGES, f"a stage ({', '.join(STAGES)})")
cpu_threads = checked(int, lambda v: 0 < v <= (os.cpu_count() or 1), f"an integer from 1 to {os.cpu_count() or 1}, this machine's CPUs")
seconds = checked(int, lambda v: 0 < v <= 86400, "1 to 86400 seconds")
address = checked(str, lambda v: re.fullmatch(r"[\w.\-\[\]:]+:\d{1,5}", v) and 0 < int(v.rsplit(":", 1)[1]) < 65536, "HOST:PORT")


def comma_separated(item: Callable[[str], object]) -> Callable[[str], list]:
    """An argument type: a comma-separated list, each item of type `item`, each value once."""

    def parse(text: str) -> list:
        parts = text.split(",")
        try:
            values = [item(part) for part in parts]
        except argparse.ArgumentTypeError as e:
            raise argparse.ArgumentTypeError(f"in {text!r}: {e}") from None
        if again := [part for i, (part, value) in enumerate(zip(parts, values)) if value in values[:i]]:
            raise argparse.ArgumentTypeError(f"in {text!r}: {again[0]} repeats a value given before; name each once")
        return values

    return parse


def stages(text: str) -> list[str]:
    """`all`, or comma-separated stage names."""
    if text != "all" and "all" in text.split(","):
        raise argparse.ArgumentTypeError(f"in {text!r}: all names every stage, so it stands alone")
    return list(STAGES) if text == "all" else comma_separated(stage)(text)


def _path(text: str) -> Path | None:
    return Path(text) if text else None  # not "": Path("") is the working folder


output_folder = checked(_path, lambda path: path.is_dir() or not path.exists(), "a folder to write into (a path, not a file)")
existing_folder = checked(_path, Path.is_dir, "the folder holding the four MNIST IDX files")


def broken_link(path: Path) -> str | None:
    """'<part> is a link to <target>, which ...' for the first link in `path` (itself included: then no '<part> is ')
    that leads nowhere or back to itself, else None."""
    for part in filter(Path.is_symlink, (path, *path.parents)):
        try:
            part.stat()
        except OSError as e:
            unfollowed = "the system cannot follow (a loop, or too many links)" if e.errno == errno.ELOOP else "does not exist"
            return f"{'' if part == path else f'{part} is '}a link to {os.readlink(part)}, which {unfollowed}"
    return None


def why_unwritable(path: Path) -> str | None:
    """Why folder `path` cannot be written, else None: tried by making and removing a folder in its deepest existing part."""
    if reason := broken_link(path):  # (no folder can be made in the place of a link leading nowhere or to itself)
        return reason
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    try:
        os.rmdir(tempfile.mkdtemp(dir=os.path.realpath(existing), prefix=files.PARTIAL))  # (see files.atomic_write)
    except OSError as e:
        return f"cannot make a folder in {existing}: {e.strerror}"
    return None


def refuse_in_a_run(option: str, path: Path, itself: bool = True, instead: str | None = None) -> None:
    """`UsageError` if `path` (`itself`, or only its parents) lies in the folder of a `train.py` run, its links followed:
    a run's folder holds that run alone (anything else there, it refuses to continue or replace)."""
    real = files.real_path(path)
    for folder in ((real,) if itself else ()) + tuple(real.parents):
        if files.is_run_metrics(folder / "metrics.json"):
            raise UsageError(f"{option}: {path} {'is' if folder == real else 'lies in'} {folder}, the folder of a train.py "
                             f"run, which holds that run alone; choose {instead or f'another {option}'}")


def claim(folder: Path, run: bool = False) -> None:
    """Hold `folder`, writable and written by no other run, till this process ends; else `UsageError`. `run`: the
    folder of a train.py run (that one may be there), else one that lies in none."""
    refuse_in_a_run("--out", folder, itself=not run)
    if (reason := why_unwritable(folder)) is None:
        try:
            return files.lock_folder(folder)
        except files.FolderBusy as e:
            raise UsageError(f"--out: {e}; wait for it to end or choose another --out") from None
        except OSError as e:
            reason = f"{e.filename or folder}: {e.strerror}"
    raise UsageError(f"--out: cannot write to {folder} ({reason})")


def refuse_existing(args: argparse.Namespace, script: str, names: tuple[str, ...]) -> None:
    """`UsageError` if `args.out` holds any of `names` and no --overwrite (--resume, --add)
    was given, or holds one that is not a result this project wrote (`files.is_result`)."""
    found = [name for name in names if (args.out / name).exists() or (args.out / name).is_symlink()]
    if alien := [name for name in found if not files.is_result(args.out / name)]:  # (first: --overwrite would not help)
        is_, it = ("is", "it") if len(alien) == 1 else ("are", "them")
        figures = (" (a figure is replaced only if it carries the mark of the figures this project draws, which those drawn "
                   "by its earlier versions lack)") if any(name.endswith(".png") for name in alien) else ""
        raise UsageError(f"--out: {', '.join(alien)} in {args.out} {is_} not {script}'s results{figures} "
                         f"and will not be replaced: move {it} or choose another --out")
    if found and not (args.overwrite or vars(args).get("resume") or vars(args).get("add")):
        raise UsageError(f"--out: {args.out} already holds {', '.join(found)}; pass --overwrite to replace them, "
                         "or choose another --out")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """`--help` shows every option's default, but none of None or False."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return super()._get_help_string(action) if action.default not in (None, False) else action.help


def once(action_class: type[argparse.Action]) -> type[argparse.Action]:
    """`action_class`, refusing its option given a second time in one command (`--lr 1 --lr=2`, an abbreviation too)."""

    class Once(action_class):
        def __call__(self, parser, namespace, values, option_string=None):
            if self.dest in parser.given:
                raise argparse.ArgumentError(self, "given twice; give it once")
            parser.given.add(self.dest)
            super().__call__(parser, namespace, values, option_string)

    return Once


class ArgumentParser(argparse.ArgumentParser):
    """Every script's parser: errors in one line (exit 2), defaults in `--help`, the shared options: where results go
    (`out`; `results` claimed, refused if present; `resume`), MNIST and compiling (`trains`), `processes`, `tensorboard`."""

    def __init__(self, description: str | None = None, *, prog: str | None = None, out: str | None = None,
                 holds: str = "the results", results: tuple[str, ...] = (), resume: bool = False,
                 trains: bool = True, processes: bool = False, tensorboard: bool = False):
        super().__init__(prog=prog or program(), description=description, formatter_class=HelpFormatter)
        self.results, self.trains, self.processes, self.given = results, trains, processes, set()
        for name in (None, "store", "store_true", "store_false", "store_const"):  # every option that sets one value
            self.register("action", name, once(self._registry_get("action", name)))
        if out is not None or results or resume:
            self.add_argument("--out", type=output_folder, default=out and Path(out), help=f"folder for {holds}")
            again = self.add_mutually_exclusive_group()
            replaced = ("the run in --out once the new one has saved its first epoch" if not results else
                        "the results in --out once the new ones are complete" + (" (its unfinished work, once the new work "
                                                                                 "saves an epoch)" if resume else ""))
            again.add_argument("--overwrite", action="store_true", help=f"replace {replaced}")
            if resume:
                again.add_argument("--resume", action="store_true",
                                   help="continue the work saved in --out by a run that was stopped")
        if trains:
            self.add_argument("--data-dir", type=existing_folder,
                              help="folder with the four MNIST IDX files, plain or .gz (default: $MNIST_JAX_DATA_DIR)")
            self.add_argument("--source", choices=SOURCES, default="auto",
                              help="where MNIST comes from; auto: --data-dir if given, else an earlier download, else TFDS, else download")
            self.add_argument("--compile-cache", type=output_folder, help="JAX's persistent compilation cache, so a rerun "
                              "skips compiling (default: $JAX_COMPILATION_CACHE_DIR, else the user cache folder)")
            self.add_argument("--no-cache", action="store_true", help="compile afresh and keep no compilation cache")
        if tensorboard:
            self.add_argument("--tensorboard", type=output_folder, metavar="DIR", help="also write TensorBoard logs there, "
                              "a folder per run, as each run ends (needs tensorboardX, the extra mnist_jax[tensorboard])")
        if processes:
            group = self.add_argument_group(
                "several processes (jax.distributed; none given: a cluster JAX detects, else one process)")
            group.add_argument("--coordinator", type=address, metavar="HOST:PORT",
                               help="address of process 0, which coordinates the run")
            group.add_argument("--num-processes", type=positive_int, metavar="N", help="processes in the run")
            group.add_argument("--process-id", type=int, metavar="I", help="this process's number, 0..N-1")
            group.add_argument("--timeout", type=seconds, default=120, metavar="SECONDS",
                               help="how long to wait for every process to join, and for a silent one before stopping")

    def add_stages(self) -> None:
        self.add_argument("--stages", type=stages, default="all", help=f"comma-separated stages ({', '.join(STAGES)}), or all")

    def add_model_options(self) -> None:
        """train.py's and study.py's: None unless given (the stage's own), so --resume can tell what was asked."""
        self.add_argument("--batch-size", type=positive_int, help=f"examples per Adam step (default: {TrainConfig.batch_size})")
        self.add_argument("--lr", type=positive_float, help=f"Adam learning rate (default: {TrainConfig.lr:g})")
        self.add_argument("--hidden", type=positive_int, help="hidden width of the MLP stages (default: the stage's own, 256)")
        self.add_argument("--dropout", type=dropout_rate,
                          help="dropout rate of the MLP stages (default: the stage's own, 0.5 for mlp_dropout, else 0)")

    def error(self, message: str) -> NoReturn:
        fail(f"{self.prog}: error: {message}")

    def parse_known_args(self, args=None, namespace=None):
        self.given = set()  # the options given so far
        return super().parse_known_args(args, namespace)

    def parse(self, argv: list[str] | None = None) -> argparse.Namespace:
        """The arguments, checked before any work and JAX's import; JAX set up (`trains`), the run
        joined (`processes`), `--out` claimed (`results`), the work's `args.progress` (`resume`)."""
        try:
            args = self.parse_args(argv)
        except OSError as e:  # a check of a path given, which the system refuses to look up (a name too long)
            self.error(f"{e.filename}: {e.strerror}")
        child = self.processes and distributed.is_child()  # a process of several: it joins the run before it claims --out
        try:
            if self.processes:
                given = [v is not None for v in (args.coordinator, args.num_processes, args.process_id)]
                if any(given) and not all(given):
                    raise UsageError("--coordinator, --num-processes and --process-id go together "
                                     "(or none, on a cluster JAX detects)")
                if all(given) and not 0 <= args.process_id < args.num_processes:
                    raise UsageError(f"argument --process-id: expected 0 to {args.num_processes - 1} "
                                     f"(--num-processes {args.num_processes}), got {args.process_id}")
            if vars(args).get("data_dir") and vars(args).get("source") in ("tfds", "download"):
                raise UsageError(f"--data-dir is read by --source idx and auto; --source {args.source} would ignore it")
            if self.trains:
                check_environment(args.compile_cache, args.no_cache, vars(args).get("out"))
            if vars(args).get("tensorboard"):
                check_tensorboard(args.tensorboard)
            if not child:
                self._claim(args)
            if self.trains:
                _start_reading(args)
                setup_jax(args.compile_cache, args.no_cache)
            stop_on_signals()
            if child:
                self._join(args)
                self._claim(args)
        except UsageError as e:
            self.error(str(e))
        return args

    def _claim(self, args: argparse.Namespace) -> None:
        """`--out` held and its results refused (by process 0, which writes); the work's progress."""
        if self.results and distributed.is_main():
            claim(args.out)
            refuse_existing(args, Path(sys.argv[0]).name, self.results)
        if "resume" in args and self.results:
            args.progress = grid_progress(args, Path(sys.argv[0]).name)  # the script, however it was typed

    def _join(self, args: argparse.Namespace) -> None:
        work = {k: v for k, v in vars(args).items() if k not in LOCAL_OPTIONS}
        distributed.join(args.coordinator, args.num_processes, args.process_id, args.timeout, work)
        files.STOP_SIGNALS.remove(signal.SIGTERM)  # `distributed.stop_if_agreed` has it now
        import jax

        from mnist_jax.sharding import chunk_granule  # (imports JAX)

        granule = chunk_granule()  # every device of the run (as many on each: `distributed.join`)
        for name, noun in (("seeds", "seed"), ("seeds_at_once", "seed"), ("models_at_once", "model")):
            number = vars(args).get(name)
            if number and number % granule:
                raise UsageError(f"argument --{name.replace('_', '-')}: {count(number, noun)} do not split evenly over the "
                                 f"{granule} devices of {jax.process_count()} processes; give a multiple of {granule}")
        if not distributed.is_main():  # process 0 speaks for the run
            sys.stdout = open(os.devnull, "w")


_reading: dict[tuple, concurrent.futures.Future] = {}  # MNIST being read for (--source, --data-dir)


def _start_reading(args: argparse.Namespace) -> None:
    """Read MNIST's files in a thread while JAX is imported, where they are on disk: inflating and hashing them
    let go of the GIL, so the 0.2 s they take overlap the import."""
    from mnist_jax import data

    if data.reads_files(args.source, args.data_dir):
        reader = concurrent.futures.ThreadPoolExecutor(1, "mnist-reader")
        _reading[args.source, args.data_dir] = reader.submit(data.load_mnist, args.source, args.data_dir)
        reader.shutdown(wait=False)


def load_data(args: argparse.Namespace):
    """MNIST as --source and --data-dir ask (`data.load_mnist`), and the line of every script that says where it came from."""
    from mnist_jax import data

    reading = _reading.pop((args.source, args.data_dir), None)
    mnist = reading.result() if reading else data.load_mnist(args.source, args.data_dir)
    print(f"data: {mnist.source}", flush=True)
    return mnist


def mlp_only(args: argparse.Namespace, stages: list[str], names: tuple[str, ...] = ("hidden", "dropout")) -> None:
    """`UsageError` if one of the options `names` (--hidden, --dropout) is given for a linear stage among `stages`."""
    linear = [stage for stage in stages if not STAGES[stage].is_mlp]
    for name in names:
        if getattr(args, name) is not None and linear:
            raise UsageError(f"--{name} applies to the MLP stages only, not {', '.join(linear)}")


def check_environment(cache: Path | None, no_cache: bool, out: Path | None = None) -> None:
    """The memory limit and the XLA flags the scripts run with, and the compilation cache asked for, before JAX is
    imported: a local folder that can be written, apart from `out`."""
    if os.environ.get(memory.LIMIT_ENV):
        memory.parse_size(os.environ[memory.LIMIT_ENV])
    if os.environ.get("XLA_FLAGS", "").strip():
        check_xla_flags(os.environ["XLA_FLAGS"])
    if no_cache:
        return
    folder, named = compile_cache(cache)
    if named and re.match(r"[A-Za-z][\w+.-]+:/", str(folder)):  # gs://..., which JAX can use and `executables` cannot
        raise UsageError(f"{named}: {folder} is not a local folder; the scripts keep compiled programs on a local disk")
    try:
        if named and (reason := why_unwritable(folder)):
            raise UsageError(f"{named}: cannot write to {folder} ({reason})")
        if reason := writable_by_others(folder) or foreign_entry(folder):
            raise UsageError(f"{named or 'the compilation cache'}: {folder} {reason}, and the programs kept there run in this "
                             f"process: use a folder only you can write{'' if named else ' (--compile-cache)'}, or --no-cache")
        refuse_in_a_run(named or "the compilation cache", folder, instead=None if named else "--compile-cache or --no-cache")
        if out:
            check_cache_apart(cache, out)
        if named:  # (a name too long: where Python's `exists` and `is_dir` say False, this raises)
            with contextlib.suppress(FileNotFoundError):
                os.lstat(folder)
    except OSError as e:  # a path the system refuses to look up (a name too long)
        raise UsageError(f"{named or 'the compilation cache'}: {folder}: {e.strerror}") from None


def writable_by_others(folder: Path) -> str | None:
    """Why users other than this process's could write `folder` (where a file becomes code this process runs), else None."""
    try:
        mode = folder.stat()
    except OSError:  # (not there yet: this run makes it)
        return None
    if mode.st_uid != os.geteuid():
        return f"belongs to another user (uid {mode.st_uid})"
    return f"can be written by every user ({stat.filemode(mode.st_mode)})" if mode.st_mode & stat.S_IWOTH else None


def foreign_entry(folder: Path) -> str | None:
    """Why an entry of `folder` may be another user's (its owner, or who may write it), else None."""
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            found = [entry.stat(follow_symlinks=False)]
            with contextlib.suppress(OSError):  # a link: and what it leads to (a dangling one is no entry JAX reads)
                found += [entry.stat()] if entry.is_symlink() else []
            for each in found:
                if each.st_uid != os.geteuid() or each.st_mode & stat.S_IWOTH and not stat.S_ISLNK(each.st_mode):
                    whose = "belongs to another user" if each.st_uid != os.geteuid() else "every user can write"
                    return f"holds {entry.name}, {'a link to a path ' if each is not found[0] else ''}which {whose}"
    return None


def compile_cache(cache: Path | None) -> tuple[Path, str | None]:
    """The compilation cache the scripts use and the option or variable that named it (None: the default)."""
    if cache:
        return cache, "--compile-cache"
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return Path(os.environ["JAX_COMPILATION_CACHE_DIR"]), "$JAX_COMPILATION_CACHE_DIR"
    return default_cache_dir() / "jax", None


def check_cache_apart(cache: Path | None, out: Path) -> None:
    """`UsageError` if the compilation cache lies in run folder `out` (which --overwrite replaces, and where the
    cache's files would be another's)."""
    folder, named = compile_cache(cache)
    if files.real_path(folder).is_relative_to(files.real_path(out)):
        raise UsageError(f"{named or 'the compilation cache'}: {folder} lies in the run's folder {out}; "
                         "choose a compilation cache apart from --out" + ("" if named else " (--compile-cache) or --no-cache"))


def check_xla_flags(flags: str) -> None:
    """`UsageError` if XLA refuses `flags`: asked in a child (0.2 s), since XLA ends the process that reads flags it
    refuses, printing its whole list of flags, and would do so here after --out is claimed."""
    child = subprocess.run([sys.executable, "-P", "-c", "from jaxlib import xla_client; xla_client.make_cpu_client()"],
                           capture_output=True, text=True, env={**os.environ, "XLA_FLAGS": flags})
    if -child.returncode not in (0, signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # (a stop signal reached this process too)
        lines = child.stderr.strip().splitlines()
        # XLA's E(rror) and F(atal) lines: "F1204 11:26:30.29 ... file.cc:234] what" (older: "2026-12-04 ...: F file.cc:234] what")
        said = [line.split("] ", 1)[1] for line in lines if re.match(r"([EF]\d{4} |[\d-]+ [\d:.]+: [EF] ).*?\] ", line)]
        why = said[0] if said else lines[-1] if lines else "it cannot start"  # XLA's own line, else Python's last
        raise UsageError(f"XLA_FLAGS={flags!r}: XLA refuses it ({why}); fix or unset it")


def check_tensorboard(folder: Path) -> None:
    """`--tensorboard`: tensorboardX there to write with, `folder` writable."""
    try:
        importlib.import_module("tensorboardX")
    except ImportError:
        raise UsageError("--tensorboard needs tensorboardX, which is not installed: pip install tensorboardX") from None
    if reason := why_unwritable(folder):
        raise UsageError(f"--tensorboard: cannot write to {folder} ({reason})")
    refuse_in_a_run("--tensorboard", folder)


# TensorBoard's tag of each figure of an epoch: a chart of loss and one of accuracy, each with training and validation.
TENSORBOARD_TAGS = {"train_loss": "loss/train", "val_loss": "loss/validation", "train_accuracy": "accuracy/train",
                    "val_accuracy": "accuracy/validation"}
EVENTS, OURS = "events.out.tfevents.", ".mnist_jax"  # the start of a TensorBoard event file's name, the end of ours


def is_log(path: Path) -> bool:
    """Whether `path` is a folder of this project's TensorBoard event files (named `EVENTS...OURS`), one or more, and
    nothing else: a log `write_tensorboard` wrote and may replace. (An empty folder, or a PyTorch run's log, is another's.)"""
    entries = list(path.iterdir()) if path.is_dir() and not path.is_symlink() else []
    return bool(entries) and all(entry.name.startswith(EVENTS) and entry.name.endswith(OURS) and entry.is_file()
                                 and not entry.is_symlink() for entry in entries)


def check_logs(folder: Path | None, names, outputs=()) -> None:
    """Before any work: each log `folder/name` that `write_tensorboard` will write is new or a log to replace (`is_log`),
    and none is, holds or lies in one of the `outputs` folders, nor `folder` in one; else `UsageError`. (Process 0 writes.)"""
    if folder is None or not distributed.is_main():
        return
    names, board = set(names), files.real_path(folder)
    for out in outputs:
        real = files.real_path(out)
        inside = real.relative_to(board).parts if real.is_relative_to(board) else ()
        if board.is_relative_to(real) or inside and inside[0] in names:
            where = folder / inside[0] if inside else folder
            raise UsageError(f"--tensorboard: {where} would be written inside the run's folder {out} or over it; "
                             "choose a --tensorboard apart from --out")
    for log in sorted(folder / name for name in names):
        if log.exists() or log.is_symlink():
            if not is_log(log):
                raise UsageError(f"--tensorboard: {log} is there and is not a TensorBoard log this project wrote (a folder of "
                                 "its event files only), so it will not be replaced: move it or choose another --tensorboard")


def write_logs(folder: Path | None, runs: list[tuple[TrainConfig, list[dict], float]], saved: str) -> None:
    """Each finished run's TensorBoard log (config, history, test accuracy), once its results are saved: one that cannot be
    written ends the script in one line, status 5, with `saved` (what is saved, and how to go on)."""
    for config, history, accuracy in runs:
        try:
            write_tensorboard(folder, config.run_name(), config, history, accuracy)
        except (OSError, UsageError) as e:
            fail(f"could not write the TensorBoard log {config.run_name()}: {getattr(e, 'strerror', None) or e}; {saved}",
                 EXIT_WRITE_FAILED)


def write_tensorboard(folder: Path | None, run: str, config: TrainConfig, history: list[dict], test_accuracy: float) -> None:
    """A finished run's TensorBoard log in `folder/run` (tensorboardX: no TensorFlow), unless `folder` is None or this
    is not process 0: each epoch's `TENSORBOARD_TAGS` from `history`, and `config`'s hyperparameters with
    `hparam/test_accuracy` (TensorBoard's HPARAMS tab). Written beside it, one file, and renamed into place when complete,
    replacing the run's previous log (`is_log`): a log holds its run's history once, or the old log is kept."""
    if folder is None or not distributed.is_main():
        return
    from tensorboardX.event_file_writer import EventsWriter  # tensorboardX's writer without its thread, queue and atexit
    from tensorboardX.proto.event_pb2 import Event
    from tensorboardX.summary import hparams, scalar

    hyperparameters = vars(config) | {"hidden": config.hidden or config.spec.hidden, "dropout": config.dropout_rate}
    events = [Event(step=row["epoch"], summary=scalar(tag, row[key])) for row in history for key, tag in TENSORBOARD_TAGS.items()]
    events += [Event(summary=summary) for summary in hparams(hyperparameters, {"hparam/test_accuracy": test_accuracy})]
    events.append(Event(step=len(history), summary=scalar("hparam/test_accuracy", test_accuracy)))
    log = folder / run
    with files.signals_deferred():
        folder.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(dir=os.path.realpath(folder), prefix=f"{files.PARTIAL}{run}."))  # (see files.atomic_write)
        partial.chmod(files.readable_mode(0o755))  # (see files.readable_mode)
        try:
            writer = EventsWriter(str(partial / "events"), filename_suffix=OURS)
            try:
                for event in events:
                    event.wall_time = time.time()
                    writer.write_event(event)
            finally:
                writer.close()
            if not (log.exists() or log.is_symlink()):
                return os.rename(partial, log)
            if not is_log(log):
                raise UsageError(f"--tensorboard: {log} is there and is not a TensorBoard log this project wrote, so it will not be "
                                 "replaced")
            os.rename(log, old := partial.with_name(f"{partial.name}.old"))
            try:
                os.rename(partial, log)
            except OSError:
                os.rename(old, log)
                raise
            partial = old  # the previous log: event files only, removed below
        except OSError as e:
            raise OSError(e.errno, e.strerror, str(log)) from None
        finally:
            shutil.rmtree(partial, ignore_errors=True)


def setup_jax(cache: Path | None, no_cache: bool) -> None:
    """Import JAX and start its devices, or say in one line why it cannot; its persistent compilation cache on
    (every program: a run's many small ones add up) or off. A cache failing later costs only speed: its warnings
    are silenced."""
    try:
        import jax
    except ValueError as e:  # a JAX_* variable JAX cannot read
        raise UsageError(f"JAX refuses a setting of the environment ({e}); fix or unset it") from None
    if jax.config.jax_disable_jit:
        raise UsageError("JAX_DISABLE_JIT: the scripts run compiled programs only; unset it")
    if jax.config.jax_enable_x64:  # (its float64 runs would not be the study's, and no float32 run could resume them)
        raise UsageError("JAX_ENABLE_X64: the study trains in float32, as PyTorch does; unset it")
    if jax.config.jax_numpy_dtype_promotion != "standard":
        raise UsageError(f"JAX_NUMPY_DTYPE_PROMOTION={jax.config.jax_numpy_dtype_promotion}: the project's programs use JAX's "
                         "standard type promotion; unset it")
    draws = {"JAX_DEFAULT_PRNG_IMPL": (jax.config.jax_default_prng_impl, "threefry2x32"),
             "JAX_THREEFRY_PARTITIONABLE": (getattr(jax.config, "jax_threefry_partitionable", True), True),
             "JAX_RANDOM_SEED_OFFSET": (getattr(jax.config, "jax_random_seed_offset", 0), 0)}
    for name, (value, default) in draws.items():
        if value != default:
            raise UsageError(f"{name}={os.environ.get(name, value)}: other random bits than JAX's default draw another split, "
                             "initialisation and order for each seed, and no run could resume another; unset it")
    for direction in ("HOST_TO_DEVICE", "DEVICE_TO_HOST"):  # JAX_TRANSFER_GUARD, where set, decides both
        name = "JAX_TRANSFER_GUARD" if os.environ.get("JAX_TRANSFER_GUARD") else f"JAX_TRANSFER_GUARD_{direction}"
        if os.environ.get(name, "").startswith("disallow"):
            raise UsageError(f"{name}={os.environ[name]}: the scripts move the data, and each run's seed and settings, to the "
                             "device and read each epoch's figures back; unset it or set it to log")
    if not distributed.is_child():  # (a child joins the run first)
        try:
            jax.devices()  # starts them, in well under a second, or fails before any work
        except Exception as e:  # noqa: BLE001  (a RuntimeError, or an AssertionError where the platform's plugin is missing)
            why = str(e).splitlines()[0] if str(e) else "no backend for it is installed"
            if platforms := os.environ.get("JAX_PLATFORMS"):
                raise UsageError(f"JAX_PLATFORMS={platforms}: JAX cannot start it ({why}); unset it to let JAX choose") from None
            raise UsageError(f"JAX cannot start its devices ({why}); check XLA_FLAGS and the JAX_* variables") from None
    warnings.filterwarnings("ignore", message="Error (writing|reading) persistent compilation cache")
    if no_cache:
        jax.config.update("jax_enable_compilation_cache", False)
        return
    jax.config.update("jax_compilation_cache_dir", str(compile_cache(cache)[0]))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


def grid_progress(args: argparse.Namespace, script: str):
    """The progress of the work `args` ask for in --out (`GridProgress`): continued with
    --resume (the same work only), replaced with --overwrite, else refused if there is some."""
    work = {k: v for k, v in vars(args).items() if k not in LOCAL_OPTIONS | {"resume", "num_processes"}}
    progress = GridProgress(args.out, {"script": script, **work}, write=distributed.is_main())
    if foreign := progress.foreign():
        raise UsageError(f"--out: {args.out} holds {', '.join(foreign)}, which {script} did not write (or cannot read, "
                         "and so does not replace); choose another --out")
    if args.resume:
        if not progress.exists():
            raise UsageError(f"--resume: no unfinished work in {args.out} to continue")
        try:
            differ = progress.differences()
        except ProgressError as e:
            raise UsageError(f"--resume: {e}") from None
        if differ:
            raise UsageError(f"--resume: the work saved in {args.out} is not what was asked: {', '.join(differ)}; "
                             "pass --overwrite to start again, or choose another --out")
    elif progress.exists() and not args.overwrite:
        raise UsageError(f"--out: {args.out} holds unfinished work; pass --resume to continue it, --overwrite to start "
                         "again, or choose another --out")
    else:
        progress.start()

    def note() -> str:
        if progress.started and not progress.exists():  # (cleared: the work is done)
            return _work_done()
        if progress.started:
            return f"{one_line(str(progress.folder))} keeps every epoch saved; continue with: {resume_command()}"
        kept = "; the unfinished work it would replace is kept as it was" if progress.saved_chunks() else ""
        return f"no epoch was saved{kept}; run the same command again to start afresh"

    on_stop(note, kept=lambda: progress.started and progress.exists())
    return progress


# What was typed before the arguments, when `mnist_jax.__main__` ran the script: `mnist-jax train`, `python -m mnist_jax train`
invocation: list[str] | None = None


def program() -> str:
    """This script as it was typed, for its usage and errors: mnist-jax train, python -m mnist_jax train or train.py."""
    return " ".join(invocation) if invocation else Path(sys.argv[0]).name


def script_command(name: str) -> str:
    """Script `name` as this one was run: python scripts/study.py, mnist-jax study or python -m mnist_jax study."""
    return " ".join([*invocation[:-1], name]) if invocation else f"python scripts/{name}.py"


def command() -> str:
    """The command that produced a result, as recorded in it: shell-quoted, to paste back."""
    return " ".join(map(shell_word, [*(invocation or ["python", f"scripts/{Path(sys.argv[0]).name}"]), *sys.argv[1:]]))


def print_table(header: list[str], rows: list[list]) -> None:
    """A markdown table."""
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(map(str, row)) + " |")


def documented(accuracy: float | None, percent: str = "") -> str:
    """The original's documented accuracy in points (`percent`: "%" after it), or — for a stage it did not have (a control)."""
    return "—" if accuracy is None else f"{100 * accuracy:.2f}{percent}"


def difference(accuracy: float, documented_accuracy: float | None) -> str:
    """`accuracy` minus the documented one, in points, or — where the original has none."""
    return "—" if documented_accuracy is None else f"{100 * (accuracy - documented_accuracy):+.2f}"


def interval(ci95: list | None, sign: str = "") -> str:
    """A 95% interval in points, or n/a (one seed has none)."""
    return f"[{100 * ci95[0]:{sign}.2f}, {100 * ci95[1]:{sign}.2f}]" if ci95 else "[n/a]"


class Progress:
    """Progress in the unit of the work: tqdm's bar on a terminal, else one plain line per step."""

    def __init__(self, total: int, desc: str, unit: str):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=None)  # None: off a terminal
        self.desc, self.unit, self.done, self.plain = desc, unit, 0, self.bar.disable

    def step(self, note: str = "", total: int | None = None) -> None:
        """One more step done; `total` changes the count of steps expected."""
        stop_if_pending()
        self.done += 1
        self.bar.total = total or self.bar.total
        self.bar.set_postfix_str(note, refresh=False)
        self.bar.update()
        if self.plain:
            print(f"{self.desc}: {self.unit} {self.done}/{self.bar.total}" + (f", {note}" if note else ""), flush=True)

    def epochs(self, epochs: int) -> Callable[[int, int], None]:
        """`study.train_grid`'s `on_epoch(done, total)`: a step per epoch; where the models train in several chunks,
        one after another, a step per pass (a chunk's epoch) and which: 'pass 3/4, epoch 1/2 of chunk 2/2'."""

        def step(done: int, total: int) -> None:
            if (chunks := total // epochs) > 1:
                self.unit = self.bar.unit = "pass"
            self.step(f"epoch {(done - 1) % epochs + 1}/{epochs} of chunk {(done - 1) // epochs + 1}/{chunks}" if chunks > 1
                      else "", total=total)

        return step

    def close(self) -> None:
        self.bar.close()


class Stopped(BaseException):
    """A signal asked the script to stop: SIGINT, SIGTERM or SIGHUP."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_pending: list[int] = []  # signals received: one raised where exceptions are ignored (a GC callback) is acted on later


def _stop(signum: int, _frame) -> None:
    _pending.append(signum)
    raise Stopped(signum)


def _unraisable(hook: sys.UnraisableHookArgs) -> None:
    """A `Stopped` Python could not raise (in a GC callback) says nothing: it is pending."""
    if not isinstance(hook.exc_value, Stopped):
        sys.__unraisablehook__(hook)


def stop_if_pending() -> None:
    """Act on a signal whose `Stopped` was swallowed: at each step of progress and at the end."""
    if _pending:
        raise Stopped(_pending[0])


def _nothing_kept() -> str:
    return "no file was left half-written; run the same command again"


def _work_done() -> str:
    return "it came after the work was done; every result is written"


_stop_note: Callable[[], str] = _nothing_kept
_work_kept: Callable[[], bool] = lambda: False  # noqa: E731


def on_stop(note: Callable[[], str], kept: Callable[[], bool] = lambda: False) -> None:
    """What a stop says it kept and how to continue ('... keeps epoch 3; continue with: ...'), asked at the signal;
    `kept`: whether this command has saved work already, which a failure that is no stop says too (`run`)."""
    global _stop_note, _work_kept
    _stop_note, _work_kept = note, kept


def _kept_before() -> str:
    """'; with more memory free: ...': what earlier stages or groups of a command too large for memory saved ('' if none)."""
    with contextlib.suppress(Exception):
        return f"; with more memory free: {_stop_note()}" if _work_kept() else ""
    return ""


def resume_command() -> str:
    """This command again, with --resume and without --overwrite (nor an abbreviation of either), shell-quoted."""
    again = [a for a in sys.argv[1:] if not (len(a) > 2 and ("--overwrite".startswith(a) or "--resume".startswith(a)))]
    return " ".join(map(shell_word, [*(invocation or ["python", sys.argv[0]]), *again, "--resume"]))


def shell_word(arg: str) -> str:
    """`shlex.quote(arg)`, or where `arg` holds a character that is not printable (a newline), bash's $'...' with each
    such character as its bytes (`\\xHH`, as a file name holds them: in any locale, and for a name that is not UTF-8):
    pasted into bash or zsh it gives `arg` back, and the command stays on one line."""
    if arg.isprintable():
        return shlex.quote(arg)

    def escaped(c: str) -> str:
        return "\\" + c if c in "\\'" else c if c.isprintable() else "".join(f"\\x{b:02x}" for b in os.fsencode(c))

    return "$'" + "".join(map(escaped, arg)) + "'"


def one_line(message: str) -> str:
    """`message` with each character that is not printable (a newline in a path) shown as its escape, on one line; then a
    backslash is shown as `\\\\`, so that an escape and the same characters typed read apart."""
    if message.isprintable():
        return message
    return "".join(c if c.isprintable() and c != "\\" else repr(c)[1:-1] for c in message)


def _exit_stopped(signum: int) -> NoReturn:
    """One line, the locks dropped, out at once: the teardown can crash while XLA compiles on another thread."""
    note = "no file was left half-written"
    with contextlib.suppress(Exception):
        note = _stop_note()
    with contextlib.suppress(Exception):
        print(one_line(f"stopped by {signal.Signals(signum).name}: {note}"), file=sys.stderr, flush=True)
        sys.stdout.flush()
    files.release_locks()
    os._exit(128 + signum)


def _end_at_once() -> NoReturn:
    """Exit 0 once every file is written and closed: the exit handlers run (JAX's, which close its runtime, and ours),
    then not Python's teardown of every module and object, which takes 0.3-0.4 s once JAX is imported."""
    atexit._run_exitfuncs()  # (what a normal exit runs first; os._exit skips it)
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:  # (None where the shell closed it)
            stream.flush()
    os._exit(0)


def fail(message: str, status: int = EXIT_USAGE) -> NoReturn:
    print(one_line(message), file=sys.stderr)
    sys.exit(status)


# How each failure is told: the prefix of its line and its exit status (first match).
FAILURES = ((NonFiniteLoss, "training stopped: ", EXIT_DIVERGED), (DoesNotFit, "does not fit: ", EXIT_DOES_NOT_FIT),
            (PeerLost, "", EXIT_PEER_LOST), (ProgressError, "--resume: ", EXIT_USAGE),
            (DataError, "data error: ", EXIT_USAGE), (UsageError, "{script}: error: ", EXIT_USAGE))
OUT_OF_MEMORY = ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory", "can't allocate memory")


def stop_on_signals() -> None:
    """From here a stop signal ends the work with its line (`run`); to a child the supervisor sends SIGTERM."""
    sys.unraisablehook = _unraisable
    for s in files.STOP_SIGNALS:
        if distributed.is_child() and s != signal.SIGTERM:
            signal.signal(s, signal.SIG_IGN)
        elif signal.getsignal(s) is not signal.SIG_IGN:
            signal.signal(s, _stop)


def run(main: Callable[[], None], several_processes: bool = False, end_process: bool = True) -> None:
    """Run a script's main: every failure a user or the machine can cause ends in one line and its exit
    status (README's table), not a traceback. One of `several_processes` runs under a supervisor.
    With `end_process`, a main that succeeds ends the process at once (`_end_at_once`)."""
    for stream in (sys.stdout, sys.stderr):  # a console that cannot show a character (±, —) shows its escape
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    on_stop(_nothing_kept)  # (until the script says what it keeps)
    try:
        if several_processes and not distributed.is_child() and distributed.requested(sys.argv[1:]):
            sys.exit(distributed.supervise())
        main()
        on_stop(_work_done)  # (a pipe closed at the last flush)
        stop_if_pending()
        if distributed.stop_asked():  # after the last epoch, which all agreed on: the work is done, and says so
            on_stop(lambda: "it came after the last epoch; every result is written")
            raise StopAgreed
        if end_process:
            _end_at_once()
    except Stopped as e:
        _exit_stopped(e.signum)
    except StopAgreed:
        distributed.leave()
        _exit_stopped(signal.SIGTERM)
    except KeyboardInterrupt:  # a SIGINT that came before the handler above
        _exit_stopped(signal.SIGINT)
    except BrokenPipeError:  # the output's reader stopped early (`| head`): what was kept, on stderr (not the pipe)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        with contextlib.suppress(Exception):
            print(one_line(f"stopped: its output was closed; {_stop_note()}"), file=sys.stderr, flush=True)
        sys.exit(EXIT_BROKEN_PIPE)
    except OSError as e:  # a write failed: each file is renamed into place only when complete
        note = "no file was left half-written"
        with contextlib.suppress(Exception):  # and what is kept, as a stop says it (a study's epochs saved, say)
            note = _stop_note() if _stop_note is _nothing_kept else f"{note}; {_stop_note()}"
        where = e.filename or "its output (stdout)"  # (every file the project writes is named: `files.atomic_write`)
        fail(f"could not write {where}: {e.strerror or e}; {note}", EXIT_WRITE_FAILED)
    except (Exception, MemoryError) as e:  # noqa: BLE001
        for kind, prefix, status in FAILURES:
            if isinstance(e, kind):
                fail(f"{prefix.format(script=program())}{e}{_kept_before() if kind is DoesNotFit else ''}", status)
        # XLA's RESOURCE_EXHAUSTED is a ValueError, torch's a RuntimeError
        if isinstance(e, MemoryError) or isinstance(e, (ValueError, RuntimeError)) and any(s in str(e) for s in OUT_OF_MEMORY):
            why = str(e).splitlines()[0] if str(e) else "MemoryError"
            fail(f"does not fit: out of memory ({why}){_kept_before()}", EXIT_DOES_NOT_FIT)
        if type(e).__name__ == "JaxRuntimeError" and (flags := os.environ.get("XLA_FLAGS", "").strip()) \
                and not distributed.is_child():  # (a child's runtime errors are its supervisor's to read)
            fail(f"{program()}: error: XLA_FLAGS={flags!r}: XLA started with them, then failed "
                 f"({str(e).splitlines()[0]}); fix or unset them")  # (its only check of a value is using it)
        raise
