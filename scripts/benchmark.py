"""Speed of every stage, JAX against PyTorch and against the matmul ceiling:
python scripts/benchmark.py --stages all --epochs 3"""

import importlib.metadata
import statistics
import sys
from pathlib import Path

from mnist_jax import cli, files  # first: its signal handlers cover the imports after it

import jax
import measure
from mnist_jax.data import load_mnist
from mnist_jax.stages import STAGES
from mnist_jax.train import TrainConfig, device_description


def build_parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__)
    parser.add_argument("--stages", default="all", help=f"comma-separated stages or all ({', '.join(STAGES)})")
    parser.add_argument("--epochs", type=cli.positive_int, default=3, help="epochs per run; the first is left out of s/epoch")
    parser.add_argument("--seeds", type=cli.positive_int, default=1, help="seeds per stage; JAX trains them at once (vmap)")
    parser.add_argument(
        "--rounds", type=cli.positive_int, default=1,
        help="every stage is measured this many times, in turns (and cold/warm train.py runs are repeated); figures are medians over rounds",
    )
    parser.add_argument(
        "--studies", type=cli.comma_separated(cli.positive_int),
        help="also time study.py's training of every stage at each of these numbers of seeds, e.g. 10,100: "
        "the seeds walked through one at a time (lax.map) and side by side (vmap)",
    )
    parser.add_argument("--json", type=cli.output_file, default=Path("runs/benchmark.json"), help="write the figures here as JSON")
    parser.add_argument("--overwrite", action="store_true", help="replace the --json file if it exists")
    parser.add_argument("--no-torch", action="store_true", help="JAX only, even when PyTorch is installed")
    parser.add_argument("--no-end-to-end", action="store_true", help="skip the cold and warm train.py runs")
    parser.add_argument(
        "--loop-variants", metavar="STAGE", choices=STAGES,
        help="also time five ways of driving the training step on STAGE (scan, float32 images, (in, out) kernels, "
        "jit per batch, nnx.jit), its two largest matmuls alone, its shuffle (and jax.random.permutation's) and its validation pass",
    )
    parser.add_argument(
        "--standard-parts", action="store_true",
        help="also time each piece this project writes in place of a standard one against that piece, --rounds paired rounds",
    )
    parser.add_argument(
        "--profile", action="store_true",
        help="also trace a training pass (one seed) of every stage under jax.profiler: time in its matmuls (and their FLOP/s) and in its other ops",
    )
    cli.add_data_arguments(parser)
    return parser


def parse_args():
    parser = build_parser()
    args = cli.parse(parser)
    reason = cli.writable(args.json.parent)
    if reason:
        parser.error(f"--json: cannot write to {args.json} ({reason})")
    if args.json.exists() and not args.overwrite:
        parser.error(f"--json: {args.json} already exists; pass --overwrite to replace it")
    if (args.json.exists() or args.json.is_symlink()) and not files.is_json_with(args.json, "command", "device", "torch_loops"):
        parser.error(f"--json: {args.json} is not a benchmark's result and will not be replaced: move it or choose another --json")
    return args


def torch_importable() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def full_float32_matmuls(has_torch: bool) -> None:
    """The same float32 matmuls in both frameworks: no TF32 or bfloat16 passes (GPU, TPU)."""
    jax.config.update("jax_default_matmul_precision", "highest")
    if has_torch:
        import torch

        torch.set_float32_matmul_precision("highest")


TARGETS = {"speedup_vs_torch_compile": 2.0, "speedup_vs_nnx_jit": 3.0}  # JAX's steady epoch against each peer's


