"""What `benchmark.py` measures: JAX against the PyTorch reference, against the machine's
matmul ceiling, where a training pass goes (`jax.profiler`), and `train.py` end to end with
and without the compilation cache (fresh processes). PyTorch is imported only to time it.

Every figure is measured in the calling process; nothing is typed in.
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable

import jax
import jax.numpy as jnp
from flax import nnx
from jax.profiler import ProfileData

from mnist_jax.comparison import jax_split, steady_seconds_per_epoch
from mnist_jax.data import MNIST, NUM_VALIDATION
from mnist_jax.evaluate import make_evaluate, to_inputs
from mnist_jax.models import NUM_CLASSES, NUM_PIXELS
from mnist_jax.train import (
    Setup,
    TrainConfig,
    epoch_keys,
    epoch_order,
    make_train_epoch,
    make_train_step,
    prepare,
    train,
)

SCRIPTS = Path(__file__).resolve().parent


def matmul_ceiling(size: int = 2048, repeats: int = 20) -> float:
    """FLOP/s of a (size x size) @ (size x size) float32 matmul under XLA: the best of
    `repeats` timed calls after a warm-up."""
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    matmul(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def cpu_model() -> str:
    """The processor's name, e.g. 'AMD EPYC' (Linux), else the architecture."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine()


def layer_sizes(config: TrainConfig) -> list[tuple[int, int]]:
    hidden = config.hidden or config.spec.hidden
    if not config.spec.is_mlp:
        return [(NUM_PIXELS, NUM_CLASSES)]
    return [(NUM_PIXELS, hidden), (hidden, NUM_CLASSES)]


def flops_per_example(config: TrainConfig) -> tuple[int, int]:
    """Matmul FLOPs of one example: (forward, forward + backward).

    The backward pass computes every weight gradient (as many FLOPs as the
    forward) and the gradient of every layer's input except the first's, the
    pixels, which nothing needs. Elementwise work (bias, ReLU, BatchNorm, loss,
    Adam) is left out: XLA's own count of a step is 3-9% higher.
    """
    layers = layer_sizes(config)
    forward = sum(2 * fan_in * fan_out for fan_in, fan_out in layers)
    input_grads = sum(2 * fan_in * fan_out for fan_in, fan_out in layers[1:])
    return forward, 2 * forward + input_grads


def epoch_flops(config: TrainConfig, num_train: int) -> int:
    """FLOPs of one epoch as `train` runs it: a training pass and a validation pass."""
    forward, train_step = flops_per_example(config)
    return num_train * train_step + NUM_VALIDATION * forward


def time_jax(config: TrainConfig, data: MNIST, seeds: list[int]) -> dict:
    """Compile time and steady-state seconds per epoch of `train` (one seed) or of
    `study.train_seeds` (several seeds in one program)."""
    if len(seeds) == 1:
        run = train(dataclasses.replace(config, seed=seeds[0]), data)
        return {"compile_seconds": run.compile_seconds, "epoch_seconds": steady_seconds_per_epoch([run.history])}
    from mnist_jax.study import train_seeds

    result = train_seeds(config, data, seeds)
    return {"compile_seconds": result.compile_seconds, "epoch_seconds": result.train_seconds / config.epochs}


def time_torch(config: TrainConfig, data: MNIST, seeds: list[int], loop: str) -> dict:
    """Steady-state seconds per epoch of the PyTorch reference, seeds one after another
    (on the JAX run's split, so both see the same data), and what its first epochs took
    beyond that (for `compile`, compiling)."""
    from mnist_jax import torch_reference

    epoch = warm_up = 0.0
    for seed in seeds:
        run = torch_reference.train(
            config.stage, data, jax_split(seed, len(data.train_labels)), epochs=config.epochs, batch_size=config.batch_size, seed=seed, loop=loop,
            hidden=config.hidden, dropout=config.dropout,
        )
        steady = steady_seconds_per_epoch([run.history])
        epoch, warm_up = epoch + steady, warm_up + run.history[0]["seconds"] - steady
    return {"epoch_seconds": epoch, "warm_up_seconds": warm_up}


