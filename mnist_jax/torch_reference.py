"""The five stages in plain PyTorch, as the original study defines them.

Imported only when used: `torch` is an optional extra (`pip install -e ".[torch]"`).
It trains on the same arrays and split as the JAX side, in four loop styles:
`original` (a per-item Dataset behind a shuffling DataLoader, as the study does with
torchvision), `tensor` (one tensor, batches sliced from a permutation), `fused`
(the tensor loop with `Adam(fused=True)`, PyTorch's fastest Adam kernel on a CPU) and
`compile` (the tensor loop with the model and the optimizer step under `torch.compile`).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mnist_jax.data import MNIST, NUM_VALIDATION
from mnist_jax.stages import STAGES

LOOPS = ("original", "tensor", "fused", "compile")


class TorchLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(784, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.view(-1, 784))


class TorchMLP(nn.Module):
    def __init__(self, hidden: int = 256, dropout: float = 0.0, batchnorm: bool = False):
        super().__init__()
        self.hidden = nn.Linear(784, hidden)
        self.batchnorm = nn.BatchNorm1d(hidden) if batchnorm else None
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.output = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.hidden(x.view(-1, 784))
        if self.batchnorm is not None:
            h = self.batchnorm(h)
        h = F.relu(h)
        if self.dropout is not None:
            h = self.dropout(h)
        return self.output(h)


def build_model(stage: str, hidden: int | None = None, dropout: float | None = None) -> nn.Module:
    """The stage's PyTorch model, initialised from torch's global RNG as the original does."""
    spec = STAGES[stage]
    if not spec.is_mlp:
        return TorchLinear()
    return TorchMLP(hidden or spec.hidden, spec.dropout if dropout is None else dropout, spec.batchnorm)


def softmax_mse(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(F.softmax(logits, dim=1), F.one_hot(labels, 10).float())


def loss_fn(stage: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return softmax_mse if stage == "linear_mse" else F.cross_entropy


# Flax module/variable names <-> torch module/parameter names.
_FLAX_TO_TORCH = {"kernel": "weight", "bias": "bias", "scale": "weight", "mean": "running_mean", "var": "running_var"}


def flax_to_torch(params: dict, batch_stats: dict) -> dict[str, torch.Tensor]:
    """Pure-dict Flax state -> a torch `state_dict` (same layouts, other names)."""
    state = {}
    for tree in (params, batch_stats):
        for layer, variables in tree.items():
            for name, value in variables.items():
                value = np.asarray(value)
                state[f"{layer}.{_FLAX_TO_TORCH[name]}"] = torch.tensor(value)
    if "batchnorm" in batch_stats:
        state["batchnorm.num_batches_tracked"] = torch.tensor(0)
    return state


def torch_to_flax(state_dict: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """A torch `state_dict` -> (params, batch_stats) as Flax pure dicts of numpy arrays."""
    params: dict = {}
    batch_stats: dict = {}
    for key, tensor in state_dict.items():
        layer, name = key.split(".")
        if name == "num_batches_tracked":
            continue
        value = tensor.detach().cpu().numpy()
        if name in ("running_mean", "running_var"):
            batch_stats.setdefault(layer, {})[name.removeprefix("running_")] = value
        elif layer == "batchnorm":
            params.setdefault(layer, {})["scale" if name == "weight" else "bias"] = value
        else:
            params.setdefault(layer, {})["kernel" if name == "weight" else "bias"] = value
    return params, batch_stats


class ImageDataset(torch.utils.data.Dataset):
    """One normalised (1, 28, 28) tensor per item, as torchvision's MNIST + ToTensor gives."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return torch.from_numpy(self.images[i]).float().div(255).unsqueeze(0), int(self.labels[i])


def tensor_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> Iterator:
    perm = torch.randperm(len(y))
    for start in range(0, len(y), batch_size):
        idx = perm[start : start + batch_size]
        yield x[idx], y[idx]


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


