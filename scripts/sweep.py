"""Hyperparameter grids, every point and seed trained together, one program per stage and width:
python scripts/sweep.py --stages mlp,mlp_dropout --dropout 0.1,0.2,0.5 --epochs 40 --seeds 10"""

import time
from pathlib import Path

from mnist_jax import cli, distributed
from mnist_jax.errors import ResultFileError, UsageError
from mnist_jax.stages import MAX_SEED, STAGES, TrainConfig, setting

RESULTS = ("sweep.json",)


def build_parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(__doc__, out="runs/sweep", results=RESULTS, resume=True, processes=True,
                                tensorboard=True)
    parser.add_stages()
    parser.add_argument("--lr", type=cli.comma_separated(cli.positive_float), help="comma-separated Adam learning rates (default: 1e-3)")
    parser.add_argument(
        "--dropout", type=cli.comma_separated(cli.dropout_rate),
        help="comma-separated dropout rates of the stages with dropout (default: the stage's own, 0.5)",
    )
    parser.add_argument("--hidden", type=cli.comma_separated(cli.positive_int), help="comma-separated widths of the MLP stages (default: 256)")
    parser.add_argument("--seeds", type=cli.positive_int, default=10, help="seeds of every grid point, from --first-seed on")
    parser.add_argument("--first-seed", type=cli.seed, default=0, help="the first of the seeds")
    parser.add_argument(
        "--chosen-on", type=Path, metavar="SWEEP_JSON",
        help="re-test another sweep's answers: print the questions it answers at the learning rates and epochs its "
             "validation chose, tested on this grid's seeds, which must be fresh (none of its own)",
    )
    parser.add_argument("--epochs", type=cli.positive_int, default=5, help="epochs per model; every shorter length is in its history")
    parser.add_argument("--batch-size", type=cli.positive_int, default=TrainConfig.batch_size, help="examples per Adam step")
    parser.add_argument(
        "--models-at-once", type=cli.positive_int,
        help="train at most this many models in one program (default: as many as fit in memory; the rest in further chunks)",
    )
    parser.add_argument("--add", action="store_true", help="add this grid to the sweep.json already in --out")
    return parser


def check_add(args) -> None:
    """--add extends a sweep.json that is there and whole, with a grid none of its grids holds whole already."""
    from mnist_jax.results import load_sweep
    from mnist_jax.sweep import MODEL_KEYS, grid_model, grid_points

    path = args.out / RESULTS[0]
    if not path.is_file():
        raise UsageError(f"--add: {path} not found; run without --add first")
    try:
        saved = load_sweep(path)
    except ResultFileError as e:
        raise UsageError(f"--add: {e}") from None
    if args.resume:  # (a resumed --add that wrote its grid before it stopped finds it there: `results.save_grid`)
        return
    models = {tuple(grid_model(stage, p, hidden).values()) for stage in args.stages for hidden in args.hidden or [None]
              for p in grid_points(stage, args.lr, args.dropout, args.seeds, args.first_seed)}
    for i, grid in enumerate(saved["grids"]):
        held = {tuple(r[k] for k in MODEL_KEYS) for r in saved["rows"] if r["grid"] == i}
        if (grid["epochs"], grid.get("batch_size")) == (args.epochs, args.batch_size) and models <= held:
            raise UsageError(f"--add: grid {i} of {path} ({grid['command']}) holds every model of this grid, trained as "
                             "this one would be: nothing to add")


def check_chosen_on(args) -> dict | None:
    """The sweep --chosen-on names (or its folder), whole, with answers to re-test, and none of the seeds
    that the answers printed will read: this grid's, and with --add those of the grids it joins."""
    from mnist_jax import sweep
    from mnist_jax.results import load_sweep

    if args.first_seed + args.seeds - 1 > MAX_SEED:
        raise UsageError(f"--first-seed {args.first_seed} with --seeds {args.seeds} goes past the last seed, {MAX_SEED}")
    if args.chosen_on is None:
        return None
    if args.chosen_on.is_dir():
        args.chosen_on /= RESULTS[0]
    if not args.chosen_on.is_file():
        raise UsageError(f"--chosen-on: {args.chosen_on} not found")
    try:
        chosen_on = load_sweep(args.chosen_on)
    except ResultFileError as e:
        raise UsageError(f"--chosen-on: {e}") from None
    if not (answered := sweep.answers(chosen_on)):
        raise UsageError(f"--chosen-on: {args.chosen_on} answers none of the questions, so it chose nothing to re-test")
    used = sorted({r["seed"] for r in chosen_on["rows"]})
    ours = set(range(args.first_seed, args.first_seed + args.seeds))
    if args.add and (args.out / RESULTS[0]).is_file():  # the questions read the grids already there too
        ours |= {r["seed"] for r in load_sweep(args.out / RESULTS[0])["rows"]}
    if shared := sorted(ours & set(used)):
        where = "this grid or the sweep it adds to" if args.add else "this grid"
        has = f"which {where} has" if shared == used else f"of which {where} has {seeds(shared)}"
        raise UsageError(f"--chosen-on: {args.chosen_on} chose on seeds {seeds(used)}, {has}; "
                         f"fresh seeds start past them, --first-seed {used[-1] + 1}")
    print(f"re-testing on fresh seeds what {args.chosen_on} chose: {', '.join(answered)}")
    return chosen_on


