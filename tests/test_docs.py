"""Every table of results in README.md and docs/ is what the project's scripts print from
the committed runs in assets/: nothing typed in, nothing stale."""

import contextlib
import io
import json
import re

import pytest

from conftest import ROOT, load_script
from mnist_jax.stages import STAGES

ASSETS = ROOT / "assets"


def printed(function, *args) -> list[str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        function(*args)
    return [line for line in out.getvalue().splitlines() if line.startswith("|")]


def doc(name: str) -> str:
    return (ROOT / name).read_text()


def assert_table_in(lines: list[str], text: str):
    assert lines and all(line in text.splitlines() for line in lines), [line for line in lines if line not in text]


def test_the_ten_seed_table_is_what_study_py_prints_of_assets_results_json():
    report = json.loads((ASSETS / "results.json").read_text())
    tables = printed(load_script("study.py").print_report, report)
    assert_table_in(tables, doc("README.md"))
    assert_table_in(tables[tables.index("| comparison | difference | 95% CI, seeds | 95% CI, seeds and test images | significant |"):],
                    doc("docs/study.md"))  # both intervals of every comparison, beside each other


def test_the_three_questions_tables_are_what_sweep_py_prints_of_assets_sweep_json():
    from mnist_jax.results import load_sweep
    from mnist_jax.sweep import answers

    sweep = load_sweep(ASSETS / "sweep.json")
    tables = printed(load_script("sweep.py").print_answers, answers(sweep))
    heads = ("| model |", "| epochs | best lr `mlp` |", "| epochs | best lr `linear_mse` |")  # the three questions
    assert all(any(line.startswith(head) for line in tables) for head in heads)
    assert_table_in(tables, doc("docs/study.md"))


def test_every_question_is_re_tested_on_fresh_seeds_and_the_tables_are_what_sweep_py_prints():
    from mnist_jax.results import load_sweep
    from mnist_jax.sweep import answers

    chosen_on, fresh = load_sweep(ASSETS / "sweep.json"), load_sweep(ASSETS / "fresh" / "sweep.json")
    assert not {r["seed"] for r in chosen_on["rows"]} & {r["seed"] for r in fresh["rows"]}  # never used for the choice
    found = answers(fresh, chosen_on)
    assert list(found) == ["dropout", "batchnorm", "linear", "controls"]  # each answered, none "not re-tested"
    assert all("--chosen-on assets/sweep.json" in grid["command"] for grid in fresh["grids"])
    assert_table_in(printed(load_script("sweep.py").print_answers, found), doc("docs/study.md"))


def test_the_seed_42_table_is_the_one_in_the_committed_log():
    log = (ASSETS / "train_all_seed42.log").read_text()
    table = [line for line in log.splitlines() if line.startswith("| `")]
    assert len(table) == len(STAGES)  # every stage, the controls too
    assert_table_in(table, doc("docs/parity.md"))


BENCHMARKS = sorted(ASSETS.glob("benchmark_cpu_*.json"))  # one per kind of CPU met: benchmark_cpu_<cpu_kind>.json


def test_there_is_a_committed_benchmark_of_this_kind_of_cpu_named_by_its_kind():
    cpu_kind = load_script("benchmark.py").cpu_kind
    for path in BENCHMARKS:
        cpu = json.loads(path.read_text())["cpu"]
        assert not isinstance(cpu, dict) or path.name == f"benchmark_cpu_{cpu_kind(cpu)}.json"  # (older runs name the model alone)
    assert any(isinstance(cpu := json.loads(path.read_text())["cpu"], dict) and cpu["instruction_sets"] for path in BENCHMARKS)


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda path: path.stem)
def test_the_speed_tables_are_what_benchmark_py_prints_of_each_cpus_benchmark(path):
    report = json.loads(path.read_text())
    benchmark = load_script("benchmark.py")
    assert_table_in(printed(benchmark.print_table, report), doc("docs/performance.md"))
    assert_table_in(printed(benchmark.print_studies, report["studies"]), doc("docs/performance.md"))
    if isinstance(report["cpu"], dict):  # (the profile of older runs had other parts)
        assert_table_in(printed(benchmark.print_profiles, report["profiles"]), doc("docs/performance.md"))
        assert_table_in(printed(benchmark.print_budgets, report), doc("docs/performance.md"))
        row = report["stages"][0]  # a target's budget is the loop's epoch over the factor, over 422 steps of 128 of 54,000
        assert 422 * benchmark.budget(row, "nnx_jit", 3) == pytest.approx(1e3 * row["nnx_jit_epoch_seconds"] / 3)


