"""bench/gpu_suite.py: its --smoke run (the same code as on a GPU, tiny presets, on the CPU) and
the pass count its FLOP limits rest on."""
import json
import math

import pytest

from scripts import BENCH, load_script


@pytest.fixture(scope="module")
def suite():
    return load_script("gpu_suite", BENCH)


def test_passes_per_sample_count_the_plan(suite):
    from diffinject.config.schema import InjectionConfig
    from diffinject.stages.inject.engine import InjectionPlan

    plan = InjectionPlan.from_config(InjectionConfig(inversion_steps=50, generation_steps=50, t_edit=500))
    injected = len(plan.content_step)
    assert 20 < injected < 30  # t >= 500 of 49 generation steps
    assert suite.passes_per_sample(plan, 0.0) == (98, 98 + injected)
    # the one-pair path inverts its own content: 49 passes and the encoder at t = 999
    assert suite.passes_per_sample(plan, 1.0) == (98 + 50, 98 + injected + 49)
    calibrated = InjectionPlan.from_config(InjectionConfig(inversion_steps=50, generation_steps=50, t_edit=500,
                                                           omega=0.5))
    assert suite.passes_per_sample(calibrated, 0.0) == (98 + injected, 98 + 2 * injected)


def test_the_full_suite_refuses_to_run_without_a_gpu(suite):
    with pytest.raises(SystemExit, match="needs a GPU .*--smoke"):
        suite.main([])


def test_the_default_gpu_plan_fits_the_budget_on_an_h200(suite, capsys):
    """Every row's FLOPs (padding, content inversions and warm-up included, counted on the meta
    device) at 30 % of the H200's dense bf16 peak fit the default 360 s; and with each row at its
    own precision's peak (fp32 at TF32) plus the fixed overhead estimates too."""
    import torch

    peaks = {"bf16": suite.GPU_PEAKS["H200"]["bf16"], "fp32": suite.GPU_PEAKS["H200"]["tf32"]}
    plan = suite.build_plan(suite.GPU, torch.device("cuda"), peaks)
    assert {r.section for r in plan} == {"injection", "equality", "profile", "ray", "diffusion training",
                                         "classifier training"}
    assert all(0 < r.useful <= r.total for r in plan)
    assert sum(r.total for r in plan) / (0.3 * peaks["bf16"]) <= suite.BUDGET_S == 360
    assert sum(r.estimate_s(peaks, 0.3) for r in plan) <= suite.BUDGET_S
    suite.main(["--plan"])
    printed = capsys.readouterr().out
    assert "plan for H200" in printed and "SKIPPED" not in printed and "of a 360 s budget" in printed


def test_cards_are_matched_by_their_full_name(suite):
    assert suite.card_of("NVIDIA H100 80GB HBM3") == "H100 SXM"
    assert suite.card_of("NVIDIA H100 PCIe") == "H100 PCIe"
    assert suite.card_of("NVIDIA H100 NVL") == "H100 NVL"
    assert suite.card_of("NVIDIA H200") == "H200"
    assert suite.card_of("NVIDIA L4") is None


def test_smoke_run_measures_every_figure_and_its_equality_check_passes(suite, ray_session, tmp_path):
    out = tmp_path / "suite.json"
    table = tmp_path / "table.md"
    rows = suite.main(["--smoke", "--json", str(out), "--out", str(table)])
    assert "failed" not in table.read_text() and "skipped" not in table.read_text()
    assert {r.section for r in rows} == {"injection", "equality", "profile", "ray", "diffusion training",
                                        "classifier training"}
    figures = " ".join(r.figure for r in rows)
    for lever in ("bf16_autocast", "bf16_weights", "channels_last", "attention=classic", "noise=counter",
                  "compile=inductor", "all levers", "released", "one-pair reference"):
        assert lever in figures, lever
    timed = [r for r in rows if r.section not in ("equality", "profile")]
    assert all(math.isfinite(r.value) and r.value > 0 for r in timed)
    assert all(r.limit and r.limit > 0 for r in timed if r.section != "ray")
    equal = next(r for r in rows if r.figure.startswith("batched fp32 vs one-pair"))
    assert equal.note.startswith("PASS") and equal.value < 1e-3
    written = json.loads(out.read_text())
    assert written["device"].startswith("CPU") and len(written["rows"]) == len(rows)
    split = [r.value for r in rows if r.section == "profile"]
    assert len(split) == 3 and abs(sum(split) - 100) < 1e-6 and min(split) >= 0
