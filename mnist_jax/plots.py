"""Figures, drawn from measured results only."""

from __future__ import annotations

import os
from collections import Counter

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import FancyBboxPatch
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter, NullLocator

from mnist_jax.files import FIGURE_MARK, atomic_write
from mnist_jax.stages import STAGES, Stage, changed_settings, count, setting


def save_figure(fig, path: str | os.PathLike, title: str = "") -> None:
    """Give `fig` its overall `title` (if any), write it to `path` and close it."""
    if title:
        fig.suptitle(title)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", metadata=FIGURE_MARK)  # (`--overwrite` replaces a figure so marked alone)
    plt.close(fig)


def finish(fig, path: str | os.PathLike | None, title: str = ""):
    """`fig` saved to `path` and closed (`save_figure`), or, with no path, titled and returned
    open, for a caller (a test) to inspect. Every figure function ends here and returns `fig`."""
    if path is None:
        if title:
            fig.suptitle(title)
    else:
        save_figure(fig, path, title)
    return fig


def study_caption(results: dict, one_seed: bool = False) -> str:
    """`results.json`'s seeds, epochs, settings other than the original's and device in words; `one_seed`: the first
    seed's alone, the one `study_arrays.npz` holds."""
    first = next(iter(results["stages"].values()))
    seeds, epochs = first["seeds"], len(first["history"][0])
    settings = _changed(results)
    if one_seed:
        return f"seed {seeds[0]}, {count(epochs, 'epoch')}, {settings}{results['device']}"
    return f"{count(len(seeds), 'seed')}, {count(epochs, 'epoch')}, {_span(seeds)}, {settings}{results['device']}"


def _changed(results: dict) -> str:
    """'hidden 8, dropout 0.1, ': the study's settings other than the original's, to go before the device."""
    return "".join(f"{words}, " for words in changed_settings(results["stages"]))


def _span(seeds) -> str:
    seeds = list(seeds)
    if seeds == list(range(seeds[0], seeds[0] + len(seeds))) and len(seeds) > 1:
        return f"seeds {seeds[0]}-{seeds[-1]}"
    return "seed" + ("s " if len(seeds) > 1 else " ") + ", ".join(map(str, seeds))


def _integer_epochs(ax, last: int) -> None:
    """Whole-number epoch ticks, epoch 1 among them, the first and last epoch inside the axis."""
    ax.set_xticks([1, *range(5, last + 1, 5)] if last > 10 else range(1, last + 1))
    ax.set_xlim(0.5, last + 0.5)


def _plain_log_ticks(ax) -> None:
    """A log y axis ticked at 1, 2, 3, 5 x 10^k, labelled as plain numbers (0.2, not 2 x 10^-1)."""
    ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 3, 5)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.3g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


STAGE_COLOURS = {stage: f"C{i}" for i, stage in enumerate(STAGES)}  # one colour per stage in every figure
LOOP_COLOURS = {"jax": "C0", "torch_original": "C1", "torch_tensor": "C2", "nnx_jit": "C4", "torch_fused": "C5",
                "torch_compile": "C6"}
BENCHMARK_LOOPS = {"jax": "JAX (lax.scan epoch)", "nnx_jit": "Flax nnx.jit step", "torch_tensor": "PyTorch tensor loop",
                   "torch_original": "PyTorch DataLoader (original)", "torch_fused": "PyTorch, fused Adam",
                   "torch_compile": "PyTorch, torch.compile"}


def benchmark_loops(report: dict, benchmark: dict) -> list[str]:
    """The loops of BENCHMARK_LOOPS that `benchmark` timed on every stage of `report` (compare.json's)."""
    rows = {r["stage"]: r for r in benchmark["stages"]}
    return [k for k in BENCHMARK_LOOPS if all(f"{k}_epoch_seconds" in rows.get(r["stage"], {}) for r in report["stages"])]


