import torch

from training.networks.attention import SelfAttention2d
from training.networks.sagan import Discriminator, Generator


def test_shapes_and_layout():
    G, D = Generator(channels=8), Discriminator(channels=8)
    images = G(torch.randn(3, 128))
    assert images.shape == (3, 3, 64, 64) and images.abs().max() <= 1
    assert D(images).shape == (3,)
    # Self-attention at G's 16x16 and 32x32 and at D's two lowest resolutions (8x8, 4x4).
    assert [m.channels for m in G.modules() if isinstance(m, SelfAttention2d)] == [16, 8]
    assert [m.channels for m in D.modules() if isinstance(m, SelfAttention2d)] == [32, 64]


def test_paper_widths():
    G = Generator(channels=64)
    assert G.net[0][0].out_channels == 512  # 4x4x512


def test_spectral_norm_everywhere_but_the_output_layer():
    for net in (Generator(channels=8), Discriminator(channels=8)):
        convs = [m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
        normalised = [hasattr(m, "parametrizations") for m in convs]
        assert all(normalised[:-1])


def test_eval_image_depends_only_on_its_own_latent():
    torch.manual_seed(0)
    G = Generator(channels=8)
    for _ in range(3):  # non-trivial BatchNorm running statistics
        G(torch.randn(16, 128))
    G.eval()
    z = torch.randn(5, 128)
    with torch.no_grad():
        together = G(torch.cat([z, torch.randn(7, 128) * 3]))[:5]
        alone = torch.cat([G(z[i : i + 1]) for i in range(5)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


def test_ablation_without_attention():
    assert not any(isinstance(m, SelfAttention2d) for m in Generator(channels=8, attention=False).modules())


def test_spectral_norm_matches_torch_and_ignores_autocast():
    from torch.nn.utils.parametrizations import spectral_norm as torch_spectral_norm

    from training.networks.spectral_norm import spectral_norm

    for make in (lambda: torch.nn.Conv2d(8, 16, 3), lambda: torch.nn.ConvTranspose2d(8, 16, 4)):
        torch.manual_seed(0)
        ours = spectral_norm(make())
        torch.manual_seed(0)
        reference = torch_spectral_norm(make())
        assert ours.state_dict().keys() == reference.state_dict().keys()
        for _ in range(5):  # power iterations in train mode
            torch.testing.assert_close(ours.weight, reference.weight)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            weight = ours.weight
        assert weight.dtype == torch.float32
        sigma = torch.linalg.matrix_norm(ours.eval().weight.flatten(1) if not isinstance(ours, torch.nn.ConvTranspose2d)
                                         else ours.eval().weight.transpose(0, 1).flatten(1), ord=2)
        assert abs(sigma.item() - 1) < 0.05
