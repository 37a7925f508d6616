"""Figures, drawn from measured results only."""

from __future__ import annotations

import os
from collections import Counter

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import FancyBboxPatch

from mnist_jax.files import atomic_write
from mnist_jax.stages import STAGES, Stage, count, setting


def save_figure(fig, path: str | os.PathLike, title: str = "") -> None:
    """Give `fig` its overall `title` (if any), write it to `path` and close it."""
    if title:
        fig.suptitle(title)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)


def framework_comparison(results: list[dict], path: str | os.PathLike, title: str = "") -> None:
    """Test accuracy (mean ± std over seeds; no bar for one seed) and seconds per epoch, per stage and framework."""
    stages = [r["stage"] for r in results]
    frameworks = [k for k in results[0] if k == "jax" or k.startswith("torch_")]
    fig, (acc_ax, time_ax) = plt.subplots(1, 2, figsize=(12, 4.2))
    width = 0.8 / len(frameworks)
    for i, name in enumerate(frameworks):
        xs = [s + (i - (len(frameworks) - 1) / 2) * width for s in range(len(stages))]
        label = "JAX" if name == "jax" else f"PyTorch ({name.removeprefix('torch_')} loop)"
        acc_ax.errorbar(xs, [100 * r[name]["mean_accuracy"] for r in results],
                        yerr=[100 * (r[name]["std_accuracy"] or 0) for r in results], fmt="o", capsize=3, label=label)
        time_ax.bar(xs, [r[name]["seconds_per_epoch"] for r in results], width, label=label)
    documented = [(i, 100 * r["documented_accuracy"]) for i, r in enumerate(results) if r["documented_accuracy"] is not None]
    if documented:  # a control has none
        acc_ax.scatter(*zip(*documented), marker="_", s=400, color="black", label="documented (original, seed 42)")
    acc_ax.set(ylabel="test accuracy (%)", title="accuracy: mean ± std over seeds")
    time_ax.set(ylabel="seconds per epoch (steady state)", title="time per epoch", yscale="log")
    for ax in (acc_ax, time_ax):
        ax.set_xticks(range(len(stages)), stages, rotation=20)
        ax.legend(fontsize=8)
    save_figure(fig, path, title)


def _pct(values) -> np.ndarray:
    return 100 * np.asarray(values, dtype=float)


def _ci_pct(summaries: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """The ends of each summary's 95% interval in %; NaN, which is not drawn, where a
    summary has none (one seed)."""
    ends = np.array([s["ci95"] or (np.nan, np.nan) for s in summaries], dtype=float).reshape(-1, 2)
    return 100 * ends[:, 0], 100 * ends[:, 1]


def training_curves(results: dict, path: str | os.PathLike) -> None:
    """Train and validation loss and accuracy per epoch: mean over seeds, band = min..max."""
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharex=True)
    for stage, r in results["stages"].items():
        epochs = [row["epoch"] for row in r["history"][0]]
        for ax, key in zip(axes.flat, ("train_loss", "val_loss", "train_accuracy", "val_accuracy")):
            values = np.array([[row[key] for row in seed] for seed in r["history"]])
            if "accuracy" in key:
                values = _pct(values)
            (line,) = ax.plot(epochs, values.mean(0), marker="o", ms=3, label=stage)
            ax.fill_between(epochs, values.min(0), values.max(0), color=line.get_color(), alpha=0.2)
            ax.set_title(key.replace("_", " ") + (" (%)" if "accuracy" in key else ""))
    plt.setp(axes[0], yscale="log")
    plt.setp(axes[1], xlabel="epoch", ylim=(86, 100))
    axes[1, 0].legend(loc="lower right")
    n = len(next(iter(results["stages"].values()))["seeds"])
    save_figure(fig, path, f"training curves: mean over {count(n, 'seed')}, band from min to max ({results['device']})")


