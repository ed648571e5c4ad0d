import pytest

from diffinject.config import apply_overrides, flatten, from_dict, preset, to_dict
from diffinject.errors import ConfigError


@pytest.mark.parametrize("dataset,arch,lr,batch,augment,normalize,resize", [
    ("cmnist", "mlp", 1e-3, 256, "none", False, 0),
    ("cifar10c", "resnet18", 1e-3, 256, "crop_flip", True, 0),
    ("bffhq", "resnet18", 1e-4, 64, "crop_flip", True, 224),
    ("dogs_and_cats", "resnet18", 1e-4, 64, "none", True, 224),
])
def test_presets_carry_the_paper_hyperparameters(dataset, arch, lr, batch, augment, normalize, resize):
    cfg = preset(dataset, "5")
    c = cfg.classifier
    assert (c.arch, c.lr, c.batch_size, c.augment, c.normalize, c.resize) == (arch, lr, batch, augment, normalize, resize)
    assert c.select == "valid" and cfg.bias.classifier.select == "last"
    assert cfg.bias.q == 0.7 and cfg.bias.k == 10 and cfg.bias.scope == "global"


def test_quick_preset_is_smaller():
    assert preset("colored_digits", quick=True).classifier.num_steps < preset("colored_digits").classifier.num_steps


def test_overrides_are_typed():
    cfg = apply_overrides(preset("cmnist"), ["classifier.lr=1e-4", "bias.k=20", "classifier.normalize=true",
                                            "bias.classifier.num_steps=5", "data.ratio=5pct"])
    assert cfg.classifier.lr == 1e-4 and cfg.bias.k == 20 and cfg.classifier.normalize is True
    assert cfg.bias.classifier.num_steps == 5 and cfg.data.ratio == "5"


@pytest.mark.parametrize("override,message", [
    ("classifier.nope=1", "unknown config field 'classifier.nope'"),
    ("classifier.lr=fast", "invalid value 'fast' for classifier.lr"),
    ("bias.k=0", "bias.k must be a positive"),
    ("bias.scope=local", "bias.scope must be global or per_class"),
    ("data.ratio=3", "invalid conflict ratio '3'"),
    ("data.dataset=imagenet", "unknown dataset 'imagenet'"),
    ("classifier.select=best", "classifier.select must be"),
    ("classifier", "expected section.field=value"),
    ("bias=3", "bias is a section"),
])
def test_bad_overrides_name_the_field(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(preset("cmnist"), [override])


def test_flatten_and_round_trip():
    cfg = preset("cifar10c", "1")
    flat = flatten(cfg)
    assert flat["classifier.lr"] == 1e-3 and flat["bias.classifier.select"] == "last" and flat["data.ratio"] == "1"
    assert from_dict(to_dict(cfg)) == cfg
