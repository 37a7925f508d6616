"""What a run is: the five stages of the study (model, loss, what the original reported), the controls
that separate the MLP's nonlinearity from its extra parameters, and `TrainConfig`. Plain data, no JAX: the
scripts check their arguments against it before JAX is imported; `models` builds the models and losses when first asked."""

from __future__ import annotations

import math
import numbers
import struct
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Stage:
    name: str
    description: str
    loss_name: str  # "softmax_mse" or "cross_entropy", the functions in `models`
    documented_accuracy: float | None  # test accuracy reported by the original study, seed 42; None: not the original's
    hidden: int | None = None  # None: the linear model
    dropout: float = 0.0
    batchnorm: bool = False
    activation: str = "relu"  # the hidden layer's: "relu", or "identity" (the deep linear network)
    frozen_hidden: bool = False  # the hidden layer stays as drawn (random features): only the layers after it learn

    @property
    def is_mlp(self) -> bool:
        """A hidden layer (every stage but the two linear models): --hidden and --dropout apply."""
        return self.hidden is not None

    @property
    def is_control(self) -> bool:
        """Not one of the original's five stages (no documented accuracy): a control of this project's."""
        return self.documented_accuracy is None

    @property
    def loss(self) -> Callable:
        """(logits, integer labels) -> mean loss."""
        from mnist_jax import models

        return getattr(models, self.loss_name)

    def build(self, rngs, hidden: int | None = None, dropout: float | None = None):
        """The stage's Flax model; `hidden` and `dropout` override the MLP's defaults."""
        from mnist_jax.models import MLP, LinearClassifier

        if not self.is_mlp:
            return LinearClassifier(rngs=rngs)
        return MLP(hidden or self.hidden, self.dropout if dropout is None else dropout, self.batchnorm,
                   activation=self.activation, frozen_hidden=self.frozen_hidden, rngs=rngs)


RANDOM_FEATURES_WIDTHS = (256, 1024, 4096)  # random_features (the MLP's width), random_features_1024, _4096


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("linear_mse", "784 -> 10, MSE on softmax", "softmax_mse", 0.9257),
        Stage("linear_ce", "784 -> 10, cross-entropy", "cross_entropy", 0.9215),
        Stage("mlp", "784 -> 256 -> ReLU -> 10", "cross_entropy", 0.9745, hidden=256),
        Stage("mlp_dropout", "784 -> 256 -> ReLU -> Dropout(0.5) -> 10", "cross_entropy", 0.9728, hidden=256, dropout=0.5),
        Stage("mlp_bn", "784 -> 256 -> BatchNorm -> ReLU -> 10", "cross_entropy", 0.9766, hidden=256, batchnorm=True),
        # Controls (issue 28): the MLP's parameters without its nonlinearity, and its nonlinearity without learned features.
        Stage("deep_linear", "784 -> 256 -> 10, no activation", "cross_entropy", None, hidden=256, activation="identity"),
        *(Stage("random_features" + (f"_{width}" if width != 256 else ""), f"784 -> {width} frozen at random -> ReLU -> 10",
                "cross_entropy", None, hidden=width, frozen_hidden=True) for width in RANDOM_FEATURES_WIDTHS),
    )
}
ORIGINAL = tuple(name for name, stage in STAGES.items() if not stage.is_control)  # the original study's five stages

MAX_SEED = 2**31 - 1  # a seed goes into the programs as an int32 (a grid's seeds are an int32 array)


def _integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)  # True is not an epoch count


def as_float32(x: float) -> float:
    """`x` as the float32 it becomes (the learning rate is one): inf beyond its range, 0 below it."""
    try:
        return struct.unpack("f", struct.pack("f", x))[0]
    except OverflowError:
        return math.inf


def _real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def setting(value: float) -> str:
    """A setting as it names a folder or a row: an int in full, a float as `:g` writes it where that reads back
    as the same number (0.001, 1e-05), else as Python's shortest text that does (0.0012345671, not 0.00123457)."""
    text = f"{value:g}"
    return str(value) if isinstance(value, numbers.Integral) else text if float(text) == value else repr(float(value))


