"""The limits of linearity: exact least squares, converged softmax regression, MLP widths:
python scripts/linearity.py --seeds 3"""

import time

from mnist_jax import cli


RESULTS = ("linearity.json", "width_sweep.png")


def build_parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(__doc__, out="runs/linearity", results=RESULTS)
    parser.add_argument("--seeds", type=cli.positive_int, default=3, help="seeds per MLP width")
    parser.add_argument("--widths", type=cli.comma_separated(cli.positive_int), default="8,16,32,64,128,256,512,1024", help="comma-separated hidden widths")
    parser.add_argument("--epochs", type=cli.positive_int, default=5, help="epochs per MLP run")
    parser.add_argument("--max-steps", type=cli.positive_int, default=2000, help="most L-BFGS steps of the converged softmax regression")
    return parser


def main() -> None:
    args = build_parser().parse()
    import jax

    from mnist_jax import linearity, plots
    from mnist_jax.files import write_json
    from mnist_jax.train import device_description

    data = cli.load_data(args)
    start = time.perf_counter()
    linearity.check_widths_fit(data, args.widths, args.seeds, args.epochs)
    progress = cli.Progress(2 + len(args.widths), "linearity", "model")
    lstsq = linearity.linear_lstsq(data)
    progress.step("linear_lstsq")
    converged = linearity.linear_ce_converged(data, max_steps=args.max_steps)
    progress.step("linear_ce_converged")
    sweep = []
    for width in args.widths:
        sweep += linearity.width_sweep(data, [width], list(range(args.seeds)), args.epochs)
        progress.step(f"mlp hidden {width}")
    progress.close()
    print(f"linear_lstsq: test {lstsq['test_accuracy']:.2%} (train {lstsq['train_accuracy']:.2%}), {lstsq['seconds']:.1f}s")
    print(f"linear_ce_converged: test {converged['test_accuracy']:.2%} (train {converged['train_accuracy']:.2%}), "
          f"{converged['steps']} L-BFGS steps, gradient norm {converged['grad_norm']:.1e}, {converged['seconds']:.1f}s")
    for r in sweep:
        std = f"{100 * r['std']:.2f}" if r["std"] is not None else "n/a (one seed)"
        print(f"mlp hidden {r['hidden']:5d} ({r['parameters']:,} parameters): {100 * r['mean']:.2f} ± {std}")
    report = {
        "linear_lstsq": lstsq,
        "linear_ce_converged": converged,
        "width_sweep": sweep,
        "seeds": args.seeds,
        "epochs": args.epochs,
        "command": cli.command(),
        "device": device_description(),
        "jax_version": jax.__version__,
        "seconds": time.perf_counter() - start,
    }
    write_json(args.out / RESULTS[0], report)
    plots.width_sweep(report, args.out / RESULTS[1])
    print(f"{report['seconds']:.1f}s in all; wrote {args.out / RESULTS[0]} and {args.out / RESULTS[1]}")


if __name__ == "__main__":
    cli.run(main)
