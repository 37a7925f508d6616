"""Train stages of the study: python scripts/train.py --stage mlp_bn (or --stage all)"""

import dataclasses
import json
from pathlib import Path

from mnist_jax import cli
from mnist_jax.checkpoint import RUN_FILES, CheckpointError, has_checkpoint, load_run, save_run, saved_epochs
from mnist_jax.data import NUM_EXAMPLES, NUM_VALIDATION, load_mnist
from mnist_jax.files import foreign_entries, signals_deferred, write_json
from mnist_jax.stages import STAGES
from mnist_jax.train import NonFiniteLoss, TrainConfig, device_description, run_record, train


def build_parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--stage", required=True, choices=[*STAGES, "all"], help="which stage to train; all: the five in turn"
    )
    cli.add_training_arguments(parser)
    cli.add_data_arguments(parser)
    cli.add_cache_arguments(parser)
    parser.add_argument(
        "--out", type=cli.output_folder, help="run folder; with all, one folder per stage inside it (default: runs/<stage>-seed<seed>)"
    )
    again = parser.add_mutually_exclusive_group()
    again.add_argument(
        "--resume", action="store_true",
        help="continue the run saved in the run folder, with its settings, up to --epochs; with all, "
        "finished stages are skipped and stages not started begin",
    )
    again.add_argument(
        "--overwrite", action="store_true",
        help="replace a run already in the run folder (once the new run has saved its first epoch; "
        "a folder holding anything else is refused)",
    )
    return parser


def parse_args():
    parser = build_parser()
    args = parser.parse_args()
    args.given = cli.given_training(args)
    args.stages = list(STAGES) if args.stage == "all" else [args.stage]
    for name in ("hidden", "dropout"):
        if getattr(args, name) is not None and not all(STAGES[s].is_mlp for s in args.stages):
            parser.error(f"--{name} applies to the MLP stages only, not {args.stage}")
    num_train = NUM_EXAMPLES["train"] - NUM_VALIDATION
    if args.batch_size > num_train:
        parser.error(f"argument --batch-size: at most the {num_train} training images, got {args.batch_size}")
    cli.use_compile_cache(parser, args)
    args.resumed = {}
    for stage in args.stages:
        out = run_dir(args, stage)
        if out.is_symlink() and out != args.out:
            parser.error(f"--out: {out} is a link; train.py never follows one it did not make: choose another --out")
        cli.claim(parser, "--out", out)
        foreign = foreign_entries(out, RUN_FILES)
        if foreign and not args.resume:
            parser.error(f"--out: {out} holds {', '.join(foreign)}, which train.py did not write; "
                         "it writes or replaces only a run folder: choose another --out")
        if args.resume:
            args.resumed[stage] = resumable(parser, args, stage, out)
        elif has_checkpoint(out) and not args.overwrite:
            parser.error(f"--out: {out} already holds a run; pass --resume to continue it, --overwrite to replace it, "
                         "or choose another --out")
    if args.resume and not any(args.resumed.values()):
        parser.error(f"--resume: no checkpoint in {run_dir(args, args.stages[0]) if len(args.stages) == 1 else args.out} to continue")
    return args


def resumable(parser, args, stage: str, out: Path):
    """The run saved in `out`, if it is one that `args` can continue; None if there is
    none and `args` trains all stages (this one has not started)."""
    if not has_checkpoint(out):
        return None
    try:
        run = load_run(out)
    except CheckpointError as e:
        parser.error(f"--resume: {e}; pass --overwrite to start again")
    if len(run.history) > args.epochs:
        parser.error(f"--resume: {out} already ran {len(run.history)} epochs, more than --epochs {args.epochs}")
    config = run.config  # its hidden width and dropout rate as trained (None: the stage's own)
    saved = dataclasses.asdict(config) | {"hidden": config.hidden or config.spec.hidden, "dropout": config.dropout_rate}
    asked = {"stage": stage} | args.given
    differ = [f"--{name.replace('_', '-')} {value} (saved: {saved[name]})" for name, value in asked.items() if saved[name] != value]
    if differ:
        parser.error(f"--resume: the run in {out} is {run.config.describe()}, not what was asked: {', '.join(differ)}; "
                     "pass --overwrite to start again, or choose another --out")
    return run


