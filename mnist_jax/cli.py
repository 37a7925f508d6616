"""What the scripts share: argument types, one-line errors and exit codes."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import shlex
import signal
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Callable, NoReturn


def _stop_before_work(signum: int, _frame) -> None:
    """Until `run` starts a script's work (importing JAX takes a second): one line, out."""
    os.write(2, f"stopped by {signal.Signals(signum).name}: nothing was started\n".encode())
    os._exit(128 + signum)


if Path(sys.argv[0]).resolve().parent == Path(__file__).resolve().parents[1] / "scripts":  # one of this project's scripts
    for _signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(_signum) is not signal.SIG_IGN:
            signal.signal(_signum, _stop_before_work)

import jax  # noqa: E402  (after the handlers: it takes a second to import)
from tqdm import tqdm  # noqa: E402

from mnist_jax import distributed, files, memory  # noqa: E402
from mnist_jax.data import SOURCES, DataError, default_cache_dir  # noqa: E402
from mnist_jax.progress import GridProgress, ProgressError  # noqa: E402
from mnist_jax.stages import STAGES  # noqa: E402
from mnist_jax.train import MAX_SEED, NonFiniteLoss, TrainConfig  # noqa: E402

EXIT_USAGE = 2  # bad arguments, bad or missing data, an unwritable or busy --out, a damaged checkpoint
EXIT_DIVERGED = 3  # the loss stopped being finite
EXIT_DOES_NOT_FIT = 4  # more memory than the device has
EXIT_WRITE_FAILED = 5  # a save failed (disk full, I/O error): the last complete save is kept
EXIT_HANGUP = 129  # SIGHUP (the terminal closed): what was saved is kept
EXIT_INTERRUPTED = 130  # SIGINT (Ctrl-C): likewise
EXIT_TERMINATED = 143  # SIGTERM (`kill`, `timeout`, SLURM's scancel, a preempted VM): likewise
EXIT_BROKEN_PIPE = 141  # the output's reader stopped early (`| head`), as a shell reports SIGPIPE
EXIT_PEER_LOST = distributed.EXIT_PEER_LOST  # another process of the run died, or the coordinator was unreachable
DOCUMENTED_EXITS = (0, EXIT_USAGE, EXIT_DIVERGED, EXIT_DOES_NOT_FIT, EXIT_WRITE_FAILED, EXIT_PEER_LOST,
                    EXIT_HANGUP, EXIT_INTERRUPTED, EXIT_TERMINATED, EXIT_BROKEN_PIPE)

MAX_INT = 2**31 - 1  # sizes, counts and epochs: what an int32 index holds


def _number(text: str, convert: Callable[[str], float], accept: Callable[[float], bool], expected: str):
    try:
        value = convert(text)
    except ValueError:
        value = None
    if value is None or not accept(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _number(text, int, lambda v: 0 < v <= MAX_INT, f"an integer from 1 to {MAX_INT}")


def seed(text: str) -> int:
    return _number(text, int, lambda v: 0 <= v <= MAX_SEED, f"a seed from 0 to {MAX_SEED}")


def positive_float(text: str) -> float:
    return _number(text, float, lambda v: math.isfinite(v) and v > 0, "a positive finite number")


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


def dropout_rate(text: str) -> float:
    return _number(text, float, lambda v: 0 <= v < 1, "a rate in [0, 1)")


def output_folder(text: str) -> Path:
    """A folder to write into: it may not exist yet, but it may not be a file."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file; expected a folder")
    return path


def output_file(text: str) -> Path:
    """A file to write: it may not exist yet, but it may not be a folder."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; expected a file name")
    if path.parent.exists() and not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"{path.parent} is a file; expected a folder")
    return path


def writable(path: Path) -> str | None:
    """Why `path` (a folder, or a folder to be made) cannot be written, or None. Tried
    on the deepest folder that exists, with a folder made and removed again."""
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        return f"{existing} is a file"
    try:
        os.rmdir(tempfile.mkdtemp(dir=existing, prefix=files.PARTIAL))
    except OSError as e:
        return f"cannot make a folder in {existing}: {e.strerror}"
    return None


def claim(parser: argparse.ArgumentParser, option: str, folder: Path) -> None:
    """Before any work: `folder` must be writable and not being written by another run;
    then hold it (see `files.lock_folder`) until this process ends."""
    reason = writable(folder)
    if reason is None:
        try:
            files.lock_folder(folder)
            return
        except files.FolderBusy as e:
            parser.error(f"{option}: {e}; wait for it to end or choose another {option}")
        except OSError as e:
            reason = f"{e.filename or folder}: {e.strerror}"
    parser.error(f"{option}: cannot write to {folder} ({reason})")


