"""`diffinject gan export`: a GAN file rewritten in float16 (the shipped FastGAN starting points
fit the 10 MB bound that way) loads back strictly, close to the float32 weights."""
import torch

from diffinject.cli.main import main
from diffinject.nets.gan.checkpoint import gan_checkpoint_bytes, read_gan_checkpoint
from diffinject.nets.gan.fastgan import Discriminator, Generator, get_gan_preset
from diffinject.stages.synthesis.fastgan_per_class import load_class_generators


def test_export_to_float16_halves_a_fastgan_file_and_loads_back_strictly(tmp_path, capsys):
    torch.manual_seed(0)
    preset = get_gan_preset("fastgan", "quick_32")
    g, d = Generator(preset), Discriminator(preset)
    nets = {"class_3": g.state_dict(), "class_3_discriminator": d.state_dict()}
    source = tmp_path / "classes.pt"
    source.write_bytes(gan_checkpoint_bytes("fastgan", "quick_32", nets, 7, {}))
    out = tmp_path / "half.pt"
    assert main(["gan", "export", "--checkpoint", str(source), "--family", "fastgan", "--out", str(out)]) == 0
    assert "float16" in capsys.readouterr().out
    assert out.stat().st_size < 0.6 * source.stat().st_size
    half = read_gan_checkpoint(out, "fastgan")
    assert half["step"] == 7 and half["nets"]["class_3"]["to_big.bias"].dtype == torch.float16
    loaded = load_class_generators(out)[3]
    for name, p in loaded.named_parameters():
        assert p.dtype == torch.float32 and torch.allclose(p, dict(g.named_parameters())[name], atol=1e-3)


def test_export_refuses_another_family_and_a_damaged_file(tmp_path, capsys):
    source = tmp_path / "classes.pt"
    source.write_bytes(gan_checkpoint_bytes("fastgan", "quick_32", {"class_0": Generator(
        get_gan_preset("fastgan", "quick_32")).state_dict()}, 1, {}))
    assert main(["gan", "export", "--checkpoint", str(source), "--family", "stylegan2", "--out",
                 str(tmp_path / "o.pt")]) == 2
    assert "holds 'fastgan' generators; expected stylegan2" in capsys.readouterr().err
    broken = tmp_path / "broken.pt"
    broken.write_bytes(gan_checkpoint_bytes("fastgan", "quick_32", {"class_0_discriminator": Generator(
        get_gan_preset("fastgan", "quick_32")).state_dict()}, 1, {}))
    assert main(["gan", "export", "--checkpoint", str(broken), "--family", "fastgan", "--out",
                 str(tmp_path / "o.pt")]) == 2
    assert "the weights are for another architecture" in capsys.readouterr().err
    assert not (tmp_path / "o.pt").exists()