def print_table(report: dict) -> None:
    loops = report["torch_loops"]
    peers = [("nnx.jit", "nnx_jit")] * ("nnx_jit_epoch_seconds" in report["stages"][0])
    peers += [(f"PyTorch {loop}", f"torch_{loop}") for loop in loops]
    head = ["stage", "JAX compile s", "JAX s/epoch", "JAX samples/s", "ceiling GFLOP/s", "efficiency"]
    head += [f"{name} s/epoch" for name, _ in peers] + [f"speed-up vs {name.removeprefix('PyTorch ')}" for name, _ in peers]
    print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in report["stages"]:
        cells = [f"`{r['stage']}`", f"{r['jax_compile_seconds']:.2f}", f"{r['jax_epoch_seconds']:.3f}"]
        cells += [f"{r['jax_samples_per_second']:,.0f}", f"{r['ceiling_flops'] / 1e9:.1f}", f"{r['efficiency']:.2f}"]
        cells += [f"{r[f'{key}_epoch_seconds']:.3f}" for _, key in peers]
        cells += [f"{r[f'speedup_vs_{key}']:.1f}x" for _, key in peers]
        print("| " + " | ".join(cells) + " |")
    print(f"matmul ceiling: {report['ceiling_flops'] / 1e9:.1f} GFLOP/s (2048^3 float32 under XLA; median of every round)")
    if "compile" in loops:  # later rounds reuse the graphs the first compiled
        print("torch.compile's compiling (the first round's first epoch beyond a steady one): "
              + ", ".join(f"{r['stage']} {r['rounds']['torch_compile_warm_up_seconds'][0]:.1f}s" for r in report["stages"]))
    for key, target in TARGETS.items():
        if key in report["stages"][0]:
            met = [r["stage"] for r in report["stages"] if r[key] >= target]
            print(f"target {key} >= {target:g}: met by {len(met)} of {len(report['stages'])} stages"
                  + (f" ({', '.join(met)})" if 0 < len(met) < len(report["stages"]) else ""))


def print_studies(studies: list[dict]) -> None:
    print("\nstudy.py's training of many seeds (one program), seconds per epoch per model (and against the stage's single run):")
    print("| stage | seeds | side by side | compile s | s/epoch, all seeds | s/epoch per model | per model / single run |")
    print("|---|---|---|---|---|---|---|")
    for s in studies:
        way = ("1 (lax.map)" if s["width"] == 1 else f"{s['width']} (vmap)") + (", the default" if s["backend_default"] else "")
        print(f"| `{s['stage']}` | {s['seeds']} | {way} | {s['compile_seconds']:.2f} | {s['epoch_seconds']:.3f} "
              f"| {s['epoch_seconds_per_model']:.4f} | {s['per_model_over_single']:.2f} |")