def comparison_chart(results: dict, path: str | os.PathLike) -> None:
    """Test accuracy per stage: mean with 95% interval, each seed, and the documented figure."""
    stages = list(results["stages"])
    fig, ax = plt.subplots(figsize=(9, 4.5))
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
    ax.set_xticks(range(len(stages)), stages)
    ax.set(ylabel="test accuracy (%)", title=f"test accuracy over {count(len(results['stages'][stages[0]]['seeds']), 'seed')}")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def weight_templates(arrays, path: str | os.PathLike) -> None:
    """The ten 784-weight rows of each linear model as 28x28 images, zero at the centre."""
    names = [k.removesuffix("_weights") for k in arrays if k.endswith("_weights")]
    fig, axes = plt.subplots(len(names), 10, figsize=(13, 1.5 * len(names) + 0.6), squeeze=False)
    for row, name in zip(axes, names):
        kernel = arrays[f"{name}_weights"]
        limit = np.abs(kernel).max()
        for digit, ax in enumerate(row):
            ax.imshow(kernel[digit].reshape(28, 28), cmap="RdBu_r", vmin=-limit, vmax=limit)
            ax.set(xticks=[], yticks=[])
            ax.set_title(str(digit), fontsize=9)
        row[0].set_ylabel(name, fontsize=9)
    save_figure(fig, path, "linear weight templates (red positive, blue negative)")


