"""The five stages in plain PyTorch, as the original study defines them; imported only when used (`torch` is an
optional extra: `pip install -e ".[torch]"`). It trains on the same arrays and split as the JAX side, in four loop
styles: `original` (a per-item Dataset behind a shuffling DataLoader, as the study does with torchvision), `tensor`
(one tensor, batches sliced from a permutation), `fused` (the tensor loop with `Adam(fused=True)`, PyTorch's fastest
Adam kernel on a CPU) and `compile` (the tensor loop with the model and the optimizer step under `torch.compile`)."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import OrderedDict
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, random_split

from mnist_jax.data import MNIST, NUM_VALIDATION
from mnist_jax.stages import STAGES

LOOPS = ("original", "tensor", "fused", "compile")


def build_model(stage: str, hidden: int | None = None, dropout: float | None = None) -> nn.Sequential:
    """The stage's PyTorch model, initialised from torch's global RNG as the original does.
    Its layers are named as the Flax model's, so `state_dict` keys map over by name. A deep linear stage has no
    ReLU; a random-features stage's hidden layer is frozen (`requires_grad_(False)`: Adam skips it)."""
    spec = STAGES[stage]
    if not spec.is_mlp:
        return nn.Sequential(OrderedDict(flatten=nn.Flatten(), linear=nn.Linear(784, 10)))
    hidden = hidden or spec.hidden
    dropout = spec.dropout if dropout is None else dropout
    layers = OrderedDict(flatten=nn.Flatten(), hidden=nn.Linear(784, hidden).requires_grad_(not spec.frozen_hidden))
    if spec.batchnorm:
        layers["batchnorm"] = nn.BatchNorm1d(hidden)
    if spec.activation == "relu":
        layers["relu"] = nn.ReLU()
    if dropout > 0:
        layers["dropout"] = nn.Dropout(dropout)
    layers["output"] = nn.Linear(hidden, 10)
    return nn.Sequential(layers)


def to_torch(run_dir, which: str = "final") -> nn.Sequential:
    """A saved run's `final` or `best` model (`checkpoint.load_model`) as the stage's PyTorch model (`build_model`), in eval
    mode: it takes (N, 1, 28, 28) or (N, 784) floats in [0, 1], as torchvision's MNIST with `ToTensor` gives them."""
    from flax import nnx

    from mnist_jax.checkpoint import check_which, load_model

    check_which(run_dir, which, "to_torch")
    model, config = load_model(run_dir, which)
    with torch.random.fork_rng():  # the initial weights it draws, all replaced, leave torch's global RNG as it was
        exported = build_model(config.stage, config.hidden, config.dropout)
    exported.load_state_dict(flax_to_torch(*(nnx.to_pure_dict(nnx.state(model, kind)) for kind in (nnx.Param, nnx.BatchStat))))
    return exported.eval()