def random_split_indices(num_train: int, num_val: int) -> tuple[np.ndarray, np.ndarray]:
    """`torch.utils.data.random_split` of the training images, from torch's global RNG."""
    train_ds, val_ds = torch.utils.data.random_split(range(num_train + num_val), [num_train, num_val])
    return np.array(train_ds.indices), np.array(val_ds.indices)


@dataclasses.dataclass
class TorchResult:
    stage: str
    loop: str
    history: list[dict]
    test_loss: float
    test_accuracy: float
    model: nn.Module


def train(
    stage: str,
    data: MNIST,
    split: tuple[np.ndarray, np.ndarray] | None = None,
    *,
    epochs: int = 5,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 42,
    loop: str = "tensor",
    hidden: int | None = None,
    dropout: float | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> TorchResult:
    """Train one stage in PyTorch from `torch.manual_seed(seed)`.

    `split` gives the (train, validation) indices; pass the JAX run's for a fair
    comparison. Without it the split is `random_split`'s, and the `original` loop
    then draws every random number exactly as the original study's code does:
    split, initialisation, then each epoch's shuffle and its validation loader.
    """
    if loop not in LOOPS:
        raise ValueError(f"loop must be one of {LOOPS}, not {loop!r}")
    torch.manual_seed(seed)
    num_val = NUM_VALIDATION
    train_idx, val_idx = split if split is not None else random_split_indices(len(data.train_labels) - num_val, num_val)
    model = build_model(stage, hidden, dropout)
    loss = loss_fn(stage)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, fused=True if loop == "fused" else None)
    trained = model
    if loop == "compile":  # the forward and backward graphs, and Adam's update; one graph per batch shape
        trained, optimizer.step = torch.compile(model, dynamic=False), torch.compile(optimizer.step)
    train_x, train_y = as_tensors(data.train_images[train_idx], data.train_labels[train_idx])
    val_x, val_y = as_tensors(data.train_images[val_idx], data.train_labels[val_idx])

    def loader(idx, shuffle):
        dataset = ImageDataset(data.train_images[idx], data.train_labels[idx])
        return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle)

    train_loader, val_loader = loader(train_idx, True), loader(val_idx, False)
    history = []
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        batches = train_loader if loop == "original" else tensor_batches(train_x, train_y, batch_size)
        loss_sum, correct = train_epoch(trained, optimizer, loss, batches)
        val_loss, val_acc = evaluate(trained, loss, val_loader if loop == "original" else [(val_x, val_y)])
        row = {
            "epoch": epoch,
            "train_loss": loss_sum / len(train_y),
            "train_accuracy": correct / len(train_y),
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "seconds": time.perf_counter() - start,
        }
        history.append(row)
        if on_epoch:
            on_epoch(row)
    test_loss, test_acc = evaluate(trained, loss, [as_tensors(data.test_images, data.test_labels)])
    return TorchResult(stage, loop, history, test_loss, test_acc, model)


def original_draws(
    stage: str, num_train: int = 60_000, epochs: int = 5, batch_size: int = 128, seed: int = 42
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[dict, dict], list[np.ndarray]]:
    """What the original's code draws from `torch.manual_seed(seed)`, without training:
    the split, the initial weights (as Flax pure dicts) and each epoch's order of
    training indices. Exact for the stages without dropout, whose masks would
    draw from the same generator between epochs."""
    torch.manual_seed(seed)
    train_idx, val_idx = random_split_indices(num_train - NUM_VALIDATION, NUM_VALIDATION)
    initial = torch_to_flax(build_model(stage).state_dict())
    positions = torch.utils.data.DataLoader(range(len(train_idx)), batch_size=batch_size, shuffle=True)
    validation = torch.utils.data.DataLoader(range(len(val_idx)), batch_size=batch_size)
    orders = []
    for _ in range(epochs):
        orders.append(train_idx[torch.cat(list(positions)).numpy()])
        iter(validation)  # the validation loader draws a worker seed each epoch
    return (train_idx, val_idx), initial, orders
