"""Speed of every stage: JAX against Flax's `nnx.jit` loop, the PyTorch reference and the
machine's matmul ceiling; `train.py` cold and warm; the pieces this project writes in place
of standard ones. Every figure is timed here; PyTorch is imported only to time it.
python scripts/benchmark.py --stages all --epochs 3"""

from mnist_jax import cli, files  # first: its signal handlers cover the imports after it

import functools
import importlib.metadata
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mnist_jax.comparison import jax_split, steady_seconds_per_epoch
from mnist_jax.data import MNIST, NUM_CLASSES, NUM_PIXELS, NUM_VALIDATION
from mnist_jax.evaluate import make_evaluate, to_inputs
from mnist_jax.train import (
    TrainConfig, device_data, device_description, epoch_keys, graph, make_optimizer, make_train_epoch, prepare,
    shuffle, train,
)


class Setup(NamedTuple):
    """What a timed pass starts from: `train.prepare`'s `Start` with its model and data."""

    graphdef: nnx.GraphDef
    tx: optax.GradientTransformation
    epochs_key: jax.Array
    state: object
    train_idx: jax.Array
    val_idx: jax.Array
    data: tuple


def set_up(config: TrainConfig, data: MNIST) -> Setup:
    return Setup(graph(config), make_optimizer(config), *prepare(config, data), device_data(data))

