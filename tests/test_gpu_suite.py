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
    from diffinject.config import InjectionConfig
    from diffinject.inject.engine import InjectionPlan

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


def test_smoke_run_measures_every_figure_and_its_equality_check_passes(suite, ray_session, tmp_path):
    out = tmp_path / "suite.json"
    rows = suite.main(["--smoke", "--json", str(out)])
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