def framework_comparison(report: dict, path: str | os.PathLike | None, benchmark: dict | None = None):
    """Test accuracy (mean ± std over seeds; no bar for one seed) per stage and framework, from
    `compare.json`; seconds per epoch as points on a log axis, from `benchmark` (the benchmark's
    JSON: every loop it timed, fused Adam and torch.compile too) where given, else `compare.json`'s."""
    results = report["stages"]
    stages = [r["stage"] for r in results]
    frameworks = [k for k in results[0] if k == "jax" or k.startswith("torch_")]
    fig, (acc_ax, time_ax) = plt.subplots(1, 2, figsize=(16, 4.8), layout="constrained")
    width = 0.6 / len(frameworks)
    for i, name in enumerate(frameworks):
        xs = [s + (i - (len(frameworks) - 1) / 2) * width for s in range(len(stages))]
        label = "JAX" if name == "jax" else f"PyTorch ({name.removeprefix('torch_')} loop)"
        acc_ax.errorbar(xs, [100 * r[name]["mean_accuracy"] for r in results],
                        yerr=[100 * (r[name]["std_accuracy"] or 0) for r in results], fmt="o", capsize=3, label=label,
                        color=LOOP_COLOURS.get(name))
    documented = [(i, 100 * r["documented_accuracy"]) for i, r in enumerate(results) if r["documented_accuracy"] is not None]
    if documented:  # a control has none
        acc_ax.scatter(*zip(*documented), marker="_", s=400, color="black", label="documented (original, seed 42)")
    acc_ax.set(ylabel="test accuracy (%)",
               title=f"accuracy: mean ± std over {count(report['seeds'], 'seed')}, {count(report['epochs'], 'epoch')}")
    if benchmark is not None:
        rows = {r["stage"]: r for r in benchmark["stages"]}
        times = {k: [rows[s][f"{k}_epoch_seconds"] for s in stages] for k in benchmark_loops(report, benchmark)}
        labels = BENCHMARK_LOOPS
        cpu = benchmark.get("cpu") or "?"  # a dict (model, kind, ...); a name alone in older benchmarks
        timed = (f"benchmark's {count(benchmark['seeds'], 'seed')}, {count(benchmark['epochs'], 'epoch')}, "
                 f"median of {benchmark['rounds']} rounds, {cpu['kind'] if isinstance(cpu, dict) else cpu}")
    else:
        times = {k: [r[k]["seconds_per_epoch"] for r in results] for k in frameworks}
        labels = {k: "JAX" if k == "jax" else f"PyTorch ({k.removeprefix('torch_')} loop)" for k in frameworks}
        timed = f"the same {count(report['seeds'], 'seed')}"
    markers = "os^vDP"
    for i, (name, values) in enumerate(times.items()):
        time_ax.plot(range(len(stages)), values, marker=markers[i % len(markers)], ls=":", lw=0.8,
                     color=LOOP_COLOURS.get(name, f"C{i + 7}"), label=labels[name])
    time_ax.set(ylabel="seconds per epoch (steady state, log scale)", yscale="log", title=f"time per epoch ({timed})")
    every = [v for values in times.values() for v in values]
    time_ax.set_ylim(min(every) / 1.6, max(every) * 1.6)
    _plain_log_ticks(time_ax)
    for ax in (acc_ax, time_ax):
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
    for ax in (acc_ax, time_ax):
        ax.set_xticks(range(len(stages)), stages, rotation=20)
        ax.set_xlim(-0.5, len(stages) - 0.5)
    return finish(fig, path, f"JAX vs PyTorch on {report['device']}")


def _pct(values) -> np.ndarray:
    return 100 * np.asarray(values, dtype=float)