def test_the_ml_dtypes_check_table_is_the_four_committed_runs():
    rows = []
    for run in ("0.7.0-1", "0.6.0-1", "0.7.0-2", "0.6.0-2"):
        report = json.loads((ROOT / "assets" / "ml_dtypes_check" / f"{run}.json").read_text())
        e2e = report["end_to_end"]
        assert report["ml_dtypes_version"] == run.split("-")[0]
        rows.append(f"| {run} | {e2e['import_seconds']:.2f} | {e2e['warm_seconds']:.1f} | {e2e['warm_epochs_seconds']:.1f} | "
                    f"{e2e['warm_beyond_epochs_seconds']:.1f} |")
    assert_table_in(rows, doc("docs/performance.md"))


@pytest.mark.parametrize("path", [path for path in BENCHMARKS if "packages_seconds" in json.loads(path.read_text()).get("end_to_end", {})],
                         ids=lambda path: path.stem)
def test_the_start_up_paragraph_gives_the_figures_of_each_benchmark_that_timed_the_packages_alone(path):
    e2e = json.loads(path.read_text())["end_to_end"]
    text = " ".join(doc("docs/performance.md").split("## Start-up")[1].split())
    assert (f"cold {e2e['cold_seconds']:.1f} s, of which {e2e['cold_epochs_seconds']:.1f} s its epochs; warm {e2e['warm_seconds']:.1f} s, "
            f"of which {e2e['warm_epochs_seconds']:.1f} s its epochs and {e2e['warm_beyond_epochs_seconds']:.1f} s the rest") in text
    left = 1.5 - e2e["packages_seconds"]
    assert (f"{e2e['packages_seconds']:.1f} s (a fresh `import mnist_jax.train`, the project's modules with them, {e2e['import_seconds']:.1f} s)"
            in text and f"take {e2e['packages_seconds']:.1f} s of the 1.5 s the target allows" in text)
    assert f"fit in the {left:.1f} s left; it takes {e2e['warm_beyond_epochs_seconds'] - e2e['packages_seconds']:.1f} s" in text


def test_the_zen_2_repeat_sentence_gives_the_figures_of_its_committed_run():
    report = json.loads((ASSETS / "zen2_repeat" / "benchmark.json").read_text())
    text = " ".join(doc("docs/performance.md").split())
    seconds = ", ".join(f"{row['jax_epoch_seconds']:.3f}" for row in report["stages"])
    efficiencies = ", ".join(f"{row['efficiency']:.2f}" for row in report["stages"])
    assert f"(`{report['command']}`," in text and f"at {seconds} s, efficiency {efficiencies}:" in text


def test_the_zen_4_repeat_sentence_gives_the_figures_of_its_committed_run():
    report = json.loads((ASSETS / "zen4_grid_repeat" / "benchmark.json").read_text())
    text = " ".join(doc("docs/performance.md").split())
    seconds = " and ".join(f"{row['jax_epoch_seconds']:.3f}" for row in report["stages"])
    grids = " and ".join(f"{row['per_model_over_single']:.2f}" for row in report["studies"] if row["width"] == 1)
    assert f"(`{report['command']}`," in text and f"took {seconds} s an epoch, and a grid model {grids} of a run alone" in text


def test_the_ynnpack_fusion_sentence_gives_the_best_rounds_of_its_committed_runs():
    runs = {path.stem: json.loads(path.read_text()) for path in (ASSETS / "ynn_fusion_check").glob("*.json")}
    best, slowest = {}, 0.0
    for name, report in runs.items():
        flags = report["xla_flags"].removeprefix("--xla_cpu_experimental_ynn_fusion_type=") or "none"
        assert name.rsplit("-", 1)[0] == flags.replace(",", "+")  # each file names its flags
        for row in report["stages"]:
            key = (flags, row["stage"])
            best[key] = min(best.get(key, float("inf")), *row["rounds"]["jax_epoch_seconds"])
            slowest = max(slowest, *row["rounds"]["jax_epoch_seconds"])
    assert len(runs) == 6
    text = " ".join(doc("docs/performance.md").split())
    pairs = [" and ".join(f"{best[(flags, stage)]:.3f}" for stage in ("mlp", "mlp_bn")) for flags in ("none", "dot", "dot,eltwise,reduce")]
    assert (f"at {pairs[0]} s an epoch without one, {pairs[1]} s with `dot`, and {pairs[2]} s with `dot,eltwise,reduce` "
            f"(the slower rounds spread to {slowest:.2f} s") in text