def softmax_mse(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(F.softmax(logits, dim=1), F.one_hot(labels, 10).float())


def loss_fn(stage: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return softmax_mse if stage == "linear_mse" else F.cross_entropy


# Flax variable names -> torch parameter names (BatchNorm's weight is Flax's scale).
_FLAX_TO_TORCH = {"kernel": "weight", "bias": "bias", "scale": "weight", "mean": "running_mean", "var": "running_var"}


def flax_to_torch(params: dict, batch_stats: dict) -> dict[str, torch.Tensor]:
    """Pure-dict Flax state -> a torch `state_dict` (same layouts, other names)."""
    state = {f"{layer}.{_FLAX_TO_TORCH[name]}": torch.tensor(np.asarray(value))
             for tree in (params, batch_stats) for layer, variables in tree.items() for name, value in variables.items()}
    if "batchnorm" in batch_stats:
        state["batchnorm.num_batches_tracked"] = torch.tensor(0)
    return state


def torch_to_flax(state_dict: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """A torch `state_dict` -> (params, batch_stats) as Flax pure dicts of numpy arrays."""
    params, batch_stats = {}, {}
    for key, tensor in state_dict.items():
        layer, name = key.split(".")
        if name == "num_batches_tracked":
            continue
        names = {"weight": "scale" if layer == "batchnorm" else "kernel", "running_mean": "mean", "running_var": "var"}
        tree = batch_stats if name.startswith("running_") else params
        tree.setdefault(layer, {})[names.get(name, name)] = tensor.detach().cpu().numpy()
    return params, batch_stats


class ImageDataset(Dataset):
    """One normalised (1, 28, 28) tensor per item, as torchvision's MNIST + ToTensor gives."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return torch.from_numpy(self.images[i]).float().div(255).unsqueeze(0), int(self.labels[i])


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, loss: Callable, batches) -> tuple[float, int]:
    """One pass of Adam steps over (x, y) batches: (summed loss, number correct)."""
    model.train()
    loss_sum, correct = 0.0, 0
    for x, y in batches:
        logits = model(x)
        batch_loss = loss(logits, y)
        optimizer.zero_grad()
        batch_loss.backward()
        optimizer.step()
        loss_sum += batch_loss.item() * len(y)
        correct += int((logits.argmax(1) == y).sum())
    return loss_sum, correct


@torch.no_grad()
def evaluate(model: nn.Module, loss: Callable, batches) -> tuple[float, float]:
    """Mean loss and accuracy over (x, y) batches, in eval mode."""
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for x, y in batches:
        logits = model(x)
        loss_sum += float(loss(logits, y)) * len(y)
        correct += int((logits.argmax(1) == y).sum())
        count += len(y)
    return loss_sum / count, correct / count


def as_tensors(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(images.reshape(len(images), -1).copy()).float().div(255)
    return x, torch.from_numpy(labels.astype(np.int64))


def random_split_indices(num_train: int) -> tuple[np.ndarray, np.ndarray]:
    """`random_split` of the training images into `num_train` and the validation set, from torch's global RNG."""
    train_ds, val_ds = random_split(range(num_train + NUM_VALIDATION), [num_train, NUM_VALIDATION])
    return np.array(train_ds.indices), np.array(val_ds.indices)


@dataclasses.dataclass
class TorchResult:
    """One PyTorch run: a row per epoch (losses, accuracies, seconds) and the test accuracy."""

    history: list[dict]
    test_accuracy: float


def train(stage: str, data: MNIST, split: tuple[np.ndarray, np.ndarray] | None = None, *, epochs: int = 5,
          batch_size: int = 128, lr: float = 1e-3, seed: int = 42, loop: str = "tensor", hidden: int | None = None,
          dropout: float | None = None) -> TorchResult:
    """Train one stage in PyTorch from `torch.manual_seed(seed)`. `split` gives the (train, validation) indices;
    pass the JAX run's for a fair comparison. Without it the split is `random_split`'s, and the `original` loop then
    draws every random number exactly as the original's code does: split, initialisation, then each epoch's shuffle
    and its validation loader."""
    if loop not in LOOPS:
        raise ValueError(f"loop must be one of {LOOPS}, not {loop!r}")
    torch.manual_seed(seed)
    train_idx, val_idx = split if split is not None else random_split_indices(len(data.train_labels) - NUM_VALIDATION)
    model = build_model(stage, hidden, dropout)
    loss = loss_fn(stage)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, fused=True if loop == "fused" else None)
    if loop == "compile":  # the forward and backward graphs, and Adam's update; one graph per batch shape
        torch.compiler.reset()  # each run compiles afresh: earlier runs' graphs would count to dynamo's recompile limit
        logging.getLogger("torch._dynamo.variables.ctx_manager").setLevel(logging.ERROR)  # (its note: Adam.step's profiler marker is skipped)
        model, optimizer.step = torch.compile(model, dynamic=False), torch.compile(optimizer.step)
    train_set, val_set = (ImageDataset(data.train_images[idx], data.train_labels[idx]) for idx in (train_idx, val_idx))
    train_x, train_y = as_tensors(train_set.images, train_set.labels)
    if loop == "original":
        train_loader, val_batches = DataLoader(train_set, batch_size, shuffle=True), DataLoader(val_set, batch_size)
    else:
        val_batches = [as_tensors(val_set.images, val_set.labels)]
    history = []
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        batches = train_loader if loop == "original" else (
            (train_x[i], train_y[i]) for i in torch.randperm(len(train_y)).split(batch_size))
        loss_sum, correct = train_epoch(model, optimizer, loss, batches)
        val_loss, val_acc = evaluate(model, loss, val_batches)
        history.append({"epoch": epoch, "train_loss": loss_sum / len(train_y), "train_accuracy": correct / len(train_y),
                        "val_loss": val_loss, "val_accuracy": val_acc, "seconds": time.perf_counter() - start})
    _, test_acc = evaluate(model, loss, [as_tensors(data.test_images, data.test_labels)])
    return TorchResult(history, test_acc)


def original_draws(
    stage: str, num_train: int = 60_000, epochs: int = 5, batch_size: int = 128, seed: int = 42
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[dict, dict], list[np.ndarray]]:
    """What the original's code draws from `torch.manual_seed(seed)`, without training:
    the split, the initial weights (as Flax pure dicts) and each epoch's order of
    training indices. Exact for the stages without dropout, whose masks would
    draw from the same generator between epochs."""
    torch.manual_seed(seed)
    train_idx, val_idx = random_split_indices(num_train - NUM_VALIDATION)
    initial = torch_to_flax(build_model(stage).state_dict())
    positions = DataLoader(range(len(train_idx)), batch_size, shuffle=True)
    validation = DataLoader(range(len(val_idx)), batch_size)
    orders = []
    for _ in range(epochs):
        orders.append(train_idx[torch.cat(list(positions)).numpy()])
        iter(validation)  # the validation loader draws a worker seed each epoch
    return (train_idx, val_idx), initial, orders
