"""Train stages of the study: python scripts/train.py --stage mlp_bn (or --stage all)"""

import dataclasses
import shutil
from pathlib import Path

from mnist_jax import cli
from mnist_jax.checkpoint import has_checkpoint, load_run, save_run
from mnist_jax.data import NUM_EXAMPLES, NUM_VALIDATION, load_mnist
from mnist_jax.files import write_json
from mnist_jax.stages import STAGES
from mnist_jax.train import NonFiniteLoss, TrainConfig, device_description, summary, train


def build_parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--stage", required=True, choices=[*STAGES, "all"], help="which stage to train; all: the five in turn"
    )
    cli.add_training_arguments(parser)
    parser.add_argument("--seed", type=int, default=cli.TRAIN_DEFAULTS["seed"], help="seeds the split, init, order and dropout")
    cli.add_data_arguments(parser)
    cli.add_cache_arguments(parser)
    parser.add_argument(
        "--out", type=cli.output_folder, help="run folder; with all, one folder per stage inside it (default: runs/<stage>-seed<seed>)"
    )
    again = parser.add_mutually_exclusive_group()
    again.add_argument(
        "--resume", action="store_true", help="continue the run saved in the run folder, with its settings, up to --epochs"
    )
    again.add_argument("--overwrite", action="store_true", help="replace a run already in the run folder")
    return parser


def parse_args():
    parser = build_parser()
    args = parser.parse_args()
    args.stages = list(STAGES) if args.stage == "all" else [args.stage]
    for name in ("hidden", "dropout"):
        if getattr(args, name) is not None and not all(STAGES[s].is_mlp for s in args.stages):
            parser.error(f"--{name} applies to the MLP stages only, not {args.stage}")
    num_train = NUM_EXAMPLES["train"] - NUM_VALIDATION
    if args.batch_size > num_train:
        parser.error(f"argument --batch-size: at most the {num_train} training images, got {args.batch_size}")
    for stage in args.stages:
        out = run_dir(args, stage)
        if args.resume and not has_checkpoint(out):
            parser.error(f"--resume: no checkpoint in {out} to continue")
        if not (args.resume or args.overwrite) and out.is_dir() and any(out.iterdir()):
            parser.error(f"--out: {out} already holds a run; pass --resume to continue it or --overwrite to replace it")
    return args


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


def print_table(results) -> None:
    print("\n| stage | documented | this run | difference |\n|---|---|---|---|")
    for r in results:
        documented = r.config.spec.documented_accuracy
        print(
            f"| `{r.config.stage}` | {documented:.2%} | {r.test_accuracy:.2%} | "
            f"{100 * (r.test_accuracy - documented):+.2f} |"
        )


def train_stage(args, stage: str, data):
    out = run_dir(args, stage)
    resume = None
    if args.resume:
        resume = load_run(out)
        resume.config = dataclasses.replace(resume.config, epochs=args.epochs)
        print(f"resuming {out} after epoch {len(resume.history)}", flush=True)
    elif args.overwrite and out.exists():
        shutil.rmtree(out)
    config = resume.config if resume else TrainConfig(
        stage, args.epochs, args.batch_size, args.lr, args.seed, args.hidden, args.dropout
    )
    print(f"stage {config.stage}: {config.spec.description}", flush=True)

    def after_epoch(run) -> None:
        print_epoch(run.history[-1])
        with cli.interrupts_deferred():
            save_run(run, out, summary(run))

    try:
        result = train(config, data, on_epoch=after_epoch, resume=resume)
    except NonFiniteLoss as e:
        kept = f"the checkpoint and metrics.json of epoch {e.epoch - 1} in {out} are intact" if e.epoch > 1 else "nothing was saved"
        cli.fail(f"training stopped: {e}; {kept}", cli.EXIT_DIVERGED)
    print(f"[Test] loss={result.test_loss:.4f} acc={result.test_accuracy:.2%}")
    with cli.interrupts_deferred():
        write_json(out / "metrics.json", summary(result))
    print(f"compiled in {result.compile_seconds:.2f}s; best val epoch {result.best_epoch}; saved to {out}", flush=True)
    return result


def main() -> None:
    args = parse_args()
    cli.use_compile_cache(args)
    data = load_mnist(args.source, args.data_dir)
    print(f"device: {device_description()} | data: {data.source}", flush=True)
    results = [train_stage(args, stage, data) for stage in args.stages]
    if len(results) > 1:
        print_table(results)


if __name__ == "__main__":
    cli.run(main)
