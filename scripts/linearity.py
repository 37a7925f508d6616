"""The limits of linearity: exact least squares, converged softmax regression, MLP widths.
python scripts/linearity.py --seeds 3 --out assets"""

import sys
import time
from pathlib import Path

from mnist_jax import cli
from mnist_jax.data import load_mnist


def parse_args():
    parser = cli.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=cli.positive_int, default=3, help="seeds per MLP width")
    parser.add_argument("--widths", default="8,16,32,64,128,256,512,1024", help="comma-separated hidden widths")
    parser.add_argument("--epochs", type=cli.positive_int, default=5, help="epochs per MLP run")
    parser.add_argument("--out", type=cli.output_folder, default=Path("assets"), help="folder for linearity.json and width_sweep.png")
    cli.add_data_arguments(parser)
    cli.add_cache_arguments(parser)
    args = parser.parse_args()
    try:
        args.widths = [cli.positive_int(w) for w in args.widths.split(",")]
    except Exception:
        parser.error(f"argument --widths: expected comma-separated positive integers, got {args.widths!r}")
    return args


def main() -> None:
    args = parse_args()
    cli.use_compile_cache(args)
    import jax

    from mnist_jax import linearity, plots
    from mnist_jax.files import write_json
    from mnist_jax.train import device_description

    data = load_mnist(args.source, args.data_dir)
    start = time.perf_counter()
    lstsq = linearity.linear_lstsq(data)
    print(f"linear_lstsq: test {lstsq['test_accuracy']:.2%} (train {lstsq['train_accuracy']:.2%}), {lstsq['seconds']:.1f}s", flush=True)
    converged = linearity.linear_ce_converged(data)
    print(f"linear_ce_converged: test {converged['test_accuracy']:.2%} (train {converged['train_accuracy']:.2%}), "
          f"{converged['steps']} L-BFGS steps, gradient norm {converged['grad_norm']:.1e}, {converged['seconds']:.1f}s", flush=True)
    sweep = []
    for width in args.widths:
        sweep += linearity.width_sweep(data, [width], list(range(args.seeds)), args.epochs)
        r = sweep[-1]
        print(f"mlp hidden {width:5d} ({r['parameters']:,} parameters): {100 * r['mean']:.2f} ± {100 * r['std']:.2f}", flush=True)
    report = {
        "linear_lstsq": lstsq,
        "linear_ce_converged": converged,
        "width_sweep": sweep,
        "seeds": args.seeds,
        "epochs": args.epochs,
        "command": " ".join(["python", "scripts/linearity.py", *sys.argv[1:]]),
        "device": device_description(),
        "jax_version": jax.__version__,
        "seconds": time.perf_counter() - start,
    }
    write_json(args.out / "linearity.json", report)
    plots.width_sweep(report, args.out / "width_sweep.png")
    print(f"{report['seconds']:.1f}s in all; wrote {args.out / 'linearity.json'} and {args.out / 'width_sweep.png'}")


if __name__ == "__main__":
    cli.run(main)
