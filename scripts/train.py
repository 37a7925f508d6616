"""Train stages of the study: python scripts/train.py --stage mlp_bn (or --stage linear_ce,mlp, or --stage all)"""

from mnist_jax import cli  # first: its signal handlers cover the imports after it

import dataclasses
import itertools
import json
from pathlib import Path

from mnist_jax.data import NUM_EXAMPLES, NUM_VALIDATION
from mnist_jax.errors import EXIT_DIVERGED, EXIT_WRITE_FAILED, NonFiniteLoss, UsageError
from mnist_jax import files
from mnist_jax.files import foreign_entries, signals_deferred, write_json
from mnist_jax.progress import option_difference
from mnist_jax.stages import STAGES, TrainConfig


def build_parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(__doc__, holds="the run; with several stages, one folder per stage inside it "
                                "(default: runs/<stage>-seed<seed>)", resume=True,
                                tensorboard=True)
    parser.add_argument("--stage", required=True, type=cli.stages,
                        help=f"which stage to train ({', '.join(STAGES)}); several, comma-separated, or all: each in turn")
    # Options --resume compares: None unless given (`given` tells them from ones given with their default value).
    parser.add_argument("--epochs", type=cli.positive_int, default=TrainConfig.epochs, help="passes over the 54,000 training images")
    parser.add_model_options()
    parser.add_argument("--seed", type=cli.seed, help=f"seeds the split, init, order and dropout (default: {TrainConfig.seed})")
    return parser


def parse_args():
    parser = build_parser()
    args = parser.parse()
    args.given = {name: getattr(args, name) for name in ("batch_size", "lr", "seed", "hidden", "dropout") if getattr(args, name) is not None}
    for name in ("batch_size", "lr", "seed"):
        setattr(args, name, args.given.get(name, getattr(TrainConfig, name)))
    args.stages = args.stage
    global checkpoint
    from mnist_jax import checkpoint  # after the arguments are checked: it imports JAX

    try:
        check_run_folders(args)
    except UsageError as e:
        parser.error(str(e))
    return args


def check_run_folders(args) -> None:
    """Each stage's run folder: claimed, holding only a run, and one to continue with --resume."""
    cli.mlp_only(args, args.stages)
    num_train = NUM_EXAMPLES["train"] - NUM_VALIDATION
    if args.batch_size > num_train:
        raise UsageError(f"argument --batch-size: at most the {num_train} training images, got {args.batch_size}")
    args.resumed, args.written = {}, set()  # the runs continued; the stages this command saved an epoch of
    if len(args.stages) > 1 and args.out and checkpoint.has_checkpoint(args.out):
        raise UsageError(f"--out: {args.out} holds the run of one stage; with several stages --out holds a folder for each: "
                         "choose another --out")
    for stage in args.stages:
        out = run_dir(args, stage)
        if out.is_symlink() and out != args.out:
            raise UsageError(f"--out: {out} is a link; train.py never follows one it did not make: choose another --out")
        if not args.no_cache:
            cli.check_cache_apart(args.compile_cache, out)
        cli.claim(out, run=True)
        foreign = foreign_entries(out, checkpoint.RUN_FILES)
        if runs := [name for name in foreign if checkpoint.has_checkpoint(out / name)]:
            raise UsageError(f"--out: {out} holds run folders ({', '.join(runs)}), as the --out of several stages does; with "
                             f"one stage --out is the run's own folder: choose another --out (say --out {out / run_name(args, stage)})")
        if args.resume and checkpoint.has_checkpoint(out):  # (a damaged checkpoint: --resume says so)
            foreign = [name for name in foreign if name != checkpoint.CHECKPOINT_FILE]
        if foreign:
            raise UsageError(f"--out: {out} holds {', '.join(foreign)}, which train.py did not write (or cannot read, "
                             "and so does not replace); it writes or replaces only a run folder: choose another --out")
        if args.resume:
            args.resumed[stage] = resumable(args, stage, out)
        elif checkpoint.has_checkpoint(out) and not args.overwrite:
            several = Path("runs", "all" if args.stages == list(STAGES) else "-".join(args.stages))
            other = free_folder(args.out or (out if len(args.stages) == 1 else several))
            raise UsageError(f"--out: {out} already holds {held(args, stage, out)}, --overwrite to replace it, "
                             f"or choose another --out (say --out {other})")
    configs = [run.config if (run := args.resumed.get(stage)) else TrainConfig(
        stage, args.epochs, args.batch_size, args.lr, args.seed, args.hidden, args.dropout) for stage in args.stages]
    cli.check_logs(args.tensorboard, [config.run_name() for config in configs],
                   [run_dir(args, stage) for stage in args.stages] + ([args.out] if args.out else []))
    if args.resume and not any(args.resumed.values()):
        where = run_dir(args, args.stages[0]) if len(args.stages) == 1 else f"{args.out or 'runs'} for any of its stages"
        raise UsageError(f"--resume: no checkpoint in {where} to continue")