def _ci_pct(summaries: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """The ends of each summary's 95% interval in %; NaN, which is not drawn, where a
    summary has none (one seed)."""
    ends = np.array([s["ci95"] or (np.nan, np.nan) for s in summaries], dtype=float).reshape(-1, 2)
    return 100 * ends[:, 0], 100 * ends[:, 1]


def training_curves(results: dict, path: str | os.PathLike | None):
    """Train and validation loss and accuracy per epoch: mean over seeds, band = min..max. The
    two losses do not compare (softmax-MSE is a squared error on probabilities, cross-entropy a
    log-likelihood), so softmax-MSE has its own row of panels, the cross-entropy stages the other."""
    fig, axes = plt.subplots(3, 2, figsize=(12, 11), sharex=True, layout="constrained")
    mse_row, ce_row, acc_row = axes
    last = 1
    for stage, r in results["stages"].items():
        epochs = [row["epoch"] for row in r["history"][0]]
        last = max(last, epochs[-1])
        loss_row = mse_row if STAGES[stage].loss_name == "softmax_mse" else ce_row
        for ax, key in zip((*loss_row, *acc_row), ("train_loss", "val_loss", "train_accuracy", "val_accuracy")):
            values = np.array([[row[key] for row in seed] for seed in r["history"]])
            if "accuracy" in key:
                values = _pct(values)
            ax.plot(epochs, values.mean(0), marker="o", ms=3, color=STAGE_COLOURS[stage], label=stage,
                    ls="--" if STAGES[stage].is_control else "-")
            ax.fill_between(epochs, values.min(0), values.max(0), color=STAGE_COLOURS[stage], alpha=0.2)
    for row, loss in ((mse_row, "softmax-MSE loss"), (ce_row, "cross-entropy loss (log scale)")):
        for ax, split in zip(row, ("train", "validation")):
            ax.set(title=f"{split} {loss}", yscale="log" if row is ce_row else "linear")
            if not ax.lines:
                ax.text(0.5, 0.5, "no stage with this loss", ha="center", va="center", transform=ax.transAxes)
    for ax, split in zip(acc_row, ("train", "validation")):
        ax.set(title=f"{split} accuracy (%)", xlabel="epoch")
    for ax in axes.flat:
        _integer_epochs(ax, last)
    for ax in ce_row:  # cross-entropy spans a decade: log
        _plain_log_ticks(ax)
    handles, labels = acc_row[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), frameon=False)
    return finish(fig, path, f"training curves: mean over {study_caption(results)}; band from min to max")


def comparison_chart(results: dict, path: str | os.PathLike | None):
    """Test accuracy per stage: mean with 95% interval, each seed, and the documented figure."""
    stages = list(results["stages"])
    fig, ax = plt.subplots(figsize=(11, 4.8))
    for i, stage in enumerate(stages):
        r = results["stages"][stage]
        lo, hi = _ci_pct([r])
        ax.errorbar([i], [100 * r["mean"]], yerr=[100 * r["mean"] - lo, hi - 100 * r["mean"]],
                    fmt="o", color="C0", capsize=5, label="this project: mean, 95% CI" if i == 0 else None)
        ax.scatter([i + 0.12] * len(r["test_accuracies"]), _pct(r["test_accuracies"]), s=8, color="C0",
                   alpha=0.4, label="one seed" if i == 0 else None)
        if r["documented_accuracy"] is not None:  # a control has none
            ax.scatter([i - 0.12], [100 * r["documented_accuracy"]], marker="D", color="C3",
                       label="documented (original, one run)" if i == 0 else None)
    ax.set_xticks(range(len(stages)), stages, rotation=20, ha="right")
    ax.set_xlim(-0.5, len(stages) - 0.5)
    if controls := [i for i, stage in enumerate(stages) if STAGES[stage].is_control]:
        ax.axvline(controls[0] - 0.5, color="grey", lw=0.8, ls="--")
        ax.text(controls[0] - 0.4, 0.02, "controls →", transform=ax.get_xaxis_transform(), fontsize=8, color="grey")
    ax.set(ylabel="test accuracy (%)", title=f"test accuracy over {count(len(results['stages'][stages[0]]['seeds']), 'seed')}")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
    first = results["stages"][stages[0]]
    settings = _changed(results)
    return finish(fig, path, f"{_span(first['seeds'])}, {count(len(first['history'][0]), 'epoch')}, {settings}{results['device']}")