def print_profiles(profiles: list[dict]) -> None:
    repeats = len(profiles[0]["passes"])
    print(f"\nwhere a training pass goes (jax.profiler, median of {repeats} traced passes; matmul GFLOP/s over the stage's ceiling):")
    head = ["stage", "pass s", "matmul ops s", "matmul GFLOP/s", "of the ceiling", "other ops s", "between ops s", "ops per step"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for p in profiles:
        print(f"| `{p['stage']}` | {p['pass_seconds']:.3f} | {p['matmul_seconds']:.3f} | {p['matmul_flops'] / 1e9:.1f} | "
              f"{p['matmul_efficiency']:.2f} | {p['other_seconds']:.3f} | {p['between_ops_seconds']:.3f} | {p['ops_per_step']:.0f} |")


def print_standard_parts(rows: list[dict]) -> None:
    rounds = len(rows[0]["rounds"]["ours"])
    print(f"\neach piece of this project against the standard one (medians of {rounds} paired rounds):")
    print("| piece | stage | ours s | standard s | ours / standard (quartiles) | saving, of the stage's training pass |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        ratios = [o / s for o, s in zip(r["rounds"]["ours"], r["rounds"]["standard"])]
        low, _, high = statistics.quantiles(ratios, n=4)
        print(f"| {r['piece']} | `{r['stage']}` | {r['ours_seconds']:.4f} | {r['standard_seconds']:.4f} "
              f"| {r['ratio']:.2f} ({low:.2f}-{high:.2f}) | {r['saving_of_pass']:+.1%} |")


def main() -> None:
    args = parse_args()
    data = load_mnist(args.source, args.data_dir)
    has_torch = not args.no_torch and torch_importable()
    if not has_torch:
        print("PyTorch not measured: " + ("--no-torch" if args.no_torch else 'torch cannot be imported (pip install -e ".[torch]")'))
    full_float32_matmuls(has_torch)
    jax.config.update("jax_enable_compilation_cache", False)  # compile times are real ones

    report = {
        "command": " ".join(["python", "scripts/benchmark.py", *sys.argv[1:]]),
        "device": device_description(),
        "cpu": measure.cpu_model(),
        "jax_version": jax.__version__,
        "torch_version": importlib.metadata.version("torch") if has_torch else None,
        "matmul_precision": "highest (full float32) in both frameworks",
        "epochs": args.epochs,
        "seeds": args.seeds,
        "rounds": args.rounds,
        "torch_loops": ["tensor", "original", "fused", "compile"] if has_torch else [],
    }
    print(f"device: {report['device']} | jax {report['jax_version']} | torch {report['torch_version']}", flush=True)
    configs = [TrainConfig(stage, epochs=args.epochs) for stage in args.stages]
    progress = cli.Progress(args.rounds, f"benchmark of {', '.join(args.stages)}", "round")
    report["stages"] = measure.benchmark_stages(
        configs, data, list(range(args.seeds)), report["torch_loops"], args.rounds, on_round=lambda _: progress.step()
    )
    progress.close()
    report["ceiling_flops"] = statistics.median(r["ceiling_flops"] for r in report["stages"])
    print_table(report)
    report["targets"] = {key: {"target": target, "met": [r["stage"] for r in report["stages"] if r.get(key, 0) >= target]}
                         for key, target in TARGETS.items() if key in report["stages"][0]}
    if args.studies:
        single = {r["stage"]: r["jax_epoch_seconds"] for r in report["stages"]}
        report["studies"] = [measure.time_study(config, data, n, single[config.stage], width)
                             for n in args.studies for config in configs for width in (1, None)]
        print_studies(report["studies"])
    if args.profile:
        report["profiles"] = [measure.profile_pass(config, data) for config in configs]
        for profile, row in zip(report["profiles"], report["stages"]):
            profile["matmul_efficiency"] = profile["matmul_flops"] / row["ceiling_flops"]
        print_profiles(report["profiles"])
    if args.loop_variants:
        report["loop_variants"] = {"stage": args.loop_variants, **measure.loop_variants(TrainConfig(args.loop_variants), data)}
        print(f"\nseconds per training pass of {args.loop_variants}, and the rest of its epoch:")
        for name, seconds in report["loop_variants"].items():
            if name != "stage":
                print(f"  {seconds:.3f}  {name}")
    if args.standard_parts:
        report["standard_parts"] = measure.standard_parts(data, args.rounds)
        print_standard_parts(report["standard_parts"])
    if not args.no_end_to_end:
        data_args = ["--source", args.source] + (["--data-dir", str(args.data_dir)] if args.data_dir else [])
        report["end_to_end"] = e2e = measure.end_to_end(["--stage", "mlp_bn", *data_args], args.rounds)
        print(f"\n{e2e['command']}: cold {e2e['cold_seconds']:.1f}s, warm {e2e['warm_seconds']:.1f}s "
              f"(warm/cold {e2e['warm_over_cold']:.2f}, median of {args.rounds}; {e2e['cache_entries']} programs cached)")
        for run in ("cold", "warm"):
            print(f"  {run}: JAX " + ", ".join(f"{phase} {s:.2f}s" for phase, s in e2e[f"{run}_jax_seconds"].items()))
    files.write_json(args.json, report)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    cli.run(main)
