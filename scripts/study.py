"""Every stage over many seeds in one program per stage: python scripts/study.py --seeds 10"""

import dataclasses
import statistics
import time

from mnist_jax import cli, distributed
from mnist_jax.errors import UsageError
from mnist_jax.stages import TrainConfig

RESULTS = ("results.json", "study_arrays.npz")


def build_parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(__doc__, out="runs/study", results=RESULTS, resume=True, processes=True,
                                tensorboard=True)
    parser.add_argument("--seeds", type=cli.positive_int, default=10, help="seeds 0..N-1, trained together per stage")
    parser.add_stages()
    parser.add_argument("--epochs", type=cli.positive_int, default=5, help="epochs per run")
    parser.add_model_options()
    parser.add_argument(
        "--seeds-at-once", type=cli.positive_int,
        help="train at most this many seeds in one program (default: as many as fit in memory; the rest in further chunks)",
    )
    return parser


def print_report(report: dict) -> None:
    """The table of every stage and its step, and each MLP variant against the plain MLP."""
    steps = {s["to"]: s for s in report["steps"]}
    rows = []
    for stage, r in report["stages"].items():
        step = steps.get(stage)
        diff = f"{100 * step['difference']:+.2f} {cli.interval(step['ci95'], '+')}" if step else "—"
        sig = ("yes" if step["significant"] else "no" if step["ci95"] else "n/a") if step else "—"
        std = f"{100 * r['std']:.2f}" if r["std"] is not None else "n/a"
        rows.append([f"`{stage}`", cli.documented(r["documented_accuracy"]), f"{100 * r['mean']:.2f} ± {std}", cli.interval(r["ci95"]), diff, sig])
    cli.print_table(["stage", "documented", "mean ± std", "95% CI", "difference from the row above", "significant"], rows)
    for step in report["versus_mlp"]:
        print(f"{step['to']} vs {step['from']}: {100 * step['difference']:+.2f} points, 95% CI {cli.interval(step['ci95'], '+')}")
    print("\nevery seed, test accuracy (min, median, max):")
    for stage, r in report["stages"].items():
        values = r["test_accuracies"]
        print(f"  {stage}: {100 * min(values):.2f}, {100 * statistics.median(values):.2f}, {100 * max(values):.2f}")
    print_images_and_seeds(report)


def print_images_and_seeds(report: dict) -> None:
    """Each comparison's interval over seeds alone beside the one that resamples the test images too."""
    differences = list({(d["from"], d["to"]): d for d in report["steps"] + report["versus_mlp"]}.values())  # a step may be versus mlp too
    if not differences:
        return
    found = next((d["images_and_seeds"] for d in differences if d.get("images_and_seeds")), None)
    how = f"paired bootstrap, {found['resamples']} resamples, seed {found['rng_seed']}" if found else "per-image correctness not kept"
    print(f"\n95% intervals, seeds alone and seeds and test images resampled ({how}):")
    if found and (seeds := len(next(iter(report["stages"].values()))["seeds"])) < 10:
        print(f"  (with {cli.count(seeds, 'seed')} the resampling of seeds has no small-sample widening, so the second "
              "interval can be narrower than the first, and significant where it is not: run 10 seeds; docs/study.md)")
    for d in differences:
        both = d.get("images_and_seeds")
        sig = ("yes" if both["significant"] else "no") if both else "n/a"
        print(f"  {d['to']} - {d['from']}: {100 * d['difference']:+.2f}, seeds {cli.interval(d['ci95'], '+')}, "
              f"seeds and images {cli.interval(both and both['ci95'], '+')} (significant: {sig})")


def config(args, stage: str) -> TrainConfig:
    """What each seed of `stage` trains (mlp_only: no --hidden or --dropout given for a linear stage)."""
    return TrainConfig(stage, args.epochs, args.batch_size or TrainConfig.batch_size, args.lr or TrainConfig.lr,
                       hidden=args.hidden, dropout=args.dropout)


def main() -> None:
    parser = build_parser()
    args = parser.parse()
    try:
        cli.mlp_only(args, args.stages)
        logs = [dataclasses.replace(config(args, stage), seed=seed).run_name()
                for stage in args.stages for seed in range(args.seeds)]
        cli.check_logs(args.tensorboard, logs, [args.out])
    except UsageError as e:
        parser.error(str(e))
    from mnist_jax import study
    from mnist_jax.results import save_study

    data = cli.load_data(args)
    start = time.perf_counter()
    results = {}
    for stage in args.stages:
        bar = cli.Progress(args.epochs, f"{stage}, {cli.count(args.seeds, 'seed')}", "epoch")
        stage_config = config(args, stage)
        results[stage] = study.train_seeds(
            stage_config, data, list(range(args.seeds)), models_at_once=args.seeds_at_once,
            on_epoch=bar.epochs(args.epochs), progress=args.progress,
        )
        bar.close()
        for seed, history, accuracy in zip(results[stage].seeds, results[stage].history, results[stage].test_accuracies):
            seed_config = dataclasses.replace(stage_config, seed=seed)
            cli.write_tensorboard(args.tensorboard, seed_config.run_name(), seed_config, history, accuracy)
        if results[stage].models_at_once < args.seeds:
            print(f"{stage}: {args.seeds} seeds in chunks of {results[stage].models_at_once}", flush=True)
    report = save_study(results, data, args.out, cli.command(), time.perf_counter() - start, write=distributed.is_main())
    args.progress.clear()
    print(f"\n{cli.count(args.seeds, 'seed')}, {cli.count(args.epochs, 'epoch')}, {report['device']}, "
          f"{report['seconds']:.1f}s in all")
    print_report(report)
    print(f"wrote {args.out / RESULTS[0]} and {args.out / RESULTS[1]}")


if __name__ == "__main__":
    cli.run(main, several_processes=True)