@dataclass(frozen=True)
class TrainConfig:
    stage: str
    epochs: int = 5
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 42
    hidden: int | None = None  # None: the stage's own (256 for the MLPs)
    dropout: float | None = None  # None: the stage's own

    def __post_init__(self) -> None:
        """Refuse what no run can be (`ValueError` naming the field and what it accepts);
        hold NumPy scalars as Python numbers (for JSON and optax)."""
        known = isinstance(self.stage, str) and self.stage in STAGES
        mlp = known and STAGES[self.stage].is_mlp
        for name, valid, accepted, kind in (
            ("stage", known, f"one of {', '.join(STAGES)}", str),
            ("epochs", _integer(self.epochs) and self.epochs > 0, "a positive int", int),
            ("batch_size", _integer(self.batch_size) and self.batch_size > 0, "a positive int", int),
            ("lr", _real(self.lr) and 0 < as_float32(self.lr) < math.inf, "a positive number a float32 holds", float),
            ("seed", _integer(self.seed) and 0 <= self.seed <= MAX_SEED, f"an int from 0 to {MAX_SEED}", int),
            ("hidden", self.hidden is None or mlp and _integer(self.hidden) and self.hidden > 0,
             "a positive int for an MLP stage, else None", int),
            ("dropout", self.dropout is None or _real(self.dropout) and 0 <= self.dropout and as_float32(self.dropout) < 1
             and (mlp or not self.dropout), "a rate in [0, 1) for an MLP stage, else None (as a float32: under 1)", float),
        ):
            if not valid:
                raise ValueError(f"TrainConfig {name}: expected {accepted}, got {getattr(self, name)!r}")
            if getattr(self, name) is not None:
                object.__setattr__(self, name, kind(getattr(self, name)))

    @property
    def spec(self) -> Stage:
        return STAGES[self.stage]

    @property
    def dropout_rate(self) -> float:
        return self.spec.dropout if self.dropout is None else self.dropout

    def run_name(self) -> str:
        """<stage>-<each setting that differs from the stage's own>-seed<seed>, e.g. 'mlp-hidden512-seed42': train.py's
        run folder and every TensorBoard log. Not the epochs, so that `--resume --epochs N` trains the same run further."""
        differ = (f"{key}{setting(value)}" for key, value in self.changed().items())
        return "-".join([self.stage, *differ, f"seed{self.seed}"])

    def changed(self) -> dict:
        """Each setting that differs from the stage's own, under the name the run's folder gives it: {'hidden': 512}."""
        spec = self.spec
        settings = {"hidden": (self.hidden, spec.hidden), "dropout": (self.dropout, spec.dropout),
                    "lr": (self.lr, TrainConfig.lr), "batch": (self.batch_size, TrainConfig.batch_size)}
        return {key: value for key, (value, own) in settings.items() if value not in (None, own)}

    def describe(self) -> str:
        """e.g. 'mlp (hidden 256, batch 128)', for messages."""
        hidden = f"hidden {self.hidden or self.spec.hidden}, " if self.spec.is_mlp else ""
        return f"{self.stage} ({hidden}batch {self.batch_size})"


def run_settings(config: TrainConfig) -> dict:
    """What a stage's runs were trained with, as `results.json` keeps it per stage."""
    return {"lr": config.lr, "batch_size": config.batch_size, "hidden": config.hidden or config.spec.hidden,
            "dropout": config.dropout_rate}


def settings_config(stage: str, settings: dict) -> TrainConfig:
    """The configuration of `stage` that `run_settings` gave `settings` of (TrainConfig's checks; KeyError for one missing)."""
    return TrainConfig(stage, batch_size=settings["batch_size"], lr=settings["lr"], hidden=settings["hidden"],
                       dropout=settings["dropout"] if STAGES[stage].is_mlp else None)


def changed_settings(stages: dict) -> list[str]:
    """The settings of a study's stages (each its `run_settings`) that differ from the original study's, in words
    ('hidden 8', 'lr 0.01'), each once: the documented accuracies are of the original's. None in a study saved before
    they were kept."""
    found = []
    for name, stage in stages.items():
        changed = settings_config(name, stage["settings"]).changed() if "settings" in stage else {}
        for key in ("lr", "batch", "hidden", "dropout"):  # (as the command line gives them)
            words = key in changed and f"{key} {setting(changed[key])}"
            if words and words not in found:
                found.append(words)
    return found


def count(n: int, noun: str) -> str:
    """'1 epoch', '5 epochs': for every message and figure (also `cli.count`)."""
    return f"{n} {noun}{'' if n == 1 else 's'}"
