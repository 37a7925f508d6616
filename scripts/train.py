"""Train stages of the study: python scripts/train.py --stage mlp_bn (or --stage all)"""

from pathlib import Path

from mnist_jax import cli
from mnist_jax.checkpoint import save_run
from mnist_jax.data import load_mnist
from mnist_jax.stages import STAGES
from mnist_jax.train import TrainConfig, device_description, summary, train


def parse_args():
    parser = cli.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--stage", required=True, choices=[*STAGES, "all"], help="which stage to train; all: the five in turn"
    )
    cli.add_training_arguments(parser)
    parser.add_argument("--seed", type=int, default=42, help="seeds the split, init, order and dropout")
    cli.add_data_arguments(parser)
    parser.add_argument(
        "--out", type=Path, help="run folder (default runs/<stage>-seed<seed>; with all, one folder per stage inside it)"
    )
    args = parser.parse_args()
    args.stages = list(STAGES) if args.stage == "all" else [args.stage]
    for name in ("hidden", "dropout"):
        if getattr(args, name) is not None and not all(STAGES[s].is_mlp for s in args.stages):
            parser.error(f"--{name} applies to the MLP stages only, not {args.stage}")
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} is a file; expected a folder")
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


def main() -> None:
    args = parse_args()
    data = load_mnist(args.source, args.data_dir)
    print(f"device: {device_description()} | data: {data.source}", flush=True)
    results = []
    for stage in args.stages:
        config = TrainConfig(
            stage, args.epochs, args.batch_size, args.lr, args.seed, args.hidden, args.dropout
        )
        print(f"stage {stage}: {config.spec.description}", flush=True)
        result = train(config, data, on_epoch=print_epoch)
        print(f"[Test] loss={result.test_loss:.4f} acc={result.test_accuracy:.2%}")
        out = run_dir(args, stage)
        save_run(result, out, summary(result))
        print(
            f"compiled in {result.compile_seconds:.2f}s; "
            f"best val epoch {result.best_epoch}; saved to {out}",
            flush=True,
        )
        results.append(result)
    if len(results) > 1:
        print_table(results)


if __name__ == "__main__":
    cli.run(main)