def weight_templates(arrays, path: str | os.PathLike | None, about: str = ""):
    """The ten 784-weight rows of each linear model as 28x28 images, zero at the centre of one
    colour scale shared by every panel, with its colour bar; `about`: the seed, epochs, device."""
    names = [k.removesuffix("_weights") for k in arrays if k.endswith("_weights")]
    limit = max(float(np.abs(arrays[f"{name}_weights"]).max()) for name in names)
    fig, axes = plt.subplots(len(names), 10, figsize=(14, 1.5 * len(names) + 0.8), squeeze=False)
    for row, name in zip(axes, names):
        kernel = arrays[f"{name}_weights"]
        for digit, ax in enumerate(row):
            image = ax.imshow(kernel[digit].reshape(28, 28), cmap="RdBu_r", vmin=-limit, vmax=limit)
            ax.set(xticks=[], yticks=[])
            ax.set_title(str(digit), fontsize=9)
        row[0].set_ylabel(name, fontsize=9)
    fig.colorbar(image, ax=axes, shrink=0.9, pad=0.01, label="weight (one scale for every panel)")
    title = "linear weight templates (red positive, blue negative)"
    return finish(fig, path, f"{title}: {about}" if about else title)


def confusion_matrices(arrays, path: str | os.PathLike | None, stages: list[str], about: str = ""):
    """Each stage's test-set confusion matrix, its off-diagonal counts written and shaded on one
    colour scale shared by the panels, with its colour bar; `about`: the seed, epochs, device."""
    errors = {stage: arrays[f"{stage}_confusion"] - np.diag(np.diag(arrays[f"{stage}_confusion"])) for stage in stages}
    top = max(1, max(int(e.max()) for e in errors.values()))
    fig, axes = plt.subplots(1, len(stages), figsize=(6 * len(stages) + 1, 5.6), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        matrix = arrays[f"{stage}_confusion"]
        image = ax.imshow(errors[stage], cmap="Reds", vmin=0, vmax=top)
        for i, j in zip(*np.nonzero(errors[stage])):
            ax.text(j, i, matrix[i, j], ha="center", va="center", fontsize=9,
                    color="white" if errors[stage][i, j] > 0.6 * top else "black")
        accuracy = np.trace(matrix) / matrix.sum()
        ax.set(xticks=range(10), yticks=range(10), xlabel="predicted", ylabel="true",
               title=f"{stage}: {errors[stage].sum()} errors ({accuracy:.2%})")
    fig.colorbar(image, ax=axes, shrink=0.9, pad=0.02, label="test images (one scale for both panels)")
    title = "test-set confusions (off-diagonal counts), one seed"
    return finish(fig, path, f"{title}: {about}" if about else title)


def misclassified(arrays, path: str | os.PathLike | None, about: str = ""):
    """The test digits the linear stage gets wrong and the MLP gets right, with both labels."""
    linear, mlp = (str(s) for s in arrays["misclassified_stages"])
    images = arrays["misclassified_images"]
    cols = 8
    rows = max(1, -(-len(images) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, label, guess in zip(axes.flat, images, arrays["misclassified_labels"],
                                       arrays["misclassified_linear_predictions"]):
        ax.imshow(image, cmap="gray_r")
        ax.set_title(f"{label}, linear: {guess}", fontsize=8)
    title = f"test digits {linear} gets wrong and {mlp} gets right (true label, linear's guess)"
    return finish(fig, path, f"{title}\n{about}" if about else title)


def architecture(stage: Stage) -> list[str]:
    """The stage as the boxes of the diagram, input to loss."""
    loss = "softmax + MSE" if stage.loss_name == "softmax_mse" else "cross-entropy"
    if not stage.is_mlp:
        return ["784", "Linear", "10", loss]
    middle = (["BatchNorm"] if stage.batchnorm else []) + (["ReLU"] if stage.activation == "relu" else [])
    middle += [f"Dropout {stage.dropout:g}"] if stage.dropout else []
    hidden = ["Linear (frozen)" if stage.frozen_hidden else "Linear", str(stage.hidden)]
    return ["784", *hidden, *middle, "Linear", "10", loss]


def evolution_diagram(path: str | os.PathLike | None):
    """The stages of the registry as boxes, with what each changes from the one above highlighted (a control: from mlp)."""
    rows = [(name, architecture(stage)) for name, stage in STAGES.items()]
    fig, ax = plt.subplots(figsize=(14, 1.1 * len(rows)))
    previous: list[str] = []
    for row, (name, boxes) in enumerate(rows):
        y = len(rows) - 1 - row
        unseen = Counter(architecture(STAGES["mlp"]) if STAGES[name].is_control else previous)
        ax.text(-0.2, y, name, ha="right", va="center", fontsize=11, family="monospace")
        for col, text in enumerate(boxes):
            new = unseen[text] <= 0  # not in the stage above (or not this many times)
            unseen[text] -= 1
            ax.add_patch(FancyBboxPatch((col * 1.7, y - 0.3), 1.4, 0.6, boxstyle="round,pad=0.05",
                                        facecolor="#f4a261" if new and previous else "#cfe1f2", edgecolor="#33415c"))
            ax.text(col * 1.7 + 0.7, y, text, ha="center", va="center", fontsize=9)
            if col:
                ax.annotate("", (col * 1.7 - 0.05, y), (col * 1.7 - 0.3, y), arrowprops={"arrowstyle": "->"})
        previous = boxes
    ax.set(xlim=(-2.6, max(len(boxes) for _, boxes in rows) * 1.7), ylim=(-0.7, len(rows) - 0.3),
           title="from a linear classifier to an MLP: orange is what each stage changes from the one above\n"
                 "(a control's, from mlp: deep_linear without the ReLU, random_features with the hidden layer frozen)")
    ax.axis("off")
    return finish(fig, path)


def width_sweep(report: dict, path: str | os.PathLike | None):
    """MLP test accuracy against parameter count, with the linear ceilings as lines."""
    rows = report["width_sweep"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    mean, (lo, hi) = _pct([r["mean"] for r in rows]), _ci_pct(rows)
    ax.errorbar([r["parameters"] for r in rows], mean, yerr=[mean - lo, hi - mean],
                fmt="o-", capsize=4, label=f"mlp, {count(report['epochs'], 'epoch')} ({count(report['seeds'], 'seed')}, 95% CI)")
    for r in rows:
        ax.annotate(str(r["hidden"]), (r["parameters"], 100 * r["mean"]), textcoords="offset points", xytext=(4, -12), fontsize=8)
    ax.axhline(100 * report["linear_ce_converged"]["test_accuracy"], color="C3", ls="--",
               label="linear ceiling: softmax regression to convergence")
    ax.axhline(100 * report["linear_lstsq"]["test_accuracy"], color="C2", ls=":",
               label="exact least-squares linear classifier")
    params = [r["parameters"] for r in rows]
    ax.set_xlim(min(params) / 1.5, max(params) * 1.5)
    ax.set(xscale="log", xlabel="parameters (hidden width annotated)", ylabel="test accuracy (%)",
           title=f"how much width the nonlinearity needs: {count(report['seeds'], 'seed')}, {report['device']}")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
    return finish(fig, path)


def _band(ax, epochs, summaries, label, **style):
    """A mean line with its 95% interval as a band."""
    (line,) = ax.plot(epochs, [100 * s["mean"] for s in summaries], label=label, **style)
    ax.fill_between(epochs, *_ci_pct(summaries), color=line.get_color(), alpha=0.2)


def sweep_dropout(answer: dict, device: str, path: str | os.PathLike | None):
    """Question 1: test accuracy of `mlp` and of `mlp_dropout` at each rate after every
    epoch, and each rate's paired difference from `mlp`, with 95% interval bands. Epoch 1 lies
    far below the rest: the accuracy panel shows every epoch, an inset the later ones close up."""
    epochs = np.arange(1, answer["epochs"] + 1)
    fig, (acc_ax, diff_ax) = plt.subplots(1, 2, figsize=(13, 4.8))
    curves = [("mlp", answer["mlp"]["test"], {"color": "black"})]
    curves += [(f"dropout {rate}", r["test"], {}) for rate, r in answer["rates"].items()]
    for label, curve, style in curves:
        _band(acc_ax, epochs, curve, label, **style)
    for rate, r in answer["rates"].items():
        diffs = [{"mean": d["difference"], "ci95": d["ci95"]} for d in r["difference"]]
        _band(diff_ax, epochs, diffs, f"dropout {rate} − mlp")
    diff_ax.axhline(0, color="black", lw=0.8)
    if len(epochs) >= 6:
        inset = acc_ax.inset_axes([0.4, 0.08, 0.57, 0.5])
        for label, curve, style in curves:  # epochs 3 on: epochs 1-2 are the main panel's, not cut off here
            _band(inset, epochs[2:], curve[2:], label, **style)
        later = [s for _, c, _ in curves for s in c[2:]]
        inset.set_ylim(min(100 * (s["ci95"] or [s["mean"]])[0] for s in later) - 0.05,
                       max(100 * (s["ci95"] or [s["mean"]] * 2)[1] for s in later) + 0.05)
        inset.set_xlim(2.5, epochs[-1] + 0.5)
        inset.xaxis.set_major_locator(MaxNLocator(integer=True))
        inset.set_title(f"epochs 3-{epochs[-1]}, close up", fontsize=8)
        inset.tick_params(labelsize=7)
    acc_ax.set(ylabel="test accuracy (%)",
               title=f"test accuracy after each epoch: mean, 95% CI ({count(answer['seeds'], 'seed')})")
    diff_ax.set(ylabel="difference (points), paired by seed", title="dropout minus no dropout")
    for ax in (acc_ax, diff_ax):
        ax.set_xlabel("epoch")
        _integer_epochs(ax, int(epochs[-1]))
    acc_ax.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0.1, 0.02))
    diff_ax.legend(fontsize=8, loc="lower right")
    return finish(fig, path, f"when does dropout start to help? lr {answer['lr']:g}, {count(answer['epochs'], 'epoch')}, {device}")


def sweep_learning_rates(answers: dict, device: str, path: str | os.PathLike | None):
    """Questions 2 to 4: validation and test accuracy against the learning rate, per
    stage, at each compared length; a ring marks each stage's choice on validation."""
    panels = [("batchnorm", answers["batchnorm"])] if "batchnorm" in answers else []
    panels += [("linear", c) for c in answers.get("linear", {}).get("at_epochs", {}).values()]
    panels += [("controls", answers["controls"])] if "controls" in answers else []
    columns = 2 if len(panels) == 4 else len(panels)
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(6.5 * columns, 6 * rows), squeeze=False, layout="constrained")
    for ax in axes.flat[len(panels):]:
        ax.set_axis_off()
    for ax, (question, comparison) in zip(axes.flat, panels):
        for stage, choice in comparison["choice"].items():
            lrs = [float(lr) for lr in choice["by_lr"]]
            test = [choice["by_lr"][lr]["test"] for lr in choice["by_lr"]]
            mean, (lo, hi) = _pct([t["mean"] for t in test]), _ci_pct(test)
            (line, *_) = ax.errorbar(lrs, mean, yerr=[mean - lo, hi - mean], fmt="o-", capsize=3, label=f"{stage}: test, 95% CI",
                                     color=STAGE_COLOURS[stage])
            ax.plot(lrs, [100 * choice["by_lr"][lr]["val"]["mean"] for lr in choice["by_lr"]], ":", color=line.get_color(),
                    label=f"{stage}: validation mean")
            best = choice["by_lr"][setting(choice['lr'])]["test"]["mean"]
            ax.scatter([choice["lr"]], [100 * best], s=160, facecolors="none", edgecolors=line.get_color())
        name = {"batchnorm": "BatchNorm", "linear": "linear losses", "controls": "controls, linear_ce and mlp"}[question]
        ax.set(xscale="log", xlabel="Adam learning rate", ylabel="accuracy (%)",
               title=f"{name}: after {count(comparison['epoch'], 'epoch')}")
        rates = sorted({float(lr) for choice in comparison["choice"].values() for lr in choice["by_lr"]})
        ax.set_xticks(rates, [f"{lr:g}" for lr in rates])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlim(rates[0] / 1.4, rates[-1] * 1.4)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    seeds = count(comparison["seeds"], "seed")
    return finish(fig, path, f"accuracy against learning rate, {seeds} per rate; ring: chosen on validation; {device}")
