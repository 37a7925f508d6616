"""Redraw every figure from results.json and study_arrays.npz, with --sweep from sweep.json, with
--compare (and --benchmark) from compare.json, with --linearity from linearity.json (no training):
python scripts/make_assets.py --results runs/study/results.json --sweep runs/sweep/sweep.json"""

from mnist_jax import cli  # first: its signal handlers cover the imports after it

import json
import os
from pathlib import Path

import numpy as np

from mnist_jax.files import PARTIAL
from mnist_jax.errors import UsageError

FIGURES = ("training_curves.png", "comparison_chart.png", "evolution_diagram.png", "weight_templates.png",
           "confusion_matrices.png", "misclassified.png")
SWEEP_FIGURES = ("sweep_dropout.png", "sweep_learning_rates.png")
OTHER_FIGURES = ("framework_comparison.png", "width_sweep.png")


def file_in(name: str):
    """An argument type: a file, or the folder holding it as `name`."""
    return cli.checked(lambda text: text and (Path(text) / name if Path(text).is_dir() else Path(text)), bool,
                       f"{name} or its folder")


def build_parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(__doc__, out="runs/figures", holds="the figures", results=FIGURES + SWEEP_FIGURES + OTHER_FIGURES, trains=False)
    parser.add_argument("--results", type=file_in("results.json"), help="written by scripts/study.py, or its folder "
                        "(default: runs/study/results.json; with --sweep, none: only the sweep's figures)")
    parser.add_argument("--sweep", type=file_in("sweep.json"), help="sweep.json written by scripts/sweep.py, or its folder: "
                        "draw its figures too")
    parser.add_argument("--compare", type=file_in("compare.json"), help="compare.json written by scripts/compare.py, "
                        "or its folder: draw framework_comparison.png")
    parser.add_argument("--benchmark", type=file_in("benchmark.json"), help="with --compare, the JSON written by "
                        "scripts/benchmark.py: framework_comparison.png's timings from it, every loop it timed")
    parser.add_argument("--linearity", type=file_in("linearity.json"), help="linearity.json written by "
                        "scripts/linearity.py, or its folder: draw width_sweep.png")
    return parser


def load_json(*keys: str):
    """A loader of a JSON object holding `keys` (bounded: 64 MiB)."""
    def load(path: Path) -> dict:
        if path.stat().st_size > 2**26:
            raise ValueError(f"{path} is larger than 64 MiB")
        try:
            content = json.loads(path.read_text())
        except RecursionError:
            raise ValueError(f"{path} is nested too deep") from None
        if not isinstance(content, dict) or not set(keys) <= content.keys():
            raise ValueError(f"{path} is damaged: not a JSON object with {', '.join(keys)}")
        return content
    return load


def read(path: Path, option: str, script: str, load):
    """What `load` reads from `path`, given as `option`; `UsageError` if it cannot."""
    if not path.is_file():
        if reason := cli.broken_link(path):
            raise UsageError(f"argument {option}: {path} cannot be read: {reason}")
        raise UsageError(f"argument {option}: {path} not found; run {cli.script_command(script)} first")
    try:
        return load(path)
    except (ValueError, KeyError) as e:
        raise UsageError(f"argument {option}: {e}") from None