def run_dir(args, stage: str) -> Path:
    name = f"{stage}-seed{args.seed}"
    if args.out is None:
        return Path("runs") / name
    return args.out / name if args.stage == "all" else args.out


def print_epoch(row: dict) -> None:
    print(
        f"[Epoch {row['epoch']:02d}] train_loss={row['train_loss']:.4f} "
        f"train_acc={row['train_accuracy']:.2%} | val_loss={row['val_loss']:.4f} "
        f"val_acc={row['val_accuracy']:.2%} | {row['seconds']:.2f}s",
        flush=True,
    )


def print_table(results: list[dict]) -> None:
    print("\n| stage | documented | this run | difference |\n|---|---|---|---|")
    for r in results:
        print(f"| `{r['stage']}` | {r['documented_accuracy']:.2%} | {r['test_accuracy']:.2%} | "
              f"{100 * (r['test_accuracy'] - r['documented_accuracy']):+.2f} |")


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


def stop_note(args, stage: str) -> str:
    """What a stop in `stage` leaves, and how to continue."""
    out = run_dir(args, stage)
    kept = saved_epochs(out)
    done = args.stages[: args.stages.index(stage)]
    if kept:
        what = f"{out} keeps the checkpoint of epoch {kept}"
    elif args.overwrite and has_checkpoint(out):
        what = f"the run being replaced in {out} is kept as it was"
    else:
        what = f"no epoch of {stage} was saved"
    finished_stages = f"the stages before it are finished ({', '.join(done)}); " if done else ""
    if not kept and not done:
        return f"{what}; run the same command again to start afresh"
    return f"{finished_stages}{what}; continue with: {cli.resume_command()}"


def train_stage(args, stage: str, data) -> dict:
    out = run_dir(args, stage)
    resume = args.resumed.get(stage)
    cli.on_stop(lambda: stop_note(args, stage))
    if metrics := finished(resume, out, args.epochs):
        print(f"stage {stage}: finished in {out} (test accuracy {metrics['test_accuracy']:.2%}), skipped", flush=True)
        return metrics
    if resume:
        resume.config = dataclasses.replace(resume.config, epochs=args.epochs)
        print(f"resuming {out} after epoch {len(resume.history)}", flush=True)
    config = resume.config if resume else TrainConfig(
        stage, args.epochs, args.batch_size, args.lr, args.seed, args.hidden, args.dropout
    )
    print(f"stage {config.stage}: {config.spec.description}", flush=True)

    def save(run, write) -> None:
        try:
            with signals_deferred():  # the checkpoint and metrics.json together
                write()
        except OSError as e:
            kept = saved_epochs(out)
            kept = f"{out} keeps the checkpoint of epoch {kept}; --resume continues it" if kept else "nothing was saved"
            cli.fail(f"could not save epoch {len(run.history)} to {out}: {e.strerror or e}; {kept}", cli.EXIT_WRITE_FAILED)

    def write_epoch(run) -> None:
        if not resume and len(run.history) == 1:  # a run being replaced goes now, its metrics first
            (out / "metrics.json").unlink(missing_ok=True)
        save_run(run, out, run_record(run))

    def after_epoch(run) -> None:
        print_epoch(run.history[-1])
        save(run, lambda: write_epoch(run))
        cli.stop_if_pending()

    try:
        result = train(config, data, on_epoch=after_epoch, resume=resume)
    except NonFiniteLoss as e:
        kept = f"the checkpoint and metrics.json of epoch {e.epoch - 1} in {out} are intact" if e.epoch > 1 else "nothing was saved"
        cli.fail(f"training stopped: {e}; {kept}", cli.EXIT_DIVERGED)
    print(f"[Test] loss={result.test_loss:.4f} acc={result.test_accuracy:.2%}")
    metrics = run_record(result)
    save(result, lambda: write_json(out / "metrics.json", metrics))
    print(f"compiled in {result.compile_seconds:.2f}s; best val epoch {result.best_epoch}; saved to {out}", flush=True)
    return metrics


def main() -> None:
    args = parse_args()
    data = load_mnist(args.source, args.data_dir)
    print(f"device: {device_description()} | data: {data.source}", flush=True)
    results = [train_stage(args, stage, data) for stage in args.stages]
    if len(results) > 1:
        print_table(results)


if __name__ == "__main__":
    cli.run(main)