def resumable(args, stage: str, out: Path):
    """The run saved in `out`, if it is one that `args` can continue; None if there is
    none and `args` trains all stages (this one has not started)."""
    if not checkpoint.has_checkpoint(out):
        return None
    try:
        run = checkpoint.load_run(out)
    except checkpoint.CheckpointError as e:
        ours = checkpoint.is_checkpoint(out / checkpoint.CHECKPOINT_FILE)  # else --overwrite refuses it too
        raise UsageError(f"--resume: {e}; " + ("pass --overwrite to start again" if ours else
                         "train.py did not write it: move it or choose another --out")) from None
    if len(run.history) > args.epochs:
        raise UsageError(f"--resume: {out} already ran {len(run.history)} epochs, more than --epochs {args.epochs}")
    config = run.config  # its hidden width and dropout rate as trained (None: the stage's own)
    saved = dataclasses.asdict(config) | {"hidden": config.hidden or config.spec.hidden, "dropout": config.dropout_rate}
    asked = {"stage": stage} | args.given
    differ = [option_difference(name, value, saved[name]) for name, value in asked.items() if saved[name] != value]
    if differ:
        raise UsageError(f"--resume: the run in {out} is {run.config.describe()}, not what was asked: {', '.join(differ)}; "
                     "pass --overwrite to start again, or choose another --out")
    return run


def held(args, stage: str, out: Path) -> str:
    """The run in `out`, and whether --resume can continue it to `args`."""
    try:
        run = resumable(args, stage, out)
    except UsageError:
        return "a run that --resume cannot continue as asked" if checkpoint.saved_epochs(out) else "a damaged run"
    if len(run.history) < args.epochs:
        return f"this run after epoch {len(run.history)}; pass --resume to continue it"
    return f"this run, finished after {cli.count(len(run.history), 'epoch')}; a larger --epochs with --resume trains it further"


def free_folder(path: Path) -> Path:
    """The first of `path`, `path`-2, -3, ... that names nothing yet (`.`, say, by its own name)."""
    path = path if path.name else files.real_path(path)
    path = path if path.name else path / "run"  # (the root)
    return next(p for i in itertools.count(1) if not (p := path.with_name(f"{path.name}-{i}") if i > 1 else path).exists())


def run_name(args, stage: str) -> str:
    """`TrainConfig.run_name` of `stage` as `args` ask it: mlp-hidden512-seed42."""
    return TrainConfig(stage, args.epochs, args.batch_size, args.lr, args.seed, args.hidden, args.dropout).run_name()


def run_dir(args, stage: str) -> Path:
    """runs/<the run's name> (`run_name`), or --out (with several stages, --out/<name>)."""
    name = run_name(args, stage)
    if args.out is None:
        return Path("runs") / name
    return args.out / name if len(args.stages) > 1 else args.out


def architecture(config: TrainConfig) -> str:
    """The model as trained, e.g. '784 -> 512 -> ReLU -> Dropout(0.2) -> 10'; the stage's own description otherwise."""
    spec = config.spec
    if not spec.is_mlp:
        return spec.description
    hidden = f"{config.hidden or spec.hidden}{' (frozen)' if spec.frozen_hidden else ''}"
    layers = [784, hidden, "BatchNorm" if spec.batchnorm else None, "ReLU" if spec.activation == "relu" else None,
              f"Dropout({config.dropout_rate:g})" if config.dropout_rate else None, 10]
    return " -> ".join(str(layer) for layer in layers if layer is not None)


def print_epoch(row: dict) -> None:
    print(
        f"[Epoch {row['epoch']:02d}] train_loss={row['train_loss']:.4f} "
        f"train_acc={row['train_accuracy']:.2%} | val_loss={row['val_loss']:.4f} "
        f"val_acc={row['val_accuracy']:.2%} | {row['seconds']:.2f}s",
        flush=True,
    )


def print_table(results: list[dict]) -> None:
    print()
    cli.print_table(["stage", "documented", "this run", "difference"], [
        [f"`{r['stage']}`", cli.documented(r["documented_accuracy"], "%"), f"{r['test_accuracy']:.2%}",
         cli.difference(r["test_accuracy"], r["documented_accuracy"])] for r in results])


