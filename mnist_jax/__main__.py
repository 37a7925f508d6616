"""One command after any install: `mnist-jax train --stage mlp_bn`, or `python -m mnist_jax train ...`:
each subcommand runs scripts/<name>.py (in a clone, beside the package; installed, as mnist_jax.scripts)."""

import runpy
import sys
from pathlib import Path

COMMANDS = ("train", "study", "sweep", "compare", "linearity", "make_assets", "benchmark")


def script(name: str) -> Path:
    """The file of script `name`: the clone's scripts/ where the package is a clone's, else the installed copy."""
    here = Path(__file__).resolve().parent
    clone = here.parent / "scripts" / f"{name}.py"
    return clone if (here.parent / "pyproject.toml").is_file() and clone.is_file() else here / "scripts" / f"{name}.py"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    typed = ["python", "-m", "mnist_jax"] if Path(sys.argv[0]).name == "__main__.py" else [Path(sys.argv[0]).name]
    command = " ".join(typed)
    usage = f"usage: {command} {{{','.join(COMMANDS)}}} [options]; each command's options: {command} COMMAND --help"
    if not argv or argv[0] in ("-h", "--help"):
        print(usage, file=sys.stdout if argv else sys.stderr)
        sys.exit(0 if argv else 2)
    name = argv[0].replace("-", "_")
    if name not in COMMANDS:
        print(f"{command}: error: unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
        sys.exit(2)
    path = script(name)
    sys.argv = [str(path), *argv[1:]]  # the script sees itself run: its name in messages, --help, progress
    from mnist_jax import cli

    cli.invocation = [*typed, argv[0]]
    runpy.run_path(str(path), run_name="__main__")


if __name__ == "__main__":
    main()
