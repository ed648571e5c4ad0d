"""The registries agree with each other: every per-dataset protocol value covers exactly the data
registry's recipes, and every method on synthetic data names a registered stage-3 kind whose
generator jobs the Ray layer trains."""
import pytest

from diffinject.config.protocols import BASELINE_PROTOCOLS, PROTOCOLS
from diffinject.core.errors import ConfigError
from diffinject.data.registry import DATASETS, recipes
from diffinject.methods import METHODS
from diffinject.stages.kinds import GENERATOR_JOBS, STAGE3_KINDS, get_stage3_kind


def test_recipes_are_the_datasets_no_other_stands_in_for():
    assert recipes() == ["cmnist", "cifar10c", "bffhq", "dogs_and_cats"]
    assert all(DATASETS[name].recipe in recipes() for name in DATASETS)


@pytest.mark.parametrize("table", [PROTOCOLS, BASELINE_PROTOCOLS])
def test_every_per_dataset_protocol_value_covers_the_recipes(table):
    for protocol, fields in table.items():
        for dotted, value in fields.items():
            if isinstance(value, dict):
                assert sorted(value) == sorted(recipes()), (protocol, dotted)


def test_every_method_on_synthetic_data_names_a_registered_kind():
    on_synthetic = {name: cls.synthesis for name, cls in METHODS.items() if cls.needs_synthetic}
    assert on_synthetic == {"a2": "stylegan2_adapt", "amplibias": "fastgan", "diffinject": "h_space_injection"}
    assert all(kind in STAGE3_KINDS for kind in on_synthetic.values())
    with pytest.raises(ConfigError, match="unknown stage-3 kind 'nope'"):
        get_stage3_kind("nope")


def test_the_ray_layer_trains_every_generator_job_and_draws_every_gan_kind():
    from diffinject.cluster.synthesis_job import ACTORS
    from diffinject.cluster.train_jobs import GAN_JOBS
    from diffinject.experiment.set_makers import GAN_SETS

    gan_kinds = {name for name, kind in STAGE3_KINDS.items() if kind.generators}
    assert set(GAN_JOBS) == set(GENERATOR_JOBS)
    assert set(ACTORS) == set(GAN_SETS) == gan_kinds == {"stylegan2_adapt", "fastgan"}
    assert all(ACTORS[kind].kind == GAN_SETS[kind].kind == kind for kind in gan_kinds)
    assert all(job in GENERATOR_JOBS.values() for kind in STAGE3_KINDS.values() for job in kind.generators)


def test_every_generator_reads_only_what_is_made_before_it():
    for kind in STAGE3_KINDS.values():
        made = {"topk", "init"}  # stage 1's top-K folder, a given starting point
        for job in kind.generators:
            assert set(job.reads) <= made, (kind.name, job.job)
            made.add(job.role)
    roles = [job.role for job in GENERATOR_JOBS.values()]
    assert len(set(roles)) == len(roles)