def existing_folder(text: str) -> Path:
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not a folder; expected the folder holding the four MNIST IDX files")
    return path


class HelpFormatter(argparse.HelpFormatter):
    """`--help` shows every option's default (those that have one)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


class ArgumentParser(argparse.ArgumentParser):
    """Errors are one line and exit with status 2; `--help` shows the defaults."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, formatter_class=HelpFormatter, **kwargs)

    def error(self, message: str) -> NoReturn:
        fail(f"{self.prog}: error: {message}")


def fail(message: str, status: int = EXIT_USAGE) -> NoReturn:
    print(message, file=sys.stderr)
    sys.exit(status)


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=existing_folder,
        help="folder with the four MNIST IDX files, plain or .gz (default: $MNIST_JAX_DATA_DIR)",
    )
    parser.add_argument(
        "--source",
        choices=SOURCES,
        default="auto",
        help="where MNIST comes from; auto: --data-dir if given, else TFDS, else download",
    )


TRAIN_DEFAULTS = {field.name: field.default for field in dataclasses.fields(TrainConfig)}


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of one run. Those `--resume` compares default to None (`given_training`
    tells them apart from ones given with their default value)."""
    parser.add_argument("--epochs", type=positive_int, default=TRAIN_DEFAULTS["epochs"], help="passes over the 54,000 training images")
    parser.add_argument("--batch-size", type=positive_int, help=f"examples per Adam step (default: {TRAIN_DEFAULTS['batch_size']})")
    parser.add_argument("--lr", type=positive_float, help=f"Adam learning rate (default: {TRAIN_DEFAULTS['lr']:g})")
    parser.add_argument("--seed", type=seed, help=f"seeds the split, init, order and dropout (default: {TRAIN_DEFAULTS['seed']})")
    parser.add_argument(
        "--hidden", type=positive_int, help="hidden width of the MLP stages (default: the stage's own, 256)"
    )
    parser.add_argument(
        "--dropout", type=dropout_rate, help="dropout rate of the MLP stages (default: the stage's own, 0.5 for mlp_dropout, else 0)"
    )


def given_training(args: argparse.Namespace) -> dict:
    """The run options given on the command line, whatever their value; then the others
    take their defaults in `args`."""
    given = {name: getattr(args, name) for name in ("batch_size", "lr", "seed", "hidden", "dropout") if getattr(args, name) is not None}
    for name in ("batch_size", "lr", "seed"):
        if getattr(args, name) is None:
            setattr(args, name, TRAIN_DEFAULTS[name])
    return given


def add_cache_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--compile-cache",
        type=output_folder,
        help="JAX's persistent compilation cache, so a rerun skips compiling "
        "(default: $JAX_COMPILATION_CACHE_DIR, else the user cache folder)",
    )
    parser.add_argument("--no-cache", action="store_true", help="compile afresh and keep no compilation cache")


def use_compile_cache(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Turn JAX's persistent compilation cache on (every program, however quick to
    compile: a run's many small ones add up) or, with --no-cache, off. Before JAX
    compiles anything: the cache is set up by the first compilation. A `--compile-cache`
    that cannot be written is refused; a cache that fails later (a full disk) costs only
    speed, and JAX's warnings about it are silenced."""
    if args.compile_cache is not None and not args.no_cache and (reason := writable(args.compile_cache)):
        parser.error(f"--compile-cache: cannot write to {args.compile_cache} ({reason})")
    warnings.filterwarnings("ignore", message="Error writing persistent compilation cache")
    if args.no_cache:
        jax.config.update("jax_enable_compilation_cache", False)
        return
    folder = args.compile_cache or os.environ.get("JAX_COMPILATION_CACHE_DIR") or default_cache_dir() / "jax"
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


def add_output_arguments(parser: argparse.ArgumentParser, default: Path, holds: str, resume: bool = False) -> None:
    parser.add_argument("--out", type=output_folder, default=default, help=f"folder for {holds}")
    again = parser.add_mutually_exclusive_group()
    again.add_argument("--overwrite", action="store_true", help="replace results already in --out, once the new ones are complete")
    if resume:
        again.add_argument("--resume", action="store_true", help="continue the work saved in --out/progress by a run that was stopped")


