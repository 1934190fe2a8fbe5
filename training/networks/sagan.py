"""SAGAN generator and discriminator for 64x64 RGB (the authors' layout), spectral norm on both.

Generator:     z [B, 128] -> 4x4x8c -> 8x8x4c -> 16x16x2c (attn) -> 32x32xc (attn) -> 64x64x3 tanh
Discriminator: 64x64x3 -> 32x32xc -> 16x16x2c -> 8x8x4c (attn) -> 4x4x8c (attn) -> one logit

c = `channels` (64 in the paper's model, so 512 channels at 4x4). The generator normalises with
BatchNorm: in eval mode it uses running statistics, so an image depends only on its own latent.
`g_attention` names the generator's attention resolutions (the paper's: 16 and 32). The 32x32 layer
attends over 1,024 positions and costs most of a CPU training step; (16,) leaves it out.
"""

from __future__ import annotations

import torch
from torch import nn

from training.networks.attention import SelfAttention2d
from training.constants import IMAGE_CHANNELS, IMAGE_SIZE, Z_DIM
from training.networks.spectral_norm import spectral_norm

G_ATTENTION = (16, 32)  # the generator's attention resolutions in the paper's model


def _up_block(in_channels: int, out_channels: int, first: bool = False) -> nn.Sequential:
    conv = nn.ConvTranspose2d(in_channels, out_channels, 4, 1 if first else 2, 0 if first else 1)
    return nn.Sequential(spectral_norm(conv), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


def _down_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(spectral_norm(nn.Conv2d(in_channels, out_channels, 4, 2, 1)), nn.LeakyReLU(0.1, inplace=True))


class Generator(nn.Module):
    def __init__(self, z_dim: int = Z_DIM, channels: int = 64, attention: bool = True, attention_impl: str = "auto",
                 g_attention: tuple[int, ...] = G_ATTENTION):
        super().__init__()
        unknown = set(g_attention) - set(G_ATTENTION)
        if unknown:
            raise ValueError(f"the generator has attention at {G_ATTENTION} at most, got {tuple(g_attention)}")
        self.z_dim, self.channels, self.attention = z_dim, channels, attention
        widths = [8 * channels, 4 * channels, 2 * channels, channels]  # at 4, 8, 16, 32 px
        layers: list[nn.Module] = [_up_block(z_dim, widths[0], first=True)]
        for resolution, (in_width, out_width) in zip((8, 16, 32), zip(widths, widths[1:])):
            layers.append(_up_block(in_width, out_width))
            if attention and resolution in g_attention:
                layers.append(SelfAttention2d(out_width, impl=attention_impl))
        layers += [nn.ConvTranspose2d(widths[-1], IMAGE_CHANNELS, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, z_dim] -> images [B, 3, 64, 64] in [-1, 1]."""
        return self.net(z.reshape(z.shape[0], self.z_dim, 1, 1))


class Discriminator(nn.Module):
    def __init__(self, channels: int = 64, attention: bool = True, attention_impl: str = "auto"):
        super().__init__()
        self.channels, self.attention = channels, attention
        widths = [channels, 2 * channels, 4 * channels, 8 * channels]  # at 32, 16, 8, 4 px
        layers: list[nn.Module] = [_down_block(IMAGE_CHANNELS, widths[0])]
        for resolution, (in_width, out_width) in zip((16, 8, 4), zip(widths, widths[1:])):
            layers.append(_down_block(in_width, out_width))
            if attention and resolution in (8, 4):
                layers.append(SelfAttention2d(out_width, impl=attention_impl))
        layers.append(spectral_norm(nn.Conv2d(widths[-1], 1, 4)))
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, 64, 64] -> logits [B]."""
        return self.net(images).flatten()


def check_image_shape(images: torch.Tensor) -> None:
    expected = (IMAGE_CHANNELS, IMAGE_SIZE, IMAGE_SIZE)
    if images.ndim != 4 or tuple(images.shape[1:]) != expected:
        raise ValueError(f"expected images [B, {', '.join(map(str, expected))}], got {list(images.shape)}")
