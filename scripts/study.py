"""Every stage over many seeds in one program per stage: python scripts/study.py --seeds 10"""

from mnist_jax import cli, distributed  # first: its signal handlers cover the imports after it

import dataclasses
import time

from mnist_jax.errors import UsageError
from mnist_jax.stages import TrainConfig, changed_settings

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
    """Every stage over its seeds, then every comparison paired by seed (each of the original's stages against
    the one above, each variant and control against `mlp`), its interval over seeds beside the one over
    seeds and test images."""
    rows = []
    for stage, r in report["stages"].items():
        std = f"{100 * r['std']:.2f}" if r["std"] is not None else "n/a"
        rows.append([f"`{stage}`", cli.documented(r["documented_accuracy"]), f"{100 * r['mean']:.2f} ± {std}",
                     cli.interval(r["ci95"]), f"{100 * r['min']:.2f}, {100 * r['median']:.2f}, {100 * r['max']:.2f}"])
    cli.print_table(["stage", "documented", "mean ± std", "95% CI", "min, median, max"], rows)
    if changed := changed_settings(report["stages"]):
        print(f"trained with {', '.join(changed)}: the documented accuracies are of the original's settings")
    differences = list({(d["from"], d["to"]): d for d in report["steps"] + report["versus_mlp"]}.values())  # a step may be versus mlp too
    if not differences:
        return
    found = next((d["images_and_seeds"] for d in differences if d.get("images_and_seeds")), None)
    how = f"paired bootstrap, {found['resamples']} resamples, seed {found['rng_seed']}" if found else "per-image correctness not kept"
    print(f"\nEach comparison, paired by seed, with 95% intervals over the seeds and over seeds and test images ({how}):")
    seeds = len(next(iter(report["stages"].values()))["seeds"])
    if found and seeds == 1:
        print("(with 1 seed the second interval resamples the test images alone)")
    elif found and seeds < 10:
        print(f"(with {seeds} seeds the resampling of seeds has no small-sample widening, so the second "
              "interval can be narrower than the first, and significant where it is not: run 10 seeds; docs/study.md)")
    print()

    def significant(d: dict | None) -> str:
        return ("yes" if d["significant"] else "no") if d and d["ci95"] else "n/a"

    cli.print_table(["comparison", "difference", "95% CI, seeds", "95% CI, seeds and test images", "significant"], [
        [f"`{d['to']}` − `{d['from']}`", f"{100 * d['difference']:+.2f}", cli.interval(d["ci95"], "+"),
         cli.interval(d.get("images_and_seeds") and d["images_and_seeds"]["ci95"], "+"),
         f"{significant(d)}; {significant(d.get('images_and_seeds'))}"] for d in differences])


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
    results, finished = {}, []
    for stage in args.stages:
        bar = cli.Progress(args.epochs, f"{stage}, {cli.count(args.seeds, 'seed')}", "epoch")
        stage_config = config(args, stage)
        results[stage] = study.train_seeds(
            stage_config, data, list(range(args.seeds)), models_at_once=args.seeds_at_once,
            on_epoch=bar.epochs(args.epochs), progress=args.progress,
        )
        bar.close()
        finished += [(dataclasses.replace(stage_config, seed=seed), history, accuracy) for seed, history, accuracy
                     in zip(results[stage].seeds, results[stage].history, results[stage].test_accuracies)]
        if results[stage].models_at_once < args.seeds:
            print(f"{stage}: {args.seeds} seeds in chunks of {results[stage].models_at_once}", flush=True)
    report = save_study(results, data, args.out, cli.command(), time.perf_counter() - start, write=distributed.is_main())
    args.progress.clear()
    cli.write_logs(args.tensorboard, finished, f"the results are saved in {args.out / RESULTS[0]}, and the logs before it written")
    print(f"\n{cli.count(args.seeds, 'seed')}, {cli.count(args.epochs, 'epoch')}, {report['device']}, "
          f"{report['seconds']:.1f}s in all")
    print_report(report)
    print(f"wrote {args.out / RESULTS[0]} and {args.out / RESULTS[1]}")


if __name__ == "__main__":
    cli.run(main, several_processes=True)
