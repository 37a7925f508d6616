"""What the scripts share: argument types, one-line errors and exit codes."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import signal
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Iterator, NoReturn

import jax
from tqdm import tqdm

from mnist_jax import distributed, files, memory
from mnist_jax.data import SOURCES, DataError, default_cache_dir
from mnist_jax.stages import STAGES
from mnist_jax.train import MAX_SEED, TrainConfig

EXIT_USAGE = 2  # bad arguments, bad or missing data, an unwritable or busy --out, a damaged checkpoint
EXIT_DIVERGED = 3  # the loss stopped being finite
EXIT_DOES_NOT_FIT = 4  # more memory than the device has
EXIT_WRITE_FAILED = 5  # a save failed (disk full, I/O error): the last complete save is kept
EXIT_INTERRUPTED = 130  # Ctrl-C
EXIT_BROKEN_PIPE = 141  # the output's reader stopped early (`| head`), as a shell reports SIGPIPE
EXIT_PEER_LOST = distributed.EXIT_PEER_LOST  # another process of the run died, or the coordinator was unreachable
DOCUMENTED_EXITS = (0, EXIT_USAGE, EXIT_DIVERGED, EXIT_DOES_NOT_FIT, EXIT_WRITE_FAILED, EXIT_PEER_LOST, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE)

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
    parser.add_argument("--epochs", type=positive_int, default=TRAIN_DEFAULTS["epochs"], help="passes over the 54,000 training images")
    parser.add_argument("--batch-size", type=positive_int, default=TRAIN_DEFAULTS["batch_size"], help="examples per Adam step")
    parser.add_argument("--lr", type=positive_float, default=TRAIN_DEFAULTS["lr"], help="Adam learning rate")
    parser.add_argument(
        "--hidden", type=positive_int, help="hidden width of the MLP stages (default: the stage's own, 256)"
    )
    parser.add_argument(
        "--dropout", type=dropout_rate, help="dropout rate of the MLP stages (default: the stage's own, 0.5 for mlp_dropout, else 0)"
    )


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


def add_output_arguments(parser: argparse.ArgumentParser, default: Path, holds: str) -> None:
    parser.add_argument("--out", type=output_folder, default=default, help=f"folder for {holds}")
    parser.add_argument("--overwrite", action="store_true", help="replace results already in --out")


def add_run_arguments(parser: argparse.ArgumentParser, out: Path, results: tuple[str, ...]) -> None:
    """Where a script that trains writes its `results`, where it finds MNIST, how it compiles."""
    add_output_arguments(parser, out, " and ".join(results))
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
            if not distributed.is_main():  # process 0 speaks for the run
                sys.stdout = open(os.devnull, "w")
    if results and (not hasattr(args, "coordinator") or distributed.is_main()):  # only process 0 writes
        claim(parser, "--out", args.out)
        refuse_existing(parser, args, *results)
    return args


def refuse_existing(parser: argparse.ArgumentParser, args: argparse.Namespace, *names: str) -> None:
    """Results already in `args.out` are kept unless --overwrite says otherwise."""
    found = [name for name in names if (args.out / name).exists()]
    if found and not args.overwrite:
        parser.error(f"--out: {args.out} already holds {', '.join(found)}; pass --overwrite to replace them")


class Progress:
    """Progress in the unit of the work: tqdm's bar on a terminal, else (CI logs,
    notebooks) one plain line per step."""

    def __init__(self, total: int, desc: str, unit: str):
        self.total, self.desc, self.unit, self.done = total, desc, unit, 0
        self.bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr) if sys.stderr.isatty() else None

    def step(self, note: str = "", total: int | None = None) -> None:
        """One more step done; `total` changes the count of steps expected."""
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
    return stages


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C while files are written, and act on it right after."""
    received = []
    previous = signal.signal(signal.SIGINT, lambda *_: received.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


OUT_OF_MEMORY = ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory", "can't allocate memory")


def run(main: Callable[[], None], several_processes: bool = False) -> None:
    """Run a script's main: every failure a user or the machine can cause ends in one
    line and its exit status (the table in README.md), not a traceback. A script that
    can run as one of `several_processes` does so under a supervisor (`distributed`)."""
    if several_processes and not os.environ.get(distributed.CHILD_ENV) and distributed.requested(sys.argv[1:]):
        distributed.supervise()
    try:
        if os.environ.get(memory.LIMIT_ENV):
            memory.parse_size(os.environ[memory.LIMIT_ENV])  # readable (before JAX starts: jax.distributed comes first)
    except ValueError as e:
        fail(str(e))
    if os.environ.get("JAX_PLATFORMS") and not os.environ.get(distributed.CHILD_ENV):  # (a child joins the run first)
        try:
            jax.devices()  # starts the platforms asked for, in well under a second, or fails before any work
        except Exception as e:  # noqa: BLE001  (a RuntimeError, or an AssertionError where the platform's plugin is missing)
            why = str(e).splitlines()[0] if str(e) else "no backend for it is installed"
            fail(f"JAX_PLATFORMS={os.environ['JAX_PLATFORMS']}: JAX cannot start it ({why}); unset it to let JAX choose")
    try:
        main()
    except DataError as e:
        fail(f"data error: {e}")
    except memory.DoesNotFit as e:
        fail(f"does not fit: {e}", EXIT_DOES_NOT_FIT)
    except (MemoryError, ValueError, RuntimeError) as e:  # XLA's RESOURCE_EXHAUSTED is a ValueError, torch's a RuntimeError
        if isinstance(e, MemoryError) or any(s in str(e) for s in OUT_OF_MEMORY):
            fail(f"does not fit: out of memory ({str(e).splitlines()[0] if str(e) else 'MemoryError'})", EXIT_DOES_NOT_FIT)
        raise
    except KeyboardInterrupt:
        fail("interrupted", EXIT_INTERRUPTED)
    except BrokenPipeError:  # the output's reader stopped early (`| head`): nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(EXIT_BROKEN_PIPE)
    except OSError as e:  # a write failed: each file is renamed into place only when complete
        fail(f"could not write {e.filename or 'a file'}: {e.strerror or e}; no file was left half-written", EXIT_WRITE_FAILED)