def time_study(config: TrainConfig, data: MNIST, seeds: int, single_epoch_seconds: float, width: int | None) -> dict:
    """`study.train_seeds` of `seeds` seeds, `width` models side by side (None: all, vmap):
    compile seconds, seconds per epoch, in all and per model, and per model against one
    run's epoch."""
    from mnist_jax.study import train_seeds, vmap_width

    result = train_seeds(config, data, list(range(seeds)), width=width)
    epoch = result.train_seconds / config.epochs
    return {"stage": config.stage, "seeds": seeds, "seeds_at_once": result.models_at_once,
            "width": width or seeds, "backend_default": width == vmap_width(),
            "compile_seconds": result.compile_seconds, "epoch_seconds": epoch, "epoch_seconds_per_model": epoch / seeds,
            "per_model_over_single": epoch / seeds / single_epoch_seconds}


def nnx_jit_loop(config: TrainConfig, setup: Setup) -> tuple[Callable, Callable]:
    """Flax's own idiom, as its MNIST example writes it: the model and an `nnx.Optimizer`
    as objects, an `nnx.jit` step per batch driven by a Python loop, an `nnx.jit`
    evaluation. (train_pass(images, labels, order, dropout key), evaluate(images, labels))."""
    model = nnx.merge(setup.graphdef, setup.state.params, setup.state.batch_stats)
    optimizer = nnx.Optimizer(model, setup.tx, wrt=nnx.Param)
    loss_fn = config.spec.loss

    @nnx.jit
    def step(model, optimizer, x, y, key):
        def objective(model):
            return loss_fn(model(to_inputs(x), train=True, dropout_key=key, dropout_rate=config.dropout_rate), y)

        loss, grads = nnx.value_and_grad(objective)(model)
        optimizer.update(model, grads)
        return loss

    @nnx.jit
    def evaluate(model, x, y):
        logits = model(to_inputs(x))
        return loss_fn(logits, y), jnp.mean(logits.argmax(-1) == y)

    def train_pass(images, labels, order, dropout_key):
        for i, start in enumerate(range(0, len(order), config.batch_size)):
            idx = order[start : start + config.batch_size]
            loss = step(model, optimizer, images[idx], labels[idx], jax.random.fold_in(dropout_key, i))
        return loss

    return train_pass, lambda images, labels: evaluate(model, images, labels)


def time_nnx_jit(config: TrainConfig, data: MNIST, seeds: list[int]) -> float:
    """Steady-state seconds per epoch of `nnx_jit_epoch`, seeds one after another."""
    total = 0.0
    for seed in seeds:
        setup = prepare(dataclasses.replace(config, seed=seed), data)
        images, labels, _, _ = setup.data
        validation = images[setup.val_idx], labels[setup.val_idx]
        train_pass, evaluate = nnx_jit_loop(config, setup)
        seconds = []
        for number in range(1, config.epochs + 1):
            start = time.perf_counter()
            shuffle_key, dropout_key = epoch_keys(setup.epochs_key, number)
            train_pass(images, labels, epoch_order(setup.train_idx, shuffle_key), dropout_key)
            jax.block_until_ready(evaluate(*validation))
            seconds.append(time.perf_counter() - start)
        total += statistics.median(seconds[1:] or seconds)
    return total