def test_the_adam_hyperparameters_check_table_is_the_four_committed_runs():
    rows = []
    for run in ("constants-1", "injected-1", "constants-2", "injected-2"):
        report = json.loads((ROOT / "assets" / "adam_hyperparams_check" / f"{run}.json").read_text())
        seconds = [f"{row['jax_epoch_seconds']:.3f}" for row in report["stages"]]
        rows.append(f"| {run} | {' | '.join(seconds)} | {report['ceiling_flops'] / 1e9:.0f} |")
    assert_table_in(rows, doc("docs/performance.md"))


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda path: path.stem)
def test_the_readme_speed_table_gives_each_cpus_ranges_over_the_stages(path):
    report = json.loads(path.read_text())
    (row,) = [line for line in doc("README.md").split("## Speed")[1].splitlines() if f"(assets/{path.name})" in line]
    found = re.findall(r"(\d+\.\d+)-(\d+\.\d+)", row.split("|", 2)[2])
    peers = [f"torch_{loop}" for loop in ("tensor", "original", "fused", "compile")] + ["nnx_jit"]
    ranges = [(f"{min(r[f'speedup_vs_{peer}'] for r in report['stages']):.1f}", f"{max(r[f'speedup_vs_{peer}'] for r in report['stages']):.1f}")
              for peer in peers]
    mlps = [r["efficiency"] for r in report["stages"] if r["stage"].startswith("mlp")]
    assert found == ranges + [(f"{min(mlps):.2f}", f"{max(mlps):.2f}")]


def test_the_side_by_side_table_is_what_compare_py_prints_of_assets_compare_json():
    report = json.loads((ASSETS / "compare.json").read_text())
    assert_table_in(printed(load_script("compare.py").print_table, report["stages"], ["original", "tensor"]), doc("docs/parity.md"))


@pytest.mark.parametrize("name", ["README.md", "docs/performance.md", "docs/parity.md", "docs/study.md", "docs/usage.md"])
def test_every_local_link_and_image_exists(name):
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", doc(name)):
        assert ((ROOT / name).parent / target).exists(), target


def test_the_seed_42_figures_under_older_instruction_sets_are_those_of_their_logs():
    def accuracy(log: str, stage: str) -> str:
        (line,) = [line for line in (ASSETS / log).read_text().splitlines() if line.startswith(f"| `{stage}` |")]
        return line.split("|")[3].strip()

    readme = " ".join(doc("docs/parity.md").split())
    avx, sse = "train_all_seed42_max_isa_AVX.log", "train_all_seed42_max_isa_SSE4_2.log"
    assert accuracy(avx, "mlp") == accuracy(sse, "mlp")
    assert f"gives {accuracy(avx, 'mlp_bn')} and {accuracy(sse, 'mlp_bn')} for `mlp_bn`, {accuracy(avx, 'mlp')} for `mlp`" in readme


def test_the_standard_parts_table_is_what_benchmark_py_prints_of_its_committed_run():
    report = json.loads((ASSETS / "benchmark_standard_parts_cpu" / "benchmark.json").read_text())
    assert min(len(r["rounds"]["ours"]) for r in report["standard_parts"]) >= 9  # the rule's paired rounds
    assert_table_in(printed(load_script("benchmark.py").print_standard_parts, report["standard_parts"]), doc("docs/performance.md"))


@pytest.mark.xfail(strict=True, reason="(out, in) kernels saved -1.8% of an mlp_bn pass in the committed run (docs/performance.md): "
                   "models.torch_linear no longer earns its place; drop this mark when it goes back to nnx.Linear")
def test_each_piece_kept_in_place_of_a_standard_one_saves_a_tenth_of_its_stages_pass():
    report = json.loads((ASSETS / "benchmark_standard_parts_cpu" / "benchmark.json").read_text())
    assert all(r["saving_of_pass"] >= 0.10 for r in report["standard_parts"])


def test_the_replay_table_is_what_compare_py_prints_of_assets_compare_json_and_names_the_stage_not_replayed(capsys):
    report = json.loads((ASSETS / "compare.json").read_text())
    replayed = [r["stage"] for r in report["replay"]]
    skipped = [r["stage"] for r in report["stages"] if r["stage"] not in replayed]
    load_script("compare.py").print_replays(report["replay"], skipped)
    out = capsys.readouterr().out.splitlines()
    assert_table_in([line for line in out if line.startswith("|")], doc("docs/parity.md"))
    assert skipped == ["mlp_dropout"] and out[-1] == (
        "not replayed: mlp_dropout (each framework draws its dropout masks from its own generator)")