def grid_progress(parser: argparse.ArgumentParser, args: argparse.Namespace, work: dict) -> GridProgress:
    """The progress of `work` in --out, as the options allow: continued with --resume (the
    same work only), replaced with --overwrite, else refused if there is some."""
    script = parser.prog
    progress = GridProgress(args.out, {"script": script, **work}, write=distributed.is_main())
    if foreign := progress.foreign():
        parser.error(f"--out: {args.out} holds {', '.join(foreign)}, which {script} did not write; choose another --out")
    if args.resume:
        if not progress.exists():
            parser.error(f"--resume: no unfinished work in {args.out} to continue")
        try:
            differ = progress.differences()
        except ProgressError as e:
            parser.error(f"--resume: {e}")
        if differ:
            parser.error(f"--resume: the work saved in {args.out} is not what was asked: {', '.join(differ)}; "
                         "pass --overwrite to start again, or choose another --out")
    elif progress.exists() and not args.overwrite:
        parser.error(f"--out: {args.out} holds unfinished work; pass --resume to continue it, --overwrite to start again, "
                     "or choose another --out")
    on_stop(lambda: progress_note(progress))
    return progress


def progress_note(progress: GridProgress) -> str:
    if not progress.started:
        kept = "; the unfinished work it would replace is kept as it was" if progress.saved_chunks() else ""
        return f"no epoch was saved{kept}; run the same command again to start afresh"
    return f"{progress.folder} keeps every epoch saved; continue with: {resume_command()}"


def add_run_arguments(parser: argparse.ArgumentParser, out: Path, results: tuple[str, ...], resume: bool = False) -> None:
    """Where a script that trains writes its `results` (and with `resume` its progress, to
    continue), where it finds MNIST, how it compiles."""
    add_output_arguments(parser, out, " and ".join(results), resume)
    add_data_arguments(parser)
    add_cache_arguments(parser)


def parse(parser: argparse.ArgumentParser, results: tuple[str, ...] = ()) -> argparse.Namespace:
    """Parse the command line: `--stages` into a list; `--out` claimed (writable, not in
    use by another run) and the `results` already in it refused; the compilation cache
    writable."""
    args = parser.parse_args()
    if hasattr(args, "stages"):
        args.stages = parse_stages(parser, args.stages)
    if hasattr(args, "no_cache"):
        use_compile_cache(parser, args)
    if hasattr(args, "coordinator"):
        distributed.check_arguments(parser, args)
        if os.environ.get(distributed.CHILD_ENV):
            distributed.initialize(parser, args)
            files.STOP_SIGNALS.remove(signal.SIGTERM)  # JAX's preemption service has it now
            if not distributed.is_main():  # process 0 speaks for the run
                sys.stdout = open(os.devnull, "w")
    if results and (not hasattr(args, "coordinator") or distributed.is_main()):  # only process 0 writes
        claim(parser, "--out", args.out)
        refuse_existing(parser, args, *results)
    return args


def refuse_existing(parser: argparse.ArgumentParser, args: argparse.Namespace, *names: str) -> None:
    """Results already in `args.out` are kept unless --overwrite says otherwise (or
    --resume continues the work that writes them); --overwrite replaces only results
    this project wrote (`files.is_result`), never a user's file of the same name."""
    found = [name for name in names if (args.out / name).exists() or (args.out / name).is_symlink()]
    if found and not args.overwrite and not getattr(args, "resume", False):
        parser.error(f"--out: {args.out} already holds {', '.join(found)}; pass --overwrite to replace them, or choose another --out")
    if alien := [name for name in found if not files.is_result(args.out / name)]:
        parser.error(f"--out: {', '.join(alien)} in {args.out} {'is' if len(alien) == 1 else 'are'} not "
                     f"{parser.prog}'s results and will not be replaced: move {'it' if len(alien) == 1 else 'them'} or choose another --out")