def benchmark_stages(
    configs: list[TrainConfig], data: MNIST, seeds: list[int], torch_loops: list[str], rounds: int = 1,
    on_round: Callable[[int], None] | None = None,
) -> list[dict]:
    """Each stage: JAX, Flax's `nnx.jit` loop and each PyTorch loop, seconds per epoch,
    samples/s, speed-ups and FLOP efficiency. A round measures every stage in turn, each
    stage the matmul ceiling, then JAX, the `nnx.jit` loop, then each PyTorch loop: a slow spell of a shared machine falls
    on one round of every stage and every framework, not on all rounds of one stage.
    Each figure is the median over rounds (`rounds` keeps them all), and `efficiency`
    the median of each round's achieved FLOP/s over that round's ceiling."""
    num_train = len(data.train_labels) - NUM_VALIDATION
    times: list[dict[str, list[float]]] = [{} for _ in configs]
    for r in range(rounds):
        for config, measured in zip(configs, times):
            measured.setdefault("ceiling_flops", []).append(matmul_ceiling())
            for name, seconds in time_jax(config, data, seeds).items():
                measured.setdefault(f"jax_{name}", []).append(seconds)
            measured.setdefault("nnx_jit_epoch_seconds", []).append(time_nnx_jit(config, data, seeds))
            for loop in torch_loops:
                for name, seconds in time_torch(config, data, seeds, loop).items():
                    measured.setdefault(f"torch_{loop}_{name}", []).append(seconds)
        if on_round:
            on_round(r + 1)
    return [_stage_row(config, measured, len(seeds), num_train, torch_loops) for config, measured in zip(configs, times)]


def _stage_row(config: TrainConfig, measured: dict[str, list[float]], num_seeds: int, num_train: int, torch_loops: list[str]) -> dict:
    flops = num_seeds * epoch_flops(config, num_train)
    row = {"stage": config.stage, **{name: statistics.median(values) for name, values in measured.items()}}
    epoch = row["jax_epoch_seconds"]
    row["jax_samples_per_second"] = num_seeds * num_train / epoch
    row["flops_per_example"] = flops_per_example(config)[1]
    row["achieved_flops"] = flops / epoch
    row["efficiency"] = statistics.median(
        flops / seconds / ceiling for seconds, ceiling in zip(measured["jax_epoch_seconds"], measured["ceiling_flops"])
    )
    row["nnx_jit_samples_per_second"] = num_seeds * num_train / row["nnx_jit_epoch_seconds"]
    row["speedup_vs_nnx_jit"] = row["nnx_jit_epoch_seconds"] / epoch
    for loop in torch_loops:
        torch_epoch = row[f"torch_{loop}_epoch_seconds"]
        row[f"torch_{loop}_samples_per_second"] = num_seeds * num_train / torch_epoch
        row[f"speedup_vs_torch_{loop}"] = torch_epoch / epoch
    row["rounds"] = measured
    return row


