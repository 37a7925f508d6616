"""JAX and PyTorch side by side: python scripts/compare.py --stages all --seeds 3"""

import time

from mnist_jax import cli
from mnist_jax.errors import UsageError
from mnist_jax.files import write_json
from mnist_jax.stages import STAGES

RESULTS = ("compare.json", "framework_comparison.png")


def build_parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(__doc__, out="runs/compare", results=RESULTS)
    parser.add_stages()
    parser.add_argument("--seeds", type=cli.positive_int, default=3, help="seeds 0..N-1 per stage and framework")
    parser.add_argument("--epochs", type=cli.positive_int, default=5, help="epochs per run")
    parser.add_argument(
        "--torch-loop", choices=["original", "tensor", "compile", "both", "all"], default="both",
        help="PyTorch loop style: original (Dataset + DataLoader), tensor (sliced tensors), compile (the tensor loop "
        "under torch.compile); both: original and tensor; all: the three",
    )
    parser.add_argument(
        "--replay-original", action="store_true",
        help="replay the original's seed-42 run (split, init, batch order) in both frameworks, for each stage "
        "without dropout (each framework draws its dropout masks from its own generator)",
    )
    parser.add_argument(
        "--torch-threads", type=cli.cpu_threads, help="PyTorch's intra-op threads (default: its own choice)"
    )
    return parser


def pm(summary: dict) -> str:
    std = summary["std_accuracy"]
    return f"{100 * summary['mean_accuracy']:.2f} ± {f'{100 * std:.2f}' if std is not None else 'n/a'}"


def print_table(results: list[dict], loops: list[str]) -> None:
    head = ["stage", "documented", "JAX"] + [f"PyTorch {loop}" for loop in loops] + ["JAX s/epoch"]
    head += [f"PyTorch {loop} s/epoch" for loop in loops] + [f"speed-up vs {loop}" for loop in loops]
    rows = []
    for r in results:
        jax_time = r["jax"]["seconds_per_epoch"]
        cells = [f"`{r['stage']}`", cli.documented(r["documented_accuracy"]), pm(r["jax"])]
        cells += [pm(r[f"torch_{loop}"]) for loop in loops] + [f"{jax_time:.3f}"]
        cells += [f"{r[f'torch_{loop}']['seconds_per_epoch']:.3f}" for loop in loops]
        rows.append(cells + [f"{r[f'torch_{loop}']['seconds_per_epoch'] / jax_time:.1f}x" for loop in loops])
    cli.print_table(head, rows)
    compile_s = ", ".join(f"{r['stage']} {r['jax']['compile_seconds']:.2f}s" for r in results)
    print(f"JAX compile time (once per run, not in s/epoch): {compile_s}")
    if "compile" in loops:
        compile_s = ", ".join(f"{r['stage']} {r['torch_compile']['compile_seconds']:.2f}s" for r in results)
        print(f"torch.compile's first epoch beyond a steady one (compiling, not in s/epoch): {compile_s}")


def print_replays(replays: list[dict], skipped: list[str]) -> None:
    print("\nReplay of the original's seed-42 run (same split, initial weights, batch order):")
    cli.print_table(["stage", "documented", "PyTorch replay", "JAX replay", "JAX - PyTorch"], [
        [f"`{r['stage']}`", cli.documented(r["documented_accuracy"]), f"{100 * r['torch_replay_accuracy']:.2f}",
         f"{100 * r['jax_replay_accuracy']:.2f}", f"{round(100 * (r['jax_replay_accuracy'] - r['torch_replay_accuracy']), 2) + 0.0:+.2f}"]
        for r in replays])
    if skipped:
        print(f"not replayed: {', '.join(skipped)} (each framework draws its dropout masks from its own generator)")


def main() -> None:
    args = build_parser().parse()
    try:
        import torch
    except ImportError:
        raise UsageError('PyTorch is not installed: pip install -e ".[torch]"') from None

    from mnist_jax import comparison, plots
    from mnist_jax.train import device_description

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    data = cli.load_data(args)
    loops = {"both": ["original", "tensor"], "all": ["original", "tensor", "compile"]}.get(args.torch_loop, [args.torch_loop])
    device = device_description()
    print(f"device: {device}, PyTorch threads: {torch.get_num_threads()}", flush=True)
    start = time.perf_counter()
    replayed = [stage for stage in args.stages if args.replay_original and not STAGES[stage].dropout]
    progress = cli.Progress(len(args.stages) * args.seeds * (1 + len(loops)) + len(replayed), "compare", "run")
    results = [
        comparison.compare_stage(stage, data, list(range(args.seeds)), loops, args.epochs, progress=progress.step)
        for stage in args.stages
    ]
    replays = []
    for stage in replayed:
        replays.append(comparison.replay_original(stage, data, args.epochs))
        progress.step(f"{stage} replay of the original")
    progress.close()
    print_table(results, loops)
    report = {"command": cli.command(), "device": device, "seeds": args.seeds,
              "epochs": args.epochs, "seconds": time.perf_counter() - start, "stages": results}
    if args.replay_original:
        report["replay"] = replays
        print_replays(replays, [stage for stage in args.stages if stage not in replayed])
    write_json(args.out / RESULTS[0], report)
    plots.framework_comparison(report, args.out / RESULTS[1])
    print(f"wrote {args.out / RESULTS[0]} and {args.out / RESULTS[1]}")


if __name__ == "__main__":
    cli.run(main)