RESULT = "benchmark.json"
TORCH_LOOPS = ["tensor", "original", "fused", "compile"]


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def matmul_ceiling(size: int = 2048, repeats: int = 20) -> float:
    """FLOP/s of a (size x size) @ (size x size) float32 matmul under XLA: the best of `repeats`."""
    a, b = jax.random.normal(jax.random.key(0), (2, size, size), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    matmul(a, b).block_until_ready()
    return 2 * size**3 / min(timed(lambda: matmul(a, b)) for _ in range(repeats))


def flops_per_example(config: TrainConfig) -> tuple[int, int]:
    """Matmul FLOPs of one example: (forward, forward + backward). The backward pass computes
    every weight gradient and every layer's input gradient but the first's (the pixels'); with a frozen hidden layer
    (random features), the output layer's weight gradient alone; elementwise work is left out (XLA's own count of a
    step is 3-9% higher)."""
    hidden = config.hidden or config.spec.hidden
    layers = [(NUM_PIXELS, hidden), (hidden, NUM_CLASSES)] if config.spec.is_mlp else [(NUM_PIXELS, NUM_CLASSES)]
    forward = sum(2 * fan_in * fan_out for fan_in, fan_out in layers)
    if config.spec.frozen_hidden:
        return forward, forward + 2 * hidden * NUM_CLASSES
    return forward, 2 * forward + sum(2 * fan_in * fan_out for fan_in, fan_out in layers[1:])


def time_jax(config: TrainConfig, data: MNIST) -> dict:
    """Compile seconds and steady seconds per epoch of `train`, and of one evaluation of its final model on the test
    images (what a grid's epoch also runs: `time_study`)."""
    run = train(config, data)
    evaluate = jax.jit(make_evaluate(graph(config), config.spec.loss))
    test = lambda: evaluate(run.final.params, run.final.batch_stats, *device_data(data)[2:])  # noqa: E731
    timed(test)  # compile, warm up
    return {"compile_seconds": run.compile_seconds, "epoch_seconds": steady_seconds_per_epoch([run.history]),
            "test_seconds": statistics.median(timed(test) for _ in range(5))}


def time_torch(config: TrainConfig, data: MNIST, loop: str) -> dict:
    """Steady seconds per epoch of a PyTorch `loop` on the JAX run's split, and what its first
    epoch took beyond that (for `compile`, compiling)."""
    from mnist_jax import torch_reference

    run = torch_reference.train(
        config.stage, data, jax_split(config.seed, len(data.train_labels)), epochs=config.epochs, batch_size=config.batch_size,
        seed=config.seed, loop=loop, hidden=config.hidden, dropout=config.dropout,
    )
    steady = steady_seconds_per_epoch([run.history])
    return {"epoch_seconds": steady, "warm_up_seconds": run.history[0]["seconds"] - steady}


def time_nnx_jit(config: TrainConfig, data: MNIST) -> float:
    """Steady seconds per epoch of Flax's own idiom, as its MNIST example writes it: the model
    and an `nnx.Optimizer` as objects, an `nnx.jit` step per batch from a Python loop, an
    `nnx.jit` evaluation."""
    loss_fn = config.spec.loss

    @nnx.jit
    def step(model, optimizer, x, y, key):
        def objective(model):
            train_mode = {"train": True, "dropout_key": key, "dropout_rate": config.dropout_rate} if config.spec.is_mlp else {}
            return loss_fn(model(to_inputs(x), **train_mode), y)

        loss, grads = nnx.value_and_grad(objective)(model)
        optimizer.update(model, grads)
        return loss

    @nnx.jit
    def evaluate(model, x, y):
        logits = model(to_inputs(x))
        return loss_fn(logits, y), jnp.mean(logits.argmax(-1) == y)

    setup = set_up(config, data)
    model = nnx.merge(setup.graphdef, setup.state.params, setup.state.batch_stats)
    optimizer = nnx.Optimizer(model, setup.tx, wrt=nnx.Param)
    images, labels, _, _ = setup.data

    def epoch(number: int):
        shuffle_key, dropout_key = epoch_keys(setup.epochs_key, number)
        order = shuffle(shuffle_key, setup.train_idx)
        for i, start in enumerate(range(0, len(order), config.batch_size)):
            idx = order[start : start + config.batch_size]
            step(model, optimizer, images[idx], labels[idx], jax.random.fold_in(dropout_key, i))
        return evaluate(model, images[setup.val_idx], labels[setup.val_idx])

    seconds = [timed(lambda: epoch(number)) for number in range(1, config.epochs + 1)]
    return statistics.median(seconds[1:] or seconds)


def benchmark_stages(configs: list[TrainConfig], data: MNIST, torch_loops: list[str], rounds: int,
                     on_round: Callable[[], None]) -> list[dict]:
    """Each stage's seconds per epoch: JAX, the `nnx.jit` loop, each PyTorch loop. A round
    measures every stage in turn (the ceiling, then each framework), so a slow spell of a
    shared machine falls on one round of all, not all rounds of one; figures are medians over
    rounds (`rounds` keeps them all) but JAX's compile time, the first round's, `efficiency` the median of each
    round's FLOP/s over its ceiling."""
    times: list[dict[str, list[float]]] = [{} for _ in configs]
    for _ in range(rounds):
        for config, measured in zip(configs, times):
            figures = {"ceiling_flops": matmul_ceiling(), **{f"jax_{k}": v for k, v in time_jax(config, data).items()},
                       "nnx_jit_epoch_seconds": time_nnx_jit(config, data)}
            for loop in torch_loops:
                figures.update({f"torch_{loop}_{k}": v for k, v in time_torch(config, data, loop).items()})
            for key, value in figures.items():
                measured.setdefault(key, []).append(value)
        on_round()
    examples = len(data.train_labels) - NUM_VALIDATION
    rows = []
    for config, measured in zip(configs, times):
        row = {"stage": config.stage, **{key: statistics.median(values) for key, values in measured.items()}}
        row["jax_compile_seconds"] = measured["jax_compile_seconds"][0]  # (a process compiles a stage once: later rounds reuse it)
        epoch, (forward, train_step) = row["jax_epoch_seconds"], flops_per_example(config)
        flops = examples * train_step + NUM_VALIDATION * forward  # a training and a validation pass
        row.update(jax_samples_per_second=examples / epoch, flops_per_example=train_step)
        row["efficiency"] = statistics.median(flops / s / c for s, c in zip(measured["jax_epoch_seconds"], measured["ceiling_flops"]))
        row |= {f"speedup_vs_{peer}": row[f"{peer}_epoch_seconds"] / epoch for peer in ["nnx_jit", *(f"torch_{loop}" for loop in torch_loops)]}
        rows.append({**row, "rounds": measured})
    return rows


PARTS = ("matmuls", "optimizer", "inputs", "other ops", "between ops")  # where a traced step goes (`profile_pass`)


def hlo_parts(hlo_text: str) -> dict[str, str]:
    """Each instruction of a compiled HLO module -> its part of a step: `matmuls` (a dot, or a fusion that holds one:
    XLA:CPU's library calls), `optimizer` and `inputs` (`train.make_train_step`'s named scopes), or `other ops`.
    Control flow (the scan's loop, its calls) is left out: its time is its body's."""
    parts, called, with_dot, computation = {}, {}, set(), None
    for line in hlo_text.splitlines():
        if header := re.match(r"(?:ENTRY )?%([\w.\-]+) \(", line):
            computation = header.group(1)
        elif instruction := re.match(r"\s*(?:ROOT )?%([\w.\-]+) = .*? ([\w\-]+)\(", line):
            name, opcode = instruction.groups()
            if opcode == "dot":
                with_dot.add(computation)
            if calls := re.search(r"calls=%([\w.\-]+)", line):
                called[name] = calls.group(1)
            scope = re.search(r'op_name="([^"]*)"', line)
            scope = scope.group(1) if scope else ""
            parts[name] = (None if opcode in ("while", "conditional", "call", "parameter", "get-tuple-element", "tuple") else
                           "dot" if opcode == "dot" else next((part for part in ("optimizer", "inputs")  # as "jvp(inputs)" too
                                                               if re.search(rf"[/(]{part}[/)]", scope)), "other ops"))
    return {name: "matmuls" if part == "dot" or called.get(name) in with_dot else part
            for name, part in parts.items() if part is not None}


def covered_seconds(spans: list[tuple[int, int]]) -> float:
    """Seconds during which at least one of the (start ns, end ns) `spans` ran."""
    busy, reach = 0, None
    for start, end in sorted(spans):
        if reach is None or start > reach:
            busy, reach = busy + end - start, end
        elif end > reach:
            busy, reach = busy + end - reach, end
    return busy / 1e9


class NoOpEvents(RuntimeError):
    """This JAX's profiler names no trace event after an op of the program (jax 0.7.1's CPU runtime records none)."""


def profile_pass(config: TrainConfig, data: MNIST, repeats: int = 3) -> dict:
    """Where a step of a stage's training pass goes: the compiled epoch over epoch 1's batches run under `jax.profiler`,
    each op's time summed by its part (`hlo_parts`), and the time when no op ran (XLA's runtime between ops, the
    loop's); milliseconds per step, medians of `repeats` traced passes, with the same pass untraced (tracing adds
    to every op, so the parts are shares of a traced step)."""
    from jax.profiler import ProfileData

    run = training_pass(config, set_up(config, data))
    args, epoch = run.args, run.func.lower(*run.args).compile()
    parts = hlo_parts(epoch.as_text())
    steps = -(-len(args[3]) // config.batch_size)  # args: state, images, labels, the epoch's order, its dropout key
    untraced = statistics.median(timed(lambda: epoch(*args)) for _ in range(repeats + 1))
    passes = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as trace_dir:
            jax.profiler.start_trace(trace_dir)
            wall = timed(lambda: epoch(*args))
            jax.profiler.stop_trace()
            (trace,) = Path(trace_dir).rglob("*.xplane.pb")
            planes = ProfileData.from_file(str(trace)).planes
        ops = [event for plane in planes for line in plane.lines for event in line.events if event.name in parts]
        if not any(parts[op.name] == "matmuls" for op in ops):
            raise NoOpEvents(f"jax {jax.__version__} records no trace event of {jax.default_backend()} named after a matmul "
                             "of the program")
        spent = {part: sum(op.duration_ns for op in ops if parts[op.name] == part) / 1e9 for part in PARTS[:-1]}
        spent["between ops"] = wall - covered_seconds([(op.start_ns, op.end_ns) for op in ops])
        passes.append({"traced_step_ms": 1e3 * wall / steps, "ops_per_step": len(ops) / steps,
                       **{f"{part} ms": 1e3 * seconds / steps for part, seconds in spent.items()}})
    return {"stage": config.stage, "step_ms": 1e3 * untraced / steps, **{key: statistics.median(p[key] for p in passes) for key in passes[0]},
            "passes": passes}


def print_profiles(profiles: list[dict]) -> None:
    print("\nwhere a training step goes (jax.profiler; ms per step of a traced pass: tracing adds to every op, so read the parts as shares):")
    cli.print_table(["stage", "step ms", "traced step ms", "ops per step", *(f"{part} ms" for part in PARTS)], [
        [f"`{p['stage']}`", f"{p['step_ms']:.3f}", f"{p['traced_step_ms']:.3f}", f"{p['ops_per_step']:.0f}",
         *(f"{p[f'{part} ms']:.3f}" for part in PARTS)] for p in profiles])


TARGETS = {"torch_original": 5, "nnx_jit": 3}  # the speed-ups asked of an epoch over these loops (issue #29)


def print_budgets(report: dict) -> None:
    """What each target leaves a step (the loop's epoch over the factor, over the epoch's steps: its validation pass
    counted in), against what the step's matmuls and Adam alone take in the profile: no exact change goes below them."""
    print("\nwhat a target leaves a step against the profile's matmuls and optimizer (ms per step; the validation pass counted in the step):")
    rows = {r["stage"]: r for r in report["stages"]}
    profiles = [p for p in report["profiles"] if all(f"{loop}_epoch_seconds" in rows[p["stage"]] for loop in TARGETS)]
    head = ["stage", *(f"{factor}x `{loop.removeprefix('torch_').replace('nnx_jit', 'nnx.jit')}` allows" for loop, factor in TARGETS.items()),
            "matmuls + optimizer", "the rest of the traced step"]
    cli.print_table(head, [[f"`{p['stage']}`", *(f"{budget(rows[p['stage']], loop, factor):.3f}" for loop, factor in TARGETS.items()),
                            f"{p['matmuls ms'] + p['optimizer ms']:.3f}", f"{p['traced_step_ms'] - p['matmuls ms'] - p['optimizer ms']:.3f}"]
                           for p in profiles])


def budget(row: dict, loop: str, factor: float) -> float:
    """Milliseconds a step may take for a JAX epoch `factor` times faster than `loop`'s."""
    examples = round(row["jax_samples_per_second"] * row["jax_epoch_seconds"])
    return 1e3 * row[f"{loop}_epoch_seconds"] / factor / -(-examples // TrainConfig("mlp").batch_size)


def time_study(config: TrainConfig, data: MNIST, seeds: int, vmapped: bool) -> dict:
    """`study.train_seeds` of `seeds` seeds, side by side (vmap) or one at a time (lax.map): steady seconds per
    epoch (the first left out, as for a run alone), in all and per model, and per model against a run alone doing
    the same work: its epoch (training and validation passes) and a test pass, which a grid's epoch also runs. The run
    alone is timed just before and just after the grid, so that a slow spell of a shared machine falls on both sides."""
    from mnist_jax.study import side_by_side, train_seeds

    def alone() -> float:
        single = time_jax(config, data)
        return single["epoch_seconds"] + single["test_seconds"]

    before = alone()
    result = train_seeds(config, data, list(range(seeds)), vmapped=vmapped)
    beside = [before, alone()]
    epoch = steady_seconds_per_epoch([[{"seconds": s} for s in result.epoch_seconds.values()]])
    single = statistics.mean(beside)
    return {"stage": config.stage, "seeds": seeds, "seeds_at_once": result.models_at_once,
            "width": seeds if vmapped else 1, "backend_default": vmapped == side_by_side(),
            "compile_seconds": result.compile_seconds, "epoch_seconds": epoch, "epoch_seconds_per_model": epoch / seeds,
            "single_beside_seconds": beside, "single_same_work_seconds": single, "per_model_over_single": epoch / seeds / single}


def end_to_end(train_args: list[str], rounds: int) -> dict:
    """Wall seconds of `scripts/train.py <train_args>` as a fresh process: cold (an empty compilation cache), then
    warm (the cache the cold run filled), `rounds` times with a new cache each; medians, with each run's epochs'
    seconds (its metrics.json) and what it spent beyond them (start-up, saving, testing), and what the cache holds;
    and, apart, a fresh process's import of what train.py trains with, and one that only imports JAX and optax and
    starts JAX's client: what a warm start costs before its own work (Flax is imported only to build a program)."""
    seconds, epochs, held = {"cold": [], "warm": []}, {"cold": [], "warm": []}, {}
    root = Path(__file__).resolve().parents[1]  # (found from there installed or not, as train.py finds it)

    def fresh(code: str) -> list[float]:
        return [timed(lambda: subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, cwd=root))
                for _ in range(rounds)]

    # Each ends at once, as train.py does (`cli.run`), not in Python's teardown of every module and object.
    imports = fresh("import mnist_jax.train, os; os._exit(0)")  # what train.py imports to train: JAX, optax and the project's modules
    packages = fresh("import jax, optax, os; jax.devices(); os._exit(0)")  # the same packages and JAX's client alone
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as tmp:
            command = [sys.executable, str(Path(__file__).with_name("train.py")), *train_args,
                       "--out", f"{tmp}/run", "--overwrite", "--compile-cache", f"{tmp}/cache"]
            for run in seconds:
                seconds[run].append(timed(lambda: subprocess.run(command, check=True, capture_output=True)))
                epochs[run].append(sum(row["seconds"] for row in json.loads(Path(tmp, "run", "metrics.json").read_text())["history"]))
                held[run] = sorted(entry.name.split("-")[0] for entry in Path(tmp, "cache").iterdir())
    beyond = {run: [s - e for s, e in zip(seconds[run], epochs[run])] for run in seconds}
    return {"command": " ".join(["python", "scripts/train.py", *train_args]), "rounds": seconds, "epochs_rounds": epochs,
            **{f"{run}_seconds": statistics.median(times) for run, times in seconds.items()},
            **{f"{run}_epochs_seconds": statistics.median(times) for run, times in epochs.items()},
            **{f"{run}_beyond_epochs_seconds": statistics.median(times) for run, times in beyond.items()},
            **{f"{run}_cached": names for run, names in held.items()},
            "warm_over_cold": statistics.median(w / c for w, c in zip(seconds["warm"], seconds["cold"])),
            "import_rounds": imports, "import_seconds": statistics.median(imports),
            "packages": "jax, optax", "packages_rounds": packages, "packages_seconds": statistics.median(packages)}


class StandardDropout(nnx.Module):
    """`nnx.Dropout` behind the call of `models.Dropout`, to time one against the other."""

    def __init__(self, rate: float):
        self.dropout = nnx.Dropout(rate)

    def __call__(self, x: jax.Array, key: jax.Array, rate: jax.Array) -> jax.Array:
        return self.dropout(x, deterministic=False, rngs=key)


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


def training_pass(config: TrainConfig, setup: Setup, model: nnx.Module | None = None) -> functools.partial:
    """A training pass of `model` (default: the stage's own) over epoch 1's batches, ready to time: the jitted
    epoch (`.func`) and its arguments (`.args`)."""
    model = model or nnx.merge(setup.graphdef, setup.state.params, setup.state.batch_stats)
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    params, batch_stats = nnx.to_pure_dict(params), nnx.to_pure_dict(batch_stats)
    state = setup.state._replace(params=params, batch_stats=batch_stats, opt_state=setup.tx.init(params))
    shuffle_key, dropout_key = epoch_keys(setup.epochs_key, 1)
    order, (images, labels, _, _) = shuffle(shuffle_key, setup.train_idx), setup.data
    epoch = jax.jit(make_train_epoch(graphdef, config.spec.loss, setup.tx, config.batch_size))
    return functools.partial(epoch, state, images, labels, order, dropout_key)


def standard_parts(data: MNIST, rounds: int) -> list[dict]:
    """Each piece this project writes in place of a standard one, against that piece: both
    timed in each of `rounds` rounds (which goes first alternating) on the same inputs, with
    the stage's training pass. Medians, the median per-round ratio (ours / standard) and the
    median saving as a fraction of the pass."""
    import orbax.checkpoint as ocp

    from mnist_jax.checkpoint import save_checkpoint
    from mnist_jax.train import RunResult

    setups = {stage: (TrainConfig(stage), set_up(TrainConfig(stage), data)) for stage in ("linear_ce", "mlp_dropout", "mlp_bn")}
    passes = {stage: training_pass(*setups[stage]) for stage in setups}
    bn_config, bn = setups["mlp_bn"]
    do_config, do = setups["mlp_dropout"]
    standard_dropout = nnx.merge(do.graphdef, do.state.params, do.state.batch_stats)
    standard_dropout.dropout = StandardDropout(standard_dropout.dropout_rate)
    run = RunResult(bn_config, "", bn.state, bn.state, 1, [])
    orbax_tree = {name: {"params": s.params, "batch_stats": s.batch_stats}
                  for name, s in (("final", run.final), ("best", run.best))} | {"opt_state": jax.tree.leaves(run.final.opt_state)}
    train_idx, key = setups["linear_ce"][1].train_idx, jax.random.key(0)
    permutation, ours_shuffle = jax.jit(lambda idx, key: idx[jax.random.permutation(key, idx.shape[0])]), jax.jit(shuffle)
    checkpointer = ocp.StandardCheckpointer()
    with tempfile.TemporaryDirectory() as tmp:
        def orbax_save():
            checkpointer.save(Path(tmp) / "orbax", orbax_tree, force=True)
            checkpointer.wait_until_finished()

        pieces = [
            ("(out, in) kernels (`nnx.Einsum`) against `nnx.Linear`'s (in, out)", "mlp_bn",
             passes["mlp_bn"], training_pass(bn_config, bn, with_in_out_kernels(nnx.merge(bn.graphdef, bn.state.params, bn.state.batch_stats)))),
            ("`models.Dropout` (packed random bits) against `nnx.Dropout`", "mlp_dropout",
             passes["mlp_dropout"], training_pass(do_config, do, standard_dropout)),
            ("`train.shuffle` against `jax.random.permutation` (54,000 indices)", "linear_ce",
             lambda: ours_shuffle(key, train_idx), lambda: permutation(train_idx, key)),
            ("`checkpoint.npz` against orbax's `StandardCheckpointer` (one save)", "mlp_bn", lambda: save_checkpoint(run, tmp), orbax_save),
        ]
        for _, _, ours, standard in pieces:
            jax.block_until_ready((ours(), standard()))  # compile, warm up
        times = [{"ours": [], "standard": [], "pass": []} for _ in pieces]
        for r in range(rounds):
            for (_, stage, ours, standard), t in zip(pieces, times):
                for name, fn in [("ours", ours), ("standard", standard)][:: 1 if r % 2 else -1]:
                    t[name].append(timed(fn))
                t["pass"].append(timed(passes[stage]))
        checkpointer.close()
    return [{"piece": name, "stage": stage, "ours_seconds": statistics.median(t["ours"]),
             "standard_seconds": statistics.median(t["standard"]),
             "ratio": statistics.median(o / s for o, s in zip(t["ours"], t["standard"])),
             "saving_of_pass": statistics.median((s - o) / p for o, s, p in zip(t["ours"], t["standard"], t["pass"])),
             "pass_seconds": statistics.median(t["pass"]), "rounds": t}
            for (name, stage, _, _), t in zip(pieces, times)]


def build_parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(__doc__, out="runs/benchmark", results=(RESULT,))
    parser.add_stages()
    parser.add_argument("--epochs", type=cli.checked(int, lambda v: 2 <= v <= cli.MAX_INT, f"an integer from 2 to {cli.MAX_INT}"),
                        default=3, help="epochs per run, 2 or more: the first (compiling, warming up) is left out of s/epoch")
    parser.add_argument("--rounds", type=cli.positive_int, default=1,
                        help="every stage is measured this many times, in turns (and the train.py runs repeated); figures are medians")
    parser.add_argument("--studies", type=cli.comma_separated(cli.positive_int),
                        help="also time study.py's training of every stage at each of these numbers of seeds, e.g. 10,100: "
                        "one at a time (lax.map) and side by side (vmap)")
    parser.add_argument("--profile", action="store_true", help="also trace a training pass of every stage: where a step goes")
    parser.add_argument("--no-torch", action="store_true", help="JAX only, even when PyTorch is installed")
    parser.add_argument("--no-end-to-end", action="store_true", help="skip the cold and warm train.py runs")
    parser.add_argument("--standard-parts", action="store_true",
                        help="also time each piece this project writes in place of a standard one against that piece, --rounds paired rounds")
    return parser


INSTRUCTION_SETS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile")  # /proc/cpuinfo's names


def cpu_info() -> dict:
    """The processor: its name, its family and model numbers, the vector and matrix instruction sets it offers
    (of `INSTRUCTION_SETS`), and its `cpu_kind` (Linux; elsewhere the architecture alone)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux, or not readable
        text = ""
    fields = dict(line.split(":", 1) for line in text.split("\n\n")[0].splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    cpu = {"model": fields.get("model name", platform.machine()), "family": fields.get("cpu family"),
           "model_number": fields.get("model"),
           "instruction_sets": [name for name in INSTRUCTION_SETS if name in fields.get("flags", "").split()]}
    return {**cpu, "kind": cpu_kind(cpu)}


def cpu_kind(cpu: dict) -> str:
    """What names a CPU's figures, e.g. 'amd-epyc-f25m17-avx512': the first words of its name, its family and
    model numbers (one name covers several generations: EPYC family 25 model 17 is Zen 4, family 26 Zen 5)
    and the widest vector instructions it offers."""
    widest = next((name for name in ("avx512f", "avx2", "avx", "sse4_2") if name in cpu["instruction_sets"]), None)
    words = re.sub(r"\(r\)|\(tm\)|cpu|processor|@.*|\d+-core", " ", cpu["model"].lower()).split()[:2]
    if cpu["family"] is not None and cpu["model_number"] is not None:
        words.append(f"f{cpu['family']}m{cpu['model_number']}")
    return "-".join(dict.fromkeys([*words, widest.removesuffix("f") if widest else platform.machine()]))


def import_torch():
    """PyTorch, or None where it cannot be imported."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def print_table(report: dict) -> None:
    peers = [("nnx.jit", "nnx_jit")] + [(f"PyTorch {loop}", f"torch_{loop}") for loop in report["torch_loops"]]
    head = ["stage", "JAX compile s", "JAX s/epoch", "JAX samples/s", "ceiling GFLOP/s", "efficiency"]
    head += [f"{name} s/epoch" for name, _ in peers] + [f"speed-up vs {name.removeprefix('PyTorch ')}" for name, _ in peers]
    print()
    cli.print_table(head, [
        [f"`{r['stage']}`", f"{r['jax_compile_seconds']:.2f}", f"{r['jax_epoch_seconds']:.3f}", f"{r['jax_samples_per_second']:,.0f}",
         f"{r['ceiling_flops'] / 1e9:.1f}", f"{r['efficiency']:.2f}", *(f"{r[f'{key}_epoch_seconds']:.3f}" for _, key in peers),
         *(f"{r[f'speedup_vs_{key}']:.1f}x" for _, key in peers)] for r in report["stages"]])
    print(f"matmul ceiling: {report['ceiling_flops'] / 1e9:.1f} GFLOP/s (2048^3 float32 under XLA; median of every round)")
    if "compile" in report["torch_loops"]:  # later rounds reuse the graphs the first compiled
        print("torch.compile's compiling (the first round's first epoch beyond a steady one): "
              + ", ".join(f"{r['stage']} {r['rounds']['torch_compile_warm_up_seconds'][0]:.1f}s" for r in report["stages"]))


def print_studies(studies: list[dict]) -> None:
    same_work = "single_same_work_seconds" in studies[0]  # (older files: against the single run's epoch alone, and
    # their grid's seconds every epoch's and the final test pass's: `time_study` then)
    beside = ", timed just before and just after the grid" if "single_beside_seconds" in studies[0] else ""  # (older files: from the rounds)
    print("\nstudy.py's training of many seeds (one program), seconds per epoch per model, " + (
        f"against a run alone doing the same work (its epoch and a test pass{beside}):" if same_work else "and against the stage's single run:"))
    cli.print_table(["stage", "seeds", "side by side", "compile s", "s/epoch, all seeds", "s/epoch per model",
                     *(["run alone s", "per model / run alone"] if same_work else ["per model / single run"])], [
        [f"`{s['stage']}`", s["seeds"], ("1 (lax.map)" if s["width"] == 1 else f"{s['width']} (vmap)") + (", the default" if s["backend_default"] else ""),
         f"{s['compile_seconds']:.2f}", f"{s['epoch_seconds']:.3f}", f"{s['epoch_seconds_per_model']:.4f}",
         *([f"{s['single_same_work_seconds']:.4f}"] if same_work else []), f"{s['per_model_over_single']:.2f}"]
        for s in studies])


def print_standard_parts(rows: list[dict]) -> None:
    rounds = len(rows[0]["rounds"]["ours"])
    print(f"\neach piece of this project against the standard one (medians of {cli.count(rounds, 'paired round')}"
          + ("; quartiles need --rounds 2 or more" if rounds < 2 else "") + "):")

    def ratio(r: dict) -> str:  # and its quartiles over rounds, where there are two rounds or more
        if rounds < 2:
            return f"{r['ratio']:.2f}"
        q = statistics.quantiles([o / s for o, s in zip(r["rounds"]["ours"], r["rounds"]["standard"])], n=4)
        return f"{r['ratio']:.2f} ({q[0]:.2f}-{q[2]:.2f})"

    cli.print_table(["piece", "stage", "ours s", "standard s", "ours / standard (quartiles)", "saving, of the stage's training pass"], [
        [r["piece"], f"`{r['stage']}`", f"{r['ours_seconds']:.4f}", f"{r['standard_seconds']:.4f}", ratio(r),
         f"{r['saving_of_pass']:+.1%}"] for r in rows])


def main() -> None:
    args = build_parser().parse()
    data = cli.load_data(args)
    torch = None if args.no_torch else import_torch()
    has_torch = torch is not None
    if not has_torch:
        print("PyTorch not measured: " + ("--no-torch" if args.no_torch else 'torch cannot be imported (pip install -e ".[torch]")'))
    jax.config.update("jax_default_matmul_precision", "highest")  # full float32 in both: no TF32 or bfloat16 passes
    jax.config.update("jax_enable_compilation_cache", False)  # compile times are real ones
    if has_torch:
        torch.set_float32_matmul_precision("highest")
    report = {
        "command": cli.command(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "device": device_description(), "cpu": cpu_info(), "jax_version": jax.__version__,
        "ml_dtypes_version": importlib.metadata.version("ml_dtypes"),
        "torch_version": importlib.metadata.version("torch") if has_torch else None,
        "matmul_precision": "highest (full float32) in both frameworks",
        "seeds": 1, "epochs": args.epochs, "rounds": args.rounds, "torch_loops": TORCH_LOOPS if has_torch else [],  # one seed a run
    }
    print(f"device: {report['device']}, {report['cpu']['model']} (kind {report['cpu']['kind']}) | jax {report['jax_version']} | "
          f"torch {report['torch_version'] or 'not run'}", flush=True)
    configs = [TrainConfig(stage, epochs=args.epochs) for stage in args.stages]
    progress = cli.Progress(args.rounds, f"benchmark of {', '.join(args.stages)}", "round")
    report["stages"] = rows = benchmark_stages(configs, data, report["torch_loops"], args.rounds, progress.step)
    progress.close()
    report["ceiling_flops"] = statistics.median(r["ceiling_flops"] for r in rows)
    print_table(report)
    if args.profile:
        try:
            report["profiles"] = [profile_pass(config, data) for config in configs]
            print_profiles(report["profiles"])
            if has_torch:
                print_budgets(report)
        except NoOpEvents as e:  # every other figure is still measured
            print(f"\nwhere a training step goes: not measured ({e})")
    if args.studies:
        report["studies"] = [time_study(config, data, n, vmapped)
                             for n in args.studies for config in configs for vmapped in (False, True)]
        print_studies(report["studies"])
    if args.standard_parts:
        report["standard_parts"] = standard_parts(data, args.rounds)
        print_standard_parts(report["standard_parts"])
    if not args.no_end_to_end:
        data_args = ["--source", args.source] + (["--data-dir", str(args.data_dir)] if args.data_dir else [])
        try:
            report["end_to_end"] = e2e = end_to_end(["--stage", "mlp_bn", *data_args], args.rounds)
        except subprocess.CalledProcessError as e:  # (a signal to the benchmark itself stops it, and the child, first)
            files.write_json(args.out / RESULT, report)
            status = e.returncode if e.returncode > 0 else 128 - e.returncode  # -N: killed by signal N
            said = (e.stderr or b"").decode(errors="replace").strip().splitlines()
            cli.fail(f"the end-to-end train.py run ended with status {status}" + (f" ({said[-1]})" if said else "")
                     + f"; every other figure is in {args.out / RESULT}", status)
        print(f"\n{e2e['command']} as a fresh process (medians of {args.rounds}): cold {e2e['cold_seconds']:.1f}s, "
              f"warm {e2e['warm_seconds']:.1f}s, of which {e2e['warm_epochs_seconds']:.1f}s its epochs and "
              f"{e2e['warm_beyond_epochs_seconds']:.1f}s the rest (cold: {e2e['cold_beyond_epochs_seconds']:.1f}s); "
              f"JAX's cache holds {len(e2e['cold_cached'])} programs; importing mnist_jax.train alone {e2e['import_seconds']:.1f}s; "
              f"importing JAX and optax and starting JAX's {jax.default_backend().upper()} client, in a process that does nothing else, "
              f"{e2e['packages_seconds']:.1f}s")
    files.write_json(args.out / RESULT, report)
    print(f"wrote {args.out / RESULT}")


if __name__ == "__main__":
    cli.run(main)