def finished(resume, out: Path, epochs: int) -> dict | None:
    """The metrics of a resumed run that already ended after `epochs`, else None."""
    if resume is None or len(resume.history) != epochs:
        return None
    try:
        metrics = json.loads((out / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    done = metrics.get("test_accuracy") is not None and len(metrics.get("history", [])) == epochs
    return metrics if done else None


def kept_epochs(args, stage: str, out: Path) -> int:
    """The epochs of this command's run of `stage` saved in `out` (0 while a run being replaced is still there)."""
    return checkpoint.saved_epochs(out) if args.resumed.get(stage) or stage in args.written else 0


def finished_before(args, stage: str) -> str:
    """'the stages before it are finished (...); ' where this command trained others before `stage`."""
    done = args.stages[: args.stages.index(stage)]
    return f"the stages before it are finished ({', '.join(done)}); " if done else ""


def stop_note(args, stage: str) -> str:
    """What a stop in `stage` leaves, and how to continue."""
    out = run_dir(args, stage)
    kept = kept_epochs(args, stage, out)
    replacing = not kept and args.overwrite and checkpoint.has_checkpoint(out)
    shown = cli.one_line(str(out))  # as a refusal shows it, so that the line's command to continue is not escaped again
    rest = args.stages[args.stages.index(stage):]  # (--resume would continue a run being replaced, or refuse its epochs)
    old_left = args.overwrite and any(s not in args.written and checkpoint.has_checkpoint(run_dir(args, s)) for s in rest)
    if kept:
        what = f"{shown} keeps the checkpoint of epoch {kept}"
    elif replacing:
        what = f"the run being replaced in {shown} is kept as it was"
    else:
        what = f"no epoch of {stage} was saved"
    done = finished_before(args, stage)
    if not (kept or done):
        return f"{what}; run the same command again to start afresh"
    if old_left:
        return f"{done}{what}; run the same command again to replace every stage afresh"
    return f"{done}{what}; continue with: {cli.resume_command()}"


def nothing_saved(args, stage: str) -> str:
    done = finished_before(args, stage)
    return f"{done}nothing of {stage} was saved" if done else "nothing was saved"


def write_log(args, stage: str, config: TrainConfig, metrics: dict) -> None:
    """The TensorBoard log of the finished run of `stage`; if it cannot be written, one line saying what is saved."""
    finished = ", ".join(args.stages[: args.stages.index(stage) + 1])
    cli.write_logs(args.tensorboard, [(config, metrics["history"], metrics["test_accuracy"])],
                   f"the runs of {finished} are finished and saved; the same command with --resume writes the log")


def train_stage(args, stage: str, data) -> dict:
    out = run_dir(args, stage)
    resume = args.resumed.get(stage)
    cli.on_stop(lambda: stop_note(args, stage), kept=lambda: bool(finished_before(args, stage) or kept_epochs(args, stage, out)))
    if metrics := finished(resume, out, args.epochs):
        print(f"stage {stage}: finished in {out} (test accuracy {metrics['test_accuracy']:.2%}), skipped", flush=True)
        # (its log too: a stop can come between the run's last file and its log)
        write_log(args, stage, resume.config, metrics)
        return metrics
    if resume:
        resume.config = dataclasses.replace(resume.config, epochs=args.epochs)
        print(f"resuming {out} after epoch {len(resume.history)}", flush=True)
    config = resume.config if resume else TrainConfig(
        stage, args.epochs, args.batch_size, args.lr, args.seed, args.hidden, args.dropout
    )
    print(f"stage {config.stage}: {architecture(config)}", flush=True)

    def save(run, write) -> None:
        try:
            with signals_deferred():  # the checkpoint and metrics.json together
                write()
        except OSError as e:
            kept = kept_epochs(args, stage, out)
            kept = (f"{finished_before(args, stage)}{out} keeps the checkpoint of epoch {kept}; --resume continues it" if kept
                    else nothing_saved(args, stage))
            cli.fail(f"could not save epoch {len(run.history)} to {out}: {e.strerror or e}; {kept}", EXIT_WRITE_FAILED)

    def write_epoch(run) -> None:
        checkpoint.save_run(run, out, run_record(run), replacing=not resume and len(run.history) == 1)
        args.written.add(stage)

    def after_epoch(run) -> None:
        print_epoch(run.history[-1])
        save(run, lambda: write_epoch(run))
        cli.stop_if_pending()

    from mnist_jax.train import run_record, train

    try:
        result = train(config, data, on_epoch=after_epoch, resume=resume)
    except NonFiniteLoss as e:
        kept = (f"{finished_before(args, stage)}the checkpoint and metrics.json of epoch {e.epoch - 1} in {out} are intact"
                if e.epoch > 1 else nothing_saved(args, stage))
        cli.fail(f"training stopped: {e}; {kept}", EXIT_DIVERGED)
    print(f"[Test] loss={result.test_loss:.4f} acc={result.test_accuracy:.2%}")
    metrics = run_record(result)
    save(result, lambda: write_json(out / "metrics.json", metrics))
    write_log(args, stage, config, metrics)
    print(f"compiled in {result.compile_seconds:.2f}s; best val epoch {result.best_epoch}; saved to {out}", flush=True)
    return metrics


def main() -> None:
    args = parse_args()
    data = cli.load_data(args)
    from mnist_jax.train import device_description

    print(f"device: {device_description()}", flush=True)
    results = [train_stage(args, stage, data) for stage in args.stages]
    if len(results) > 1:
        print_table(results)


if __name__ == "__main__":
    cli.run(main)