def main() -> None:
    args = build_parser().parse()
    from mnist_jax.results import load_study, load_sweep
    from mnist_jax.sweep import answers

    others = (args.compare, args.linearity)
    if args.benchmark is not None and args.compare is None:
        raise UsageError("argument --benchmark: only with --compare")
    if args.results is not None or (args.sweep is None and others == (None, None)):
        args.results = args.results or Path("runs/study/results.json")
        read(args.results.with_name("study_arrays.npz"), "--results", "study", Path.is_file)
        results, arrays = read(args.results, "--results", "study", load_study)
    if args.sweep is not None:
        sweep = read(args.sweep, "--sweep", "sweep", load_sweep)
        found = read(args.sweep, "--sweep", "sweep", lambda _: answers(sweep))
        if not {"dropout", "batchnorm", "linear", "controls"} & found.keys():
            raise UsageError(f"argument --sweep: nothing to draw: {args.sweep} has no grid of both stages of a figure "
                             "(mlp and mlp_dropout; mlp and mlp_bn; linear_mse and linear_ce; or a control with "
                             "linear_ce and mlp at several rates)")
    if args.compare is not None:
        compared = read(args.compare, "--compare", "compare", load_json("stages", "seeds", "epochs", "device"))
        if not all(isinstance(r, dict) and isinstance(r.get("stage"), str) for r in compared["stages"]):
            raise UsageError(f"argument --compare: {args.compare} is damaged: its stages are not records of named stages")
        timed = None if args.benchmark is None else read(args.benchmark, "--benchmark", "benchmark",
                                                         load_json("stages", "seeds", "epochs", "rounds", "device"))
    if args.linearity is not None:
        linear = read(args.linearity, "--linearity", "linearity",
                      load_json("width_sweep", "linear_lstsq", "linear_ce_converged", "seeds", "epochs", "device"))
    from mnist_jax import plots

    if args.compare is not None and timed is not None:
        try:
            loops = plots.benchmark_loops(compared, timed)
        except (TypeError, KeyError, AttributeError):
            raise UsageError(f"argument --benchmark: {args.benchmark} is damaged: no stages of timed loops") from None
        if not loops:
            raise UsageError(f"argument --benchmark: {args.benchmark} times no loop on every stage of {args.compare} "
                             f"({', '.join(r['stage'] for r in compared['stages'])}): give a benchmark of those stages")
    written = []  # each drawn beside its place, and moved there once all are drawn: a failure leaves none

    def draw(name, fn, *fn_args):
        written.append(name)  # (first: a stop signal is delivered as the figure's file is complete)
        try:
            fn(*fn_args, args.out / f"{PARTIAL}{name}")
        except OSError as e:  # (named by the figure meant, not by the file it is drawn to first)
            e.filename = str(args.out / name)
            raise

    try:
        if args.results is not None:
            draw("training_curves.png", plots.training_curves, results)
            draw("comparison_chart.png", plots.comparison_chart, results)
            draw("evolution_diagram.png", plots.evolution_diagram)
            about = plots.study_caption(results, one_seed=True)
            if any(k.endswith("_weights") for k in arrays):
                draw("weight_templates.png", lambda a, p: plots.weight_templates(a, p, about), arrays)
            if "misclassified_stages" in arrays:
                pair = [str(s) for s in arrays["misclassified_stages"]]
                draw("confusion_matrices.png", lambda a, p: plots.confusion_matrices(a, p, pair, about), arrays)
                draw("misclassified.png", lambda a, p: plots.misclassified(a, p, about), arrays)
        if args.sweep is not None and "dropout" in found:
            draw("sweep_dropout.png", plots.sweep_dropout, found["dropout"], sweep["grids"][0]["device"])
        if args.sweep is not None and {"batchnorm", "linear", "controls"} & found.keys():
            draw("sweep_learning_rates.png", plots.sweep_learning_rates, found, sweep["grids"][0]["device"])
        if args.compare is not None:
            draw("framework_comparison.png", lambda c, p: plots.framework_comparison(c, p, timed), compared)
        if args.linearity is not None:
            draw("width_sweep.png", plots.width_sweep, linear)
        for name in written:
            os.replace(args.out / f"{PARTIAL}{name}", args.out / name)
    finally:
        for name in written:
            (args.out / f"{PARTIAL}{name}").unlink(missing_ok=True)
    print(f"wrote {', '.join(written)} to {args.out}")
    if args.results is not None:
        cli.print_table(["stage", "val accuracy after epoch 1", "train accuracy after the last epoch"], [
            [f"`{stage}`", f"{np.mean([seed[0]['val_accuracy'] for seed in r['history']]):.2%}",
             f"{np.mean([seed[-1]['train_accuracy'] for seed in r['history']]):.2%}"] for stage, r in results["stages"].items()])


if __name__ == "__main__":
    cli.run(main)