def seeds(sorted_seeds: list[int]) -> str:
    """'0 to 3', or '0, 1, 5, 6' where some are missing between them, or '3'."""
    first, last = sorted_seeds[0], sorted_seeds[-1]
    runs = len(sorted_seeds) > 2 and sorted_seeds == list(range(first, last + 1))
    return f"{first} to {last}" if runs else ", ".join(map(str, sorted_seeds))


def grid_config(args, stage: str, lr: float, seed: int, hidden: int | None, dropout: float) -> TrainConfig:
    """A grid model as `train.py` would train it alone."""
    return TrainConfig(stage, args.epochs, args.batch_size, lr, seed, hidden, dropout if STAGES[stage].is_mlp else None)


def pct(summary: dict) -> str:
    return f"{100 * summary['mean']:.2f} {cli.interval(summary['ci95'])}"


def diff(d: dict | None) -> str:
    return f"{100 * d['difference']:+.2f} {cli.interval(d['ci95'], '+')}" if d else "n/a"


def width(answer: dict) -> str:
    """The MLPs' width a question was answered at, if not their own."""
    return f", hidden {answer['hidden']}" if answer.get("hidden") not in (None, STAGES["mlp"].hidden) else ""


def print_grid(rows: list[dict], epochs: int) -> None:
    """Each point of the grid: validation and test accuracy after the last epoch in %, mean and 95% interval over its seeds."""
    from mnist_jax.results import summary

    points = {}
    for row in rows:
        points.setdefault((row["stage"], row["hidden"], row["lr"], row["dropout"]), []).append(row)
    print()
    cli.print_table(["stage", "hidden", "lr", "dropout", "seeds", f"val accuracy after epoch {epochs}", "test accuracy"], [
        [f"`{stage}`", hidden or "—", setting(lr), setting(dropout), len(models),
         pct(summary([m["history"][-1]["val_accuracy"] for m in models])), pct(summary([m["test_accuracy"] for m in models]))]
        for (stage, hidden, lr, dropout), models in points.items()])


def print_answers(answers: dict) -> None:
    """The four questions' tables: test accuracy in %, 95% intervals over seeds, paired
    differences; learning rates and epochs chosen on validation."""
    if "dropout" in answers:
        q = answers["dropout"]
        epochs = sorted({e for e in (1, 5, 10, 20, 30, q["epochs"]) if e <= q["epochs"]})
        print(f"\nDropout against `mlp` at lr {q['lr']:g}{width(q)} ({cli.count(q['seeds'], 'seed')}; "
              "test accuracy after each epoch, difference paired by seed):\n")
        rows = [["`mlp`", *(pct(q["mlp"]["test"][e - 1]) for e in epochs), q["mlp"]["best_val_epoch"], pct(q["mlp"]["test_at_best_val_epoch"])]]
        for rate, r in q["rates"].items():
            rows.append([f"dropout {rate}", *(pct(r["test"][e - 1]) for e in epochs), r["best_val_epoch"], pct(r["test_at_best_val_epoch"])])
            rows.append(["− `mlp`", *(diff(r["difference"][e - 1]) for e in epochs), f"significantly better first after epoch "
                         f"{r['first_better_epoch'] or '—'}, from epoch {r['better_from_epoch'] or '—'} on", diff(r["difference_at_best_val_epochs"])])
        cli.print_table(["model", *(f"epoch {e}" for e in epochs), "best val epoch", "test there"], rows)
    for key, (before, after) in (("batchnorm", ("mlp", "mlp_bn")), ("linear", ("linear_mse", "linear_ce"))):
        if key not in answers:
            continue
        comparisons = [answers[key]] if key == "batchnorm" else list(answers[key]["at_epochs"].values())
        print(f"\n`{after}` − `{before}`{width(answers[key])}, each at its best learning rate (chosen on validation), on test:\n")
        rows = []
        for c in comparisons:
            lr = {s: c["choice"][s]["lr"] for s in (before, after)}
            test = {s: c["choice"][s]["by_lr"][setting(lr[s])]["test"] for s in (before, after)}
            rows.append([c["epoch"], setting(lr[before]), setting(lr[after]), pct(test[before]), pct(test[after]),
                         diff(c["at_best_lr"]), diff(c["at_reference_lr"])])
        if key == "linear":
            best = answers[key]["best_lr_and_epoch"]
            rows.append(["best (lr, epoch)", f"{setting(best[before]['lr'])}, {best[before]['epoch']}",
                         f"{setting(best[after]['lr'])}, {best[after]['epoch']}",
                         "", "", diff(answers[key]["at_best_lr_and_epoch"]), ""])
        cli.print_table(["epochs", f"best lr `{before}`", f"best lr `{after}`", f"`{before}` test", f"`{after}` test", "difference", "at lr 1e-3"], rows)
    if "controls" in answers:
        q = answers["controls"]
        print(f"\nThe controls, each at its own best learning rate after {cli.count(q['epoch'], 'epoch')} "
              f"(chosen on validation; {cli.count(q['seeds'], 'seed')}), on test, with differences paired by seed:\n")
        cli.print_table(["stage", "best lr", "val accuracy", "test accuracy", "− `linear_ce`", "− `mlp`"], [
            [f"`{stage}`", setting(c["lr"]), pct(c["by_lr"][setting(c["lr"])]["val"]), pct(c["by_lr"][setting(c["lr"])]["test"]),
             *(diff(q["versus"][stage][base]) if stage in q["versus"] else "—" for base in ("linear_ce", "mlp"))]
            for stage, c in q["choice"].items()])
    for question, why in answers.get("not_retested", {}).items():
        print(f"\n{question}: not re-tested here, {why}")


