"""Every stage over many seeds in one program per stage: python scripts/study.py --seeds 10"""

import sys
import time
from pathlib import Path

from mnist_jax import cli, distributed
from mnist_jax.data import load_mnist
from mnist_jax.stages import STAGES

RESULTS = ("results.json", "study_arrays.npz")


def build_parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=cli.positive_int, default=10, help="seeds 0..N-1, trained together per stage")
    parser.add_argument("--stages", default="all", help=f"comma-separated stages or all ({', '.join(STAGES)})")
    parser.add_argument("--epochs", type=cli.positive_int, default=5, help="epochs per run")
    parser.add_argument(
        "--seeds-at-once", type=cli.positive_int,
        help="train at most this many seeds in one program (default: as many as fit in memory; the rest in further chunks)",
    )
    cli.add_run_arguments(parser, Path("runs/study"), RESULTS, resume=True)
    distributed.add_arguments(parser)
    return parser


def interval(ci95: list | None, sign: str = "") -> str:
    """A 95% interval in points, or n/a (a study of one seed has none)."""
    return f"[{100 * ci95[0]:{sign}.2f}, {100 * ci95[1]:{sign}.2f}]" if ci95 else "[n/a]"


def print_report(report: dict) -> None:
    """The table of every stage and its step, and each MLP variant against the plain MLP."""
    print("| stage | documented | mean ± std | 95% CI | step difference | significant |\n|---|---|---|---|---|---|")
    steps = {s["to"]: s for s in report["steps"]}
    for stage, r in report["stages"].items():
        step = steps.get(stage)
        diff = f"{100 * step['difference']:+.2f} {interval(step['ci95'], '+')}" if step else "—"
        sig = ("yes" if step["significant"] else "no" if step["ci95"] else "n/a") if step else "—"
        std = f"{100 * r['std']:.2f}" if r["std"] is not None else "n/a"
        print(f"| `{stage}` | {100 * r['documented_accuracy']:.2f} | {100 * r['mean']:.2f} ± {std} "
              f"| {interval(r['ci95'])} | {diff} | {sig} |")
    for step in report["versus_mlp"]:
        print(f"{step['to']} vs {step['from']}: {100 * step['difference']:+.2f} points, 95% CI {interval(step['ci95'], '+')}")


def main() -> None:
    parser = build_parser()
    args = cli.parse(parser, RESULTS)
    progress = cli.grid_progress(parser, args, {"stages": args.stages, "seeds": args.seeds, "epochs": args.epochs})
    from mnist_jax import study
    from mnist_jax.results import save_study

    if not args.resume:
        progress.start()

    data = load_mnist(args.source, args.data_dir)
    start = time.perf_counter()
    results = {}
    for stage in args.stages:
        bar = cli.Progress(args.epochs, f"{stage}, {args.seeds} seeds", "epoch")
        config = study.TrainConfig(stage, epochs=args.epochs)
        results[stage] = study.train_seeds(
            config, data, list(range(args.seeds)), models_at_once=args.seeds_at_once,
            on_epoch=lambda done, total: bar.step(total=total), progress=progress,
        )
        bar.close()
        if results[stage].models_at_once < args.seeds:
            print(f"{stage}: {args.seeds} seeds in chunks of {results[stage].models_at_once}", flush=True)
    command = " ".join(["python", "scripts/study.py", *sys.argv[1:]])
    report = save_study(results, data, args.out, command, time.perf_counter() - start, write=distributed.is_main())
    progress.clear()
    print(f"\n{args.seeds} seeds, {args.epochs} epochs, {report['device']}, {report['seconds']:.1f}s in all")
    print_report(report)
    print(f"wrote {args.out / RESULTS[0]} and {args.out / RESULTS[1]}")


if __name__ == "__main__":
    cli.run(main, several_processes=True)
