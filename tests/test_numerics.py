"""The device a stage runs on, and the levers that act only there (bf16 autocast, TF32), are part
of its artifact key: a cache filled on a CPU in float32 is never served to a GPU run in bf16,
nor the other way round (numerics.py, cells.py)."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest

import diffinject.experiment.keys as keys
from diffinject.config.builder import experiment_config
from diffinject.config.overrides import apply_overrides
from diffinject.core.numerics import resolve_precision, training_numerics
from diffinject.experiment.cache import ArtifactCache, artifact_key
from diffinject.experiment.cells import CellRunner

TRAINING = ("stage1", "stage2", "stylegan2_source", "stylegan2_adapted", "fastgan_classes", "cell vanilla")
SYNTHESIS = ("stage3 diffinject", "stage3 a2", "stage3 amplibias", "cell diffinject")


@pytest.fixture
def cfg():
    return experiment_config("colored_digits", "1", quick=True)


def _runner(tmp_path, monkeypatch, cluster_gpus: bool, cuda_here: bool, checkpoints=None) -> CellRunner:
    """A runner whose data fingerprints are a constant, on a cluster with or without GPUs, in a
    process that does or does not see one."""
    monkeypatch.setattr(keys.StageKeys, "data_fingerprint", lambda self, cfg, diffusion=False: "data")
    monkeypatch.setattr(keys, "resolve_use_gpu", lambda use_gpu: cluster_gpus, raising=False)
    monkeypatch.setattr(keys, "cuda_here", lambda: cuda_here, raising=False)
    return CellRunner(ArtifactCache(tmp_path / "artifacts"), tracker=SimpleNamespace(), checkpoints=checkpoints)


def _keys(runner: CellRunner, cfg) -> dict[str, str]:
    return {"stage1": artifact_key("stage1", runner.stage1_material(cfg)),
            "stage2": artifact_key("stage2", runner.stage2_material(cfg)),
            "stylegan2_source": artifact_key("stylegan2_source", runner.stylegan2_source_material(cfg)),
            "stylegan2_adapted": artifact_key("stylegan2_adapted", runner.stylegan2_adapted_material(cfg)),
            "fastgan_classes": artifact_key("fastgan_classes", runner.fastgan_material(cfg)),
            **{f"stage3 {m}": artifact_key("stage3", runner.stage3_material(cfg, m))
               for m in ("diffinject", "a2", "amplibias")},
            **{f"cell {m}": artifact_key("cell", runner.cell_material(cfg, m)) for m in ("vanilla", "diffinject")},
            "oracle": artifact_key("oracle", runner.oracle_material(cfg))}


def _changed(a: dict, b: dict) -> set[str]:
    return {name for name in a if a[name] != b[name]}


def test_every_stage_run_on_a_gpu_has_another_key_than_on_a_cpu(cfg, tmp_path, monkeypatch):
    """precision=auto (bf16 on a GPU), diffusion / GAN bf16=true and TF32 are the defaults: the
    same config makes other numbers there. The oracles always train on a CPU."""
    cpu = _keys(_runner(tmp_path, monkeypatch, cluster_gpus=False, cuda_here=False), cfg)
    gpu = _keys(_runner(tmp_path, monkeypatch, cluster_gpus=True, cuda_here=True), cfg)
    assert _changed(cpu, gpu) == set(TRAINING + SYNTHESIS)
    # a GPU this process sees is not used when run.use_gpu says the jobs run on CPUs
    assert _keys(_runner(tmp_path, monkeypatch, cluster_gpus=False, cuda_here=True), cfg) == cpu


def test_in_process_trainings_keep_their_cpu_keys_where_this_process_sees_no_gpu(cfg, tmp_path, monkeypatch):
    """run.num_workers=0 trains in this process, so on its device; the injection and GAN
    synthesis actors get the cluster's GPUs either way. With workers, trainings get GPUs too."""
    cpu = _keys(_runner(tmp_path, monkeypatch, cluster_gpus=False, cuda_here=False), cfg)
    no_gpu_here = _runner(tmp_path, monkeypatch, cluster_gpus=True, cuda_here=False)
    assert cfg.run.num_workers == 0
    assert _changed(cpu, _keys(no_gpu_here, cfg)) == set(SYNTHESIS)
    workers = apply_overrides(copy.deepcopy(cfg), ["run.num_workers=2"])
    cpu_workers = _keys(_runner(tmp_path, monkeypatch, cluster_gpus=False, cuda_here=False), workers)
    assert _changed(cpu_workers, _keys(no_gpu_here, workers)) == set(TRAINING + SYNTHESIS)


@pytest.mark.parametrize("override", ["injection.precision=fp32", "diffusion.bf16=false"])
def test_the_key_carries_the_device_even_where_no_bf16_lever_acts(cfg, tmp_path, monkeypatch, override):
    """fp32 on a GPU is not fp32 on a CPU either (TF32, other kernels): the device stays in the key."""
    cfg = apply_overrides(cfg, [override])
    cpu = _keys(_runner(tmp_path, monkeypatch, cluster_gpus=False, cuda_here=False), cfg)
    gpu = _keys(_runner(tmp_path, monkeypatch, cluster_gpus=True, cuda_here=True), cfg)
    assert {"stage2", "stage3 diffinject"} <= _changed(cpu, gpu)


def test_an_imported_diffusion_checkpoint_has_one_key_on_every_device(cfg, tmp_path, monkeypatch):
    given = tmp_path / "given.pt"
    given.write_bytes(b"weights")
    keys = [artifact_key("stage2", _runner(tmp_path, monkeypatch, gpus, gpus, {"colored_digits": str(given)})
                         .stage2_material(cfg)) for gpus in (False, True)]
    assert keys[0] == keys[1]


def test_the_key_material_names_the_resolved_numerics(cfg, tmp_path, monkeypatch):
    runner = _runner(tmp_path, monkeypatch, cluster_gpus=True, cuda_here=True)
    assert runner.stage3_material(cfg)["numerics"] == {"device": "cuda", "precision": "bf16_autocast"}
    assert runner.stage2_material(cfg)["numerics"] == {"device": "cuda", "bf16_autocast": True, "tf32": True}
    assert runner.cell_material(cfg, "vanilla")["numerics"] == {"device": "cuda", "bf16_autocast": False,
                                                                "tf32": True}
    cpu = _runner(tmp_path, monkeypatch, cluster_gpus=False, cuda_here=False)
    assert cpu.stage3_material(cfg)["numerics"] == {"device": "cpu", "precision": "fp32"}
    assert cpu.stage2_material(cfg)["numerics"] == {"device": "cpu", "bf16_autocast": False, "tf32": False}
    calibrated = apply_overrides(copy.deepcopy(cfg), ["injection.calibrate_t_edit=true"])
    assert cpu.stage3_material(calibrated)["numerics"]["calibration"] == {"device": "cpu", "precision": "fp32"}


@pytest.mark.parametrize("precision, on_gpu, acts", [
    ("auto", True, "bf16_autocast"), ("auto", False, "fp32"), ("fp32", True, "fp32"),
    ("bf16_weights", False, "bf16_weights"), ("bf16_autocast", False, "bf16_autocast"),
])
def test_precision_resolves_as_the_injection_engine_runs_it(precision, on_gpu, acts):
    assert resolve_precision(precision, on_gpu) == acts


def test_bf16_flags_act_only_on_a_gpu():
    assert training_numerics(True, on_gpu=False) == {"device": "cpu", "bf16_autocast": False, "tf32": False}
    assert training_numerics(True, on_gpu=True) == {"device": "cuda", "bf16_autocast": True, "tf32": True}