def main() -> None:
    args = build_parser().parse()
    if args.add and args.overwrite:  # (every process: each refuses alike)
        raise UsageError("--add keeps the sweep.json in --out and adds to it, --overwrite replaces it: give one of them")
    cli.mlp_only(args, args.stages, names=("hidden",))  # (--dropout values leave a linear stage's grid as it is)
    if args.dropout is not None and not any(STAGES[stage].dropout for stage in args.stages):
        raise UsageError(f"--dropout sets the rates of the stages with dropout, and none of {', '.join(args.stages)} has "
                         "dropout: add mlp_dropout to --stages")
    if args.add and distributed.is_main():
        check_add(args)
    chosen_on = check_chosen_on(args)
    from mnist_jax import results, sweep

    cli.check_logs(args.tensorboard, [grid_config(args, stage, p.lr, p.seed, hidden, p.dropout).run_name()
                                      for stage in args.stages for hidden in args.hidden or [None]
                                      for p in sweep.grid_points(stage, args.lr, args.dropout, args.seeds, args.first_seed)], [args.out])

    data = cli.load_data(args)
    progress = {}

    def on_stage(name: str, models: int):
        progress["bar"] = cli.Progress(args.epochs, f"{name}, {cli.count(models, 'model')}", "epoch")
        return progress["bar"].epochs(args.epochs)

    start = time.perf_counter()
    grid = sweep.run_grid(
        args.stages, data, lrs=args.lr, dropouts=args.dropout, hiddens=args.hidden or [None], seeds=args.seeds, first_seed=args.first_seed,
        epochs=args.epochs, batch_size=args.batch_size, models_at_once=args.models_at_once, on_stage=on_stage,
        progress=args.progress,
    )
    path = args.out / RESULTS[0]
    saved = results.save_grid(grid, path, cli.command(), time.perf_counter() - start, args.add, args.progress.run_id, write=distributed.is_main())
    args.progress.clear()
    cli.write_logs(args.tensorboard, [(grid_config(args, r["stage"], r["lr"], r["seed"], r["hidden"], r["dropout"]), r["history"],
                                       r["test_accuracy"]) for r in grid["rows"]], f"the results are saved in {path}, and the logs before it written")
    print(f"\n{cli.count(len(grid['rows']), 'model')}, {cli.count(args.epochs, 'epoch')}, {grid['device']}: "
          f"compiling {grid['compile_seconds']:.1f}s, "
          f"training {grid['train_seconds']:.1f}s")
    for name, size in grid["models_at_once"].items():
        print(f"{name}: {cli.count(size, 'model')} at once")
    print_grid(grid["rows"], args.epochs)
    if chosen_on is None:
        print_answers(sweep.answers(saved))
    else:
        seeds = sorted({r["seed"] for r in saved["rows"]})
        span = f"{seeds[0]} to {seeds[-1]}" if seeds == list(range(seeds[0], seeds[-1] + 1)) else ", ".join(map(str, seeds))
        print(f"\nRe-tested on seeds {span} (of this sweep's grids), at the learning rates and epochs chosen on the "
              f"validation of {args.chosen_on}:")
        print_answers(sweep.answers(saved, chosen_on))
    print(f"wrote {path}")


if __name__ == "__main__":
    cli.run(main, several_processes=True)