class Progress:
    """Progress in the unit of the work: tqdm's bar on a terminal, else (CI logs,
    notebooks) one plain line per step."""

    def __init__(self, total: int, desc: str, unit: str):
        self.total, self.desc, self.unit, self.done = total, desc, unit, 0
        self.bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr) if sys.stderr.isatty() else None

    def step(self, note: str = "", total: int | None = None) -> None:
        """One more step done; `total` changes the count of steps expected."""
        stop_if_pending()
        self.done += 1
        if total is not None:
            self.total = total
        if self.bar is not None:
            self.bar.total = self.total
            self.bar.set_postfix_str(note, refresh=False)
            self.bar.update()
        else:
            print(f"{self.desc}: {self.unit} {self.done}/{self.total}" + (f", {note}" if note else ""), flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def parse_stages(parser: argparse.ArgumentParser, text: str) -> list[str]:
    """`all` or a comma-separated list of stage names, in the study's order."""
    if text == "all":
        return list(STAGES)
    stages = text.split(",")
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        parser.error(f"argument --stages: unknown {', '.join(unknown)}; choose from {', '.join(STAGES)} or all")
    if len(set(stages)) != len(stages):
        parser.error(f"argument --stages: {text!r} names a stage twice; name each once")
    return stages


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


# The signals Python handles here (`files.STOP_SIGNALS`); in a run of several processes
# JAX's preemption service takes SIGTERM (`distributed.stop_if_agreed`), and SIGINT stays
# ignored where it was (a shell's background job).
_stop_note: Callable[[], str] = lambda: "no file was left half-written; run the same command again"  # noqa: E731


def on_stop(note: Callable[[], str]) -> None:
    """What a stop says it kept and how to continue, e.g. 'runs/mlp-seed42 keeps epoch 3;
    continue with: ... --resume'; asked when the signal comes."""
    global _stop_note
    _stop_note = note


def resume_command() -> str:
    """This command again, as typed, to continue its work: with --resume, without
    --overwrite (nor any abbreviation of either), quoted for a POSIX shell."""
    again = [a for a in sys.argv[1:] if not (len(a) > 3 and ("--overwrite".startswith(a) or "--resume".startswith(a)))]
    return shlex.join(["python", sys.argv[0], *again, "--resume"])


def _exit_stopped(signum: int) -> NoReturn:
    """One line, then out at once: the interpreter's teardown can crash while XLA still
    compiles on another thread, so it is skipped (the locks are dropped first)."""
    note = "no file was left half-written"
    with contextlib.suppress(Exception):
        note = _stop_note()
    with contextlib.suppress(Exception):
        print(f"stopped by {signal.Signals(signum).name}: {note}", file=sys.stderr, flush=True)
        sys.stdout.flush()
    files.release_locks()
    os._exit(128 + signum)


OUT_OF_MEMORY = ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory", "can't allocate memory")


def check_environment() -> None:
    """The variables the scripts read, checked before any work."""
    if os.environ.get(memory.LIMIT_ENV):
        try:
            memory.parse_size(os.environ[memory.LIMIT_ENV])  # readable (before JAX starts: jax.distributed comes first)
        except ValueError as e:
            fail(str(e))
    if os.environ.get("JAX_PLATFORMS") and not os.environ.get(distributed.CHILD_ENV):  # (a child joins the run first)
        try:
            jax.devices()  # starts the platforms asked for, in well under a second, or fails before any work
        except Exception as e:  # noqa: BLE001  (a RuntimeError, or an AssertionError where the platform's plugin is missing)
            why = str(e).splitlines()[0] if str(e) else "no backend for it is installed"
            fail(f"JAX_PLATFORMS={os.environ['JAX_PLATFORMS']}: JAX cannot start it ({why}); unset it to let JAX choose")


def run(main: Callable[[], None], several_processes: bool = False) -> None:
    """Run a script's main: every failure a user or the machine can cause ends in one
    line and its exit status (the table in README.md), not a traceback. A script that
    can run as one of `several_processes` does so under a supervisor (`distributed`)."""
    if several_processes and not os.environ.get(distributed.CHILD_ENV) and distributed.requested(sys.argv[1:]):
        distributed.supervise()
    sys.unraisablehook = _unraisable
    child = os.environ.get(distributed.CHILD_ENV)  # of a run of several processes: its supervisor forwards them
    for s in files.STOP_SIGNALS:
        if child and s != signal.SIGTERM:
            signal.signal(s, signal.SIG_IGN)
        elif signal.getsignal(s) is not signal.SIG_IGN:
            signal.signal(s, _stop)
    try:
        check_environment()
        main()
        stop_if_pending()
    except NonFiniteLoss as e:  # a grid's model (train.py says more of its run itself)
        fail(f"training stopped: {e}", EXIT_DIVERGED)
    except Stopped as e:
        _exit_stopped(e.signum)
    except distributed.StopAgreed:
        _exit_stopped(signal.SIGTERM)
    except ProgressError as e:
        fail(f"--resume: {e}")
    except KeyboardInterrupt:  # a SIGINT that came before the handler above
        _exit_stopped(signal.SIGINT)
    except DataError as e:
        fail(f"data error: {e}")
    except memory.DoesNotFit as e:
        fail(f"does not fit: {e}", EXIT_DOES_NOT_FIT)
    except (MemoryError, ValueError, RuntimeError) as e:  # XLA's RESOURCE_EXHAUSTED is a ValueError, torch's a RuntimeError
        if isinstance(e, MemoryError) or any(s in str(e) for s in OUT_OF_MEMORY):
            fail(f"does not fit: out of memory ({str(e).splitlines()[0] if str(e) else 'MemoryError'})", EXIT_DOES_NOT_FIT)
        raise
    except BrokenPipeError:  # the output's reader stopped early (`| head`): nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(EXIT_BROKEN_PIPE)
    except OSError as e:  # a write failed: each file is renamed into place only when complete
        fail(f"could not write {e.filename or 'a file'}: {e.strerror or e}; no file was left half-written", EXIT_WRITE_FAILED)