def confusion_matrices(arrays, path: str | os.PathLike, stages: list[str]) -> None:
    """Each stage's test-set confusion matrix, its off-diagonal counts written and shaded."""
    fig, axes = plt.subplots(1, len(stages), figsize=(5 * len(stages), 4.6), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        matrix = arrays[f"{stage}_confusion"]
        errors = matrix - np.diag(np.diag(matrix))
        ax.imshow(errors, cmap="Reds")
        for i, j in zip(*np.nonzero(errors)):
            ax.text(j, i, matrix[i, j], ha="center", va="center", fontsize=6)
        accuracy = np.trace(matrix) / matrix.sum()
        ax.set(xticks=range(10), yticks=range(10), xlabel="predicted", ylabel="true",
               title=f"{stage}: {errors.sum()} errors ({accuracy:.2%})")
    save_figure(fig, path, "test-set confusions (off-diagonal counts), one seed")


def misclassified(arrays, path: str | os.PathLike) -> None:
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
    save_figure(fig, path, f"test digits {linear} gets wrong and {mlp} gets right (true label, linear's guess)")


def architecture(stage: Stage) -> list[str]:
    """The stage as the boxes of the diagram, input to loss."""
    loss = "softmax + MSE" if stage.loss_name == "softmax_mse" else "cross-entropy"
    if not stage.is_mlp:
        return ["784", "Linear", "10", loss]
    middle = (["BatchNorm"] if stage.batchnorm else []) + (["ReLU"] if stage.activation == "relu" else [])
    middle += [f"Dropout {stage.dropout:g}"] if stage.dropout else []
    hidden = ["Linear (frozen)" if stage.frozen_hidden else "Linear", str(stage.hidden)]
    return ["784", *hidden, *middle, "Linear", "10", loss]


def evolution_diagram(path: str | os.PathLike) -> None:
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
    save_figure(fig, path)


def width_sweep(report: dict, path: str | os.PathLike) -> None:
    """MLP test accuracy against parameter count, with the linear ceilings as lines."""
    rows = report["width_sweep"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    mean, (lo, hi) = _pct([r["mean"] for r in rows]), _ci_pct(rows)
    ax.errorbar([r["parameters"] for r in rows], mean, yerr=[mean - lo, hi - mean],
                fmt="o-", capsize=4, label=f"mlp, 5 epochs ({count(report['seeds'], 'seed')}, 95% CI)")
    for r in rows:
        ax.annotate(str(r["hidden"]), (r["parameters"], 100 * r["mean"]), textcoords="offset points", xytext=(4, -12), fontsize=8)
    ax.axhline(100 * report["linear_ce_converged"]["test_accuracy"], color="C3", ls="--",
               label="linear ceiling: softmax regression to convergence")
    ax.axhline(100 * report["linear_lstsq"]["test_accuracy"], color="C2", ls=":",
               label="exact least-squares linear classifier")
    ax.set(xscale="log", xlabel="parameters (hidden width annotated)", ylabel="test accuracy (%)",
           title="how much width the nonlinearity needs")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def _band(ax, epochs, summaries, label, **style):
    """A mean line with its 95% interval as a band."""
    (line,) = ax.plot(epochs, [100 * s["mean"] for s in summaries], label=label, **style)
    ax.fill_between(epochs, *_ci_pct(summaries), color=line.get_color(), alpha=0.2)


def sweep_dropout(answer: dict, device: str, path: str | os.PathLike) -> None:
    """Question 1: test accuracy of `mlp` and of `mlp_dropout` at each rate after every
    epoch, and each rate's paired difference from `mlp`, with 95% interval bands."""
    epochs = np.arange(1, answer["epochs"] + 1)
    fig, (acc_ax, diff_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    _band(acc_ax, epochs, answer["mlp"]["test"], "mlp", color="black")
    for rate, r in answer["rates"].items():
        _band(acc_ax, epochs, r["test"], f"dropout {rate}")
        diffs = [{"mean": d["difference"], "ci95": d["ci95"]} for d in r["difference"]]
        _band(diff_ax, epochs, diffs, f"dropout {rate} − mlp")
    diff_ax.axhline(0, color="black", lw=0.8)
    curves = [answer["mlp"]["test"], *(r["test"] for r in answer["rates"].values())]
    acc_ax.set_ylim(bottom=min(100 * (s["ci95"] or [s["mean"]])[0] for c in curves for s in c) - 0.2)
    acc_ax.set(ylabel="test accuracy (%)",
               title=f"test accuracy after each epoch: mean, 95% CI ({count(answer['seeds'], 'seed')})")
    diff_ax.set(ylabel="difference (points), paired by seed", title="dropout minus no dropout")
    for ax in (acc_ax, diff_ax):
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    save_figure(fig, path, f"when does dropout start to help? (lr {answer['lr']:g}, {device})")


def sweep_learning_rates(answers: dict, device: str, path: str | os.PathLike) -> None:
    """Questions 2 and 3: validation and test accuracy against the learning rate, per
    stage, at each compared length; a ring marks each stage's choice on validation."""
    panels = [("batchnorm", answers["batchnorm"])] if "batchnorm" in answers else []
    panels += [("linear", c) for c in answers.get("linear", {}).get("at_epochs", {}).values()]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.5), squeeze=False)
    for ax, (question, comparison) in zip(axes[0], panels):
        for stage, choice in comparison["choice"].items():
            lrs = [float(lr) for lr in choice["by_lr"]]
            test = [choice["by_lr"][lr]["test"] for lr in choice["by_lr"]]
            mean, (lo, hi) = _pct([t["mean"] for t in test]), _ci_pct(test)
            (line, *_) = ax.errorbar(lrs, mean, yerr=[mean - lo, hi - mean], fmt="o-", capsize=3, label=f"{stage}: test, 95% CI")
            ax.plot(lrs, [100 * choice["by_lr"][lr]["val"]["mean"] for lr in choice["by_lr"]], ":", color=line.get_color(),
                    label=f"{stage}: validation mean")
            best = choice["by_lr"][setting(choice['lr'])]["test"]["mean"]
            ax.scatter([choice["lr"]], [100 * best], s=160, facecolors="none", edgecolors=line.get_color())
        name = "BatchNorm" if question == "batchnorm" else "linear losses"
        ax.set(xscale="log", xlabel="Adam learning rate", ylabel="accuracy (%)",
               title=f"{name}: after {count(comparison['epoch'], 'epoch')}")
        ax.legend(fontsize=7)
    seeds = count(comparison["seeds"], "seed")
    save_figure(fig, path, f"accuracy against learning rate, {seeds} per rate; ring: chosen on validation ({device})")