# What JAX does to make each program, by the time spans `jax.monitoring` records.
JAX_PHASES = {
    "trace": "/jax/core/compile/jaxpr_trace_duration",
    "lower": "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "compile": "/jax/core/compile/backend_compile_duration",  # or fetch from the persistent cache
}
# `python -c TIMED_RUN SPANS SCRIPT ARGS...` runs SCRIPT as __main__ and writes to SPANS, as
# JSON, the (event, start, end) time spans that `jax.monitoring` records in it.
TIMED_RUN = """
import atexit, json, runpy, sys
import jax.monitoring
spans = []
jax.monitoring.register_event_time_span_listener(lambda event, start, end, **_: spans.append((event, start, end)))
out, sys.argv = sys.argv[1], sys.argv[2:]
atexit.register(lambda: open(out, "w").write(json.dumps(spans)))
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def covered_seconds(intervals: Iterable[tuple[float, float]]) -> float:
    """Length of the union of (start, end) intervals: overlapping or nested ones count once."""
    total, reach = 0.0, -math.inf
    for start, end in sorted(intervals):
        total += max(0.0, end - max(start, reach))
        reach = max(reach, end)
    return total


def jax_phase_seconds(spans: list[tuple[str, float, float]]) -> dict[str, float]:
    """Wall seconds a process spent in each of `JAX_PHASES` (a function traced inside
    another's trace counts once)."""
    return {phase: covered_seconds((start, end) for name, start, end in spans if name == event) for phase, event in JAX_PHASES.items()}


def end_to_end(train_args: list[str], rounds: int = 1) -> dict:
    """Wall time of `scripts/train.py <train_args>` as a fresh process, import to exit:
    cold (an empty compilation cache) and then warm (the cache the cold run filled),
    `rounds` times with a new cache each; medians. Each run also reports the seconds
    JAX spent tracing, lowering and compiling (warm: fetching) its programs."""
    pairs = []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as tmp:
            cache, spans = Path(tmp) / "cache", Path(tmp) / "spans.json"
            command = [
                sys.executable, "-c", TIMED_RUN, str(spans), str(SCRIPTS / "train.py"), *train_args,
                "--out", f"{tmp}/run", "--overwrite", "--compile-cache", str(cache),
            ]
            pair = {}
            for run in ("cold", "warm"):
                start = time.perf_counter()
                subprocess.run(command, check=True, capture_output=True)
                pair[f"{run}_seconds"] = time.perf_counter() - start
                pair[f"{run}_jax_seconds"] = jax_phase_seconds(json.loads(spans.read_text()))
            pair["cached_programs"] = sorted(entry.name.split("-")[0] for entry in cache.iterdir())
            pair["cache_entries"] = len(pair["cached_programs"])
            pairs.append(pair)
    return {
        "command": " ".join(["python", "scripts/train.py", *train_args]),
        "rounds": pairs,
        **{key: statistics.median(p[key] for p in pairs) for key in ("cold_seconds", "warm_seconds", "cache_entries")},
        **{
            f"{run}_jax_seconds": {phase: statistics.median(p[f"{run}_jax_seconds"][phase] for p in pairs) for phase in JAX_PHASES}
            for run in ("cold", "warm")
        },
        "warm_over_cold": statistics.median(p["warm_seconds"] / p["cold_seconds"] for p in pairs),
    }


def with_in_out_kernels(model: nnx.Module) -> nnx.Module:
    """A copy of `model` whose layers are `nnx.Linear`, kernels stored (in, out), same values."""
    model = nnx.clone(model)
    for name, layer in list(vars(model).items()):
        if isinstance(layer, nnx.Einsum):
            fan_out, fan_in = layer.kernel.shape
            linear = nnx.Linear(fan_in, fan_out, rngs=nnx.Rngs(0))
            linear.kernel[...], linear.bias[...] = layer.kernel[...].T, layer.bias[...]
            setattr(model, name, linear)
    return model


def first_epoch(config: TrainConfig, data: MNIST) -> tuple[Setup, jax.Array, jax.Array]:
    """Epoch 1 as `train` starts it: its setup, the batches' order and the dropout key."""
    setup = prepare(config, data)
    shuffle_key, dropout_key = epoch_keys(setup.epochs_key, 1)
    return setup, epoch_order(setup.train_idx, shuffle_key), dropout_key


def loop_variants(config: TrainConfig, data: MNIST, repeats: int = 3) -> dict[str, float]:
    """Seconds per training pass of one stage, driven five ways over the same batches
    (what each of this project's choices buys), the floor set by its two largest
    matmuls, and the rest of an epoch (shuffle, two ways, and validation pass). Median
    of `repeats`, round robin."""
    setup, order, dropout_key = first_epoch(config, data)
    graphdef, tx, state, train_idx, val_idx = setup.graphdef, setup.tx, setup.state, setup.train_idx, setup.val_idx
    images, labels, _, _ = setup.data
    shuffle_key = epoch_keys(setup.epochs_key, 1)[0]
    starts = range(0, len(order), config.batch_size)
    loss_fn = config.spec.loss
    evaluate = jax.jit(make_evaluate(graphdef, loss_fn))
    val_images, val_labels = images[val_idx], labels[val_idx]

    train_epoch = jax.jit(make_train_epoch(graphdef, loss_fn, tx, config.batch_size))
    float_images = to_inputs(images)
    model = nnx.merge(graphdef, state.params, state.batch_stats)
    in_out_graphdef, in_out_params, in_out_stats = nnx.split(with_in_out_kernels(model), nnx.Param, nnx.BatchStat)
    in_out_params = nnx.as_pure(in_out_params)
    in_out_state = state._replace(params=in_out_params, batch_stats=nnx.as_pure(in_out_stats), opt_state=tx.init(in_out_params))
    in_out_epoch = jax.jit(make_train_epoch(in_out_graphdef, loss_fn, tx, config.batch_size))
    step = jax.jit(make_train_step(graphdef, loss_fn, tx))

    def jit_per_batch():
        s = state
        for i, start in enumerate(starts):
            idx = order[start : start + config.batch_size]
            s, _ = step(s, images[idx], labels[idx], jax.random.fold_in(dropout_key, i))
        return s

    nnx_jit_pass = nnx_jit_loop(config, setup)[0]

    fan_in, fan_out = layer_sizes(config)[0]
    batches = order[: len(order) // config.batch_size * config.batch_size].reshape(-1, config.batch_size)

    @jax.jit
    def first_layer_matmuls(kernel, images, batches):  # the floor: the two big matmuls of every step, nothing else
        def body(kernel, idx):
            x = to_inputs(images[idx])
            h = x @ kernel.T
            return kernel - 1e-9 * (h.T @ x), None

        return jax.lax.scan(body, kernel, batches)[0]

    kernel = jnp.zeros((fan_out, fan_in), jnp.float32)
    permutation_order = jax.jit(lambda idx, key: idx[jax.random.permutation(key, idx.shape[0])])
    variants = {
        "lax.scan over the epoch, uint8 images on device (this project)": lambda: train_epoch(
            state, images, labels, order, dropout_key
        ),
        "lax.scan over the epoch, float32 images on device": lambda: train_epoch(
            state, float_images, labels, order, dropout_key
        ),
        "lax.scan over the epoch, nnx.Linear's (in, out) kernels": lambda: in_out_epoch(
            in_out_state, images, labels, order, dropout_key
        ),
        "jax.jit step per batch, Python loop": jit_per_batch,
        "nnx.jit step per batch, Python loop (NNX objects)": lambda: nnx_jit_pass(images, labels, order, dropout_key),
        "floor: gather each batch, the first layer's forward and weight-gradient matmuls, nothing else": lambda: first_layer_matmuls(
            kernel, images, batches
        ),
        "rest of the epoch: shuffle (train.shuffle of the training indices)": lambda: epoch_order(
            train_idx, shuffle_key
        ),
        "the same shuffle by jax.random.permutation (two sorts of (key, value) pairs)": lambda: permutation_order(
            train_idx, shuffle_key
        ),
        "rest of the epoch: validation pass (6,000 images)": lambda: evaluate(
            state.params, state.batch_stats, val_images, val_labels
        ),
    }
    times = {name: [] for name in variants}
    for name, run in variants.items():
        jax.block_until_ready(run())  # compile
    for _ in range(repeats):
        for name, run in variants.items():
            start = time.perf_counter()
            jax.block_until_ready(run())
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def hlo_ops(hlo_text: str) -> tuple[dict[str, str], set[str]]:
    """The instructions of a compiled HLO module, name -> opcode, and the names of those
    that multiply matrices: dots, and fusions (XLA:CPU's library calls included) whose
    computation holds a dot."""
    opcodes, called, with_dot, computation = {}, {}, set(), None
    for line in hlo_text.splitlines():
        if header := re.match(r"(?:ENTRY )?%([\w.\-]+) \(", line):
            computation = header.group(1)
        elif instruction := re.match(r"\s*(?:ROOT )?%([\w.\-]+) = .*? ([\w\-]+)\(", line):
            name, opcode = instruction.groups()
            opcodes[name] = opcode
            if opcode == "dot":
                with_dot.add(computation)
            if calls := re.search(r"calls=%([\w.\-]+)", line):
                called[name] = calls.group(1)
    matmuls = {name for name, opcode in opcodes.items() if opcode == "dot" or called.get(name) in with_dot}
    return opcodes, matmuls


def profile_pass(config: TrainConfig, data: MNIST, repeats: int = 3) -> dict:
    """Where a training pass of a stage goes: the project's compiled epoch (epoch 1's
    batches) run under `jax.profiler`, its ops' time summed by kind, and the time when no
    op ran; median of `repeats` traced passes. XLA names each op's trace event after its
    HLO instruction; control flow (the scan's loop) is left out, its time being its body's.
    The matmuls' FLOP/s are the pass's counted FLOPs over the time of the matmul ops alone."""
    setup, order, dropout_key = first_epoch(config, data)
    images, labels, _, _ = setup.data
    args = (setup.state, images, labels, order, dropout_key)
    epoch = jax.jit(make_train_epoch(setup.graphdef, config.spec.loss, setup.tx, config.batch_size)).lower(*args).compile()
    jax.block_until_ready(epoch(*args))
    opcodes, matmuls = hlo_ops(epoch.as_text())
    passes = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as trace_dir:
            jax.profiler.start_trace(trace_dir)
            start = time.perf_counter()
            jax.block_until_ready(epoch(*args))
            wall = time.perf_counter() - start
            jax.profiler.stop_trace()
            (trace,) = Path(trace_dir).rglob("*.xplane.pb")
            planes = ProfileData.from_file(str(trace)).planes
        events = (event for plane in planes for line in plane.lines for event in line.events)
        ops = [ev for ev in events if opcodes.get(ev.name) not in (None, "while", "conditional", "call")]
        matmul_seconds = sum(ev.duration_ns for ev in ops if ev.name in matmuls) / 1e9
        busy_seconds = covered_seconds((ev.start_ns / 1e9, ev.end_ns / 1e9) for ev in ops)
        if not matmul_seconds:
            raise RuntimeError(f"no trace event of {jax.default_backend()} is named after a matmul of the program")
        passes.append({
            "pass_seconds": wall,
            "matmul_seconds": matmul_seconds,
            "other_seconds": sum(ev.duration_ns for ev in ops if ev.name not in matmuls) / 1e9,
            "between_ops_seconds": wall - busy_seconds,  # XLA's runtime between ops, and any wait
            "ops_per_step": len(ops) / math.ceil(len(order) / config.batch_size),
            "matmul_calls": sum(ev.name in matmuls for ev in ops),
            "matmul_flops": len(order) * flops_per_example(config)[1] / matmul_seconds,
        })
    return {"stage": config.stage, **{key: statistics.median(p[key] for p in passes) for key in passes[0]}, "passes": passes}


class StandardDropout(nnx.Module):
    """`nnx.Dropout` behind the call of `models.Dropout`, to time one against the other."""

    def __init__(self, rate: float):
        self.dropout = nnx.Dropout(rate)

    def __call__(self, x: jax.Array, key: jax.Array, rate: jax.Array) -> jax.Array:
        return self.dropout(x, deterministic=False, rngs=key)


def epoch_program(model: nnx.Module, config: TrainConfig, setup: Setup, order: jax.Array, dropout_key: jax.Array) -> Callable:
    """A training pass of `model` over epoch 1's batches, ready to time."""
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    params = nnx.as_pure(params)
    state = setup.state._replace(params=params, batch_stats=nnx.as_pure(batch_stats), opt_state=setup.tx.init(params))
    images, labels, _, _ = setup.data
    epoch = jax.jit(make_train_epoch(graphdef, config.spec.loss, setup.tx, config.batch_size))
    return lambda: epoch(state, images, labels, order, dropout_key)


def standard_parts(data: MNIST, rounds: int = 9) -> list[dict]:
    """Each piece this project writes in place of a standard one, against that piece: both
    timed in each of `rounds` rounds (which goes first alternating), on the same inputs.
    Reports the medians, the median of the per-round ratios (ours / standard), and the
    median saving per epoch as a fraction of the stage's training pass."""
    import orbax.checkpoint as ocp

    from mnist_jax.checkpoint import save_checkpoint
    from mnist_jax.train import RunResult, shuffle

    def model(setup: Setup):
        return nnx.merge(setup.graphdef, setup.state.params, setup.state.batch_stats)

    programs = {}
    for stage in ("linear_ce", "mlp_dropout", "mlp_bn"):
        config = TrainConfig(stage)
        setup, order, dropout_key = first_epoch(config, data)
        programs[stage] = (config, setup, order, dropout_key, epoch_program(model(setup), config, setup, order, dropout_key))
    bn_config, bn_setup, bn_order, bn_key, bn_pass = programs["mlp_bn"]
    do_config, do_setup, do_order, do_key, do_pass = programs["mlp_dropout"]
    standard_dropout = nnx.clone(model(do_setup))
    standard_dropout.dropout = StandardDropout(standard_dropout.dropout.rate)

    run = RunResult(bn_config, "", bn_setup.graphdef, bn_setup.state, bn_setup.state, 1, [])
    checkpointer = ocp.StandardCheckpointer()
    orbax_tree = {"final": {"params": nnx.to_pure_dict(run.final.params), "batch_stats": nnx.to_pure_dict(run.final.batch_stats)},
                  "best": {"params": nnx.to_pure_dict(run.best.params), "batch_stats": nnx.to_pure_dict(run.best.batch_stats)},
                  "opt_state": jax.tree.leaves(run.final.opt_state)}
    train_idx = bn_setup.train_idx
    key = jax.random.key(0)
    permutation = jax.jit(lambda idx, key: idx[jax.random.permutation(key, idx.shape[0])])
    ours_shuffle = jax.jit(shuffle)

    with tempfile.TemporaryDirectory() as tmp:
        def orbax_save():
            checkpointer.save(Path(tmp) / "orbax", orbax_tree, force=True)
            checkpointer.wait_until_finished()

        pieces = [
            ("(out, in) kernels (`nnx.Einsum`) against `nnx.Linear`'s (in, out)", "mlp_bn",
             bn_pass, epoch_program(with_in_out_kernels(model(bn_setup)), bn_config, bn_setup, bn_order, bn_key)),
            ("`models.Dropout` (packed random bits) against `nnx.Dropout`", "mlp_dropout",
             do_pass, epoch_program(standard_dropout, do_config, do_setup, do_order, do_key)),
            ("`train.shuffle` against `jax.random.permutation` (54,000 indices)", "linear_ce",
             lambda: ours_shuffle(key, train_idx), lambda: permutation(train_idx, key)),
            ("`checkpoint.npz` against orbax's `StandardCheckpointer` (one save)", "mlp_bn",
             lambda: save_checkpoint(run, tmp), orbax_save),
        ]
        times = [([], [], []) for _ in pieces]  # ours, standard, the stage's pass
        for _, _, ours, standard in pieces:
            jax.block_until_ready((ours(), standard()))  # compile, warm up
        for r in range(rounds):
            for (_, stage, ours, standard), (t_ours, t_standard, t_pass) in zip(pieces, times):
                for fn, out in ((ours, t_ours), (standard, t_standard))[:: 1 if r % 2 else -1]:
                    start = time.perf_counter()
                    jax.block_until_ready(fn())
                    out.append(time.perf_counter() - start)
                start = time.perf_counter()
                jax.block_until_ready(programs[stage][-1]())
                t_pass.append(time.perf_counter() - start)
        checkpointer.close()
    rows = []
    for (name, stage, _, _), (t_ours, t_standard, t_pass) in zip(pieces, times):
        rows.append({
            "piece": name,
            "stage": stage,
            "ours_seconds": statistics.median(t_ours),
            "standard_seconds": statistics.median(t_standard),
            "ratio": statistics.median(o / s for o, s in zip(t_ours, t_standard)),
            "saving_of_pass": statistics.median((s - o) / p for o, s, p in zip(t_ours, t_standard, t_pass)),
            "pass_seconds": statistics.median(t_pass),
            "rounds": {"ours": t_ours, "standard": t_standard, "pass": t_pass},
        })
    return rows
