"""Redraw every figure from results.json and study_arrays.npz, and with --sweep from sweep.json
(no training): python scripts/make_assets.py --results runs/study/results.json --sweep runs/sweep/sweep.json"""

import os
from pathlib import Path

import numpy as np

from mnist_jax import cli
from mnist_jax.files import PARTIAL
from mnist_jax.errors import ResultFileError
from mnist_jax.results import load_study, load_sweep
from mnist_jax.sweep import answers

FIGURES = ("training_curves.png", "comparison_chart.png", "evolution_diagram.png", "weight_templates.png",
           "confusion_matrices.png", "misclassified.png")
SWEEP_FIGURES = ("sweep_dropout.png", "sweep_learning_rates.png")


def build_parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__)
    parser.add_argument("--results", type=Path, default=Path("runs/study/results.json"), help="written by scripts/study.py")
    parser.add_argument("--sweep", type=Path, help="sweep.json written by scripts/sweep.py: draw its figures too")
    cli.add_output_arguments(parser, Path("runs/figures"), "the figures")
    return parser


def parse_args():
    parser = build_parser()
    args = parser.parse_args()
    arrays = args.results.with_name("study_arrays.npz")
    for path in (args.results, arrays):
        if not path.is_file():
            parser.error(f"argument --results: {path} not found; run scripts/study.py first")
    try:
        args.study = load_study(args.results)
    except ResultFileError as e:
        parser.error(f"argument --results: {e}")
    if args.sweep is not None:
        if not args.sweep.is_file():
            parser.error(f"argument --sweep: {args.sweep} not found; run scripts/sweep.py first")
        try:
            sweep = load_sweep(args.sweep)
            args.answers = answers(sweep)
        except (ValueError, KeyError) as e:  # a ResultFileError, or a question the sweep cannot answer
            parser.error(f"argument --sweep: {e}")
        args.sweep_device = sweep["grids"][0]["device"]
    cli.claim(parser, "--out", args.out)
    cli.refuse_existing(parser, args, *FIGURES, *(SWEEP_FIGURES if args.sweep else ()))
    return args


def main() -> None:
    args = parse_args()
    from mnist_jax import plots

    results, arrays = args.study
    written = []  # each drawn beside its place, and moved there once all are drawn: a failure leaves none

    def draw(name, fn, *fn_args):
        fn(*fn_args, args.out / f"{PARTIAL}{name}")
        written.append(name)

    try:
        draw("training_curves.png", plots.training_curves, results)
        draw("comparison_chart.png", plots.comparison_chart, results)
        draw("evolution_diagram.png", plots.evolution_diagram)
        if any(k.endswith("_weights") for k in arrays):
            draw("weight_templates.png", plots.weight_templates, arrays)
        if "misclassified_stages" in arrays:
            linear, mlp = (str(s) for s in arrays["misclassified_stages"])
            draw("confusion_matrices.png", lambda a, p: plots.confusion_matrices(a, p, [linear, mlp]), arrays)
            draw("misclassified.png", plots.misclassified, arrays)
        if args.sweep is not None and "dropout" in args.answers:
            draw("sweep_dropout.png", plots.sweep_dropout, args.answers["dropout"], args.sweep_device)
        if args.sweep is not None and {"batchnorm", "linear"} & args.answers.keys():
            draw("sweep_learning_rates.png", plots.sweep_learning_rates, args.answers, args.sweep_device)
        for name in written:
            os.replace(args.out / f"{PARTIAL}{name}", args.out / name)
    finally:
        for name in written:
            (args.out / f"{PARTIAL}{name}").unlink(missing_ok=True)
    print(f"wrote {', '.join(written)} to {args.out}")
    print("| stage | val accuracy after epoch 1 | train accuracy after the last epoch |\n|---|---|---|")
    for stage, r in results["stages"].items():
        first = np.mean([seed[0]["val_accuracy"] for seed in r["history"]])
        last = np.mean([seed[-1]["train_accuracy"] for seed in r["history"]])
        print(f"| `{stage}` | {first:.2%} | {last:.2%} |")


if __name__ == "__main__":
    cli.run(main)
