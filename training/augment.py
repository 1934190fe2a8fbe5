"""Differentiable augmentation of every image D sees (DiffAugment: Zhao et al., NeurIPS 2020).

With little data, D memorises the real faces and G's gradient turns to noise. DiffAugment
transforms every image D sees, real and generated alike, with the same random family of
transforms; because each transform is differentiable, G is trained through it. Augmenting only the
reals would teach G to draw augmented faces; augmenting every D input (real, G(z), the blurred
reals and the memory, in D's step and in G's) leaves the real distribution the only target.

Policies (the paper's "color,translation,cutout", on images in [-1, 1]):
- color: per image, brightness + U(-0.5, 0.5); saturation x U(0, 2) around the image's own grey;
  contrast x U(0.5, 1.5) around the image's mean;
- translation: a whole-pixel shift of up to 1/8 of the side each way, zeros shifted in;
- cutout: a square of half the side, anywhere (it may hang over an edge), set to zero.

Every draw is made for the whole global batch from one torch.Generator and then sliced to this
process's rows, so the augmentation does not depend on the number of processes and an exact resume
repeats it (the generator is the trainer's, saved in the checkpoint).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

TRANSLATION_RATIO = 0.125  # the paper's: shift by up to 1/8 of the side
CUTOUT_RATIO = 0.5  # the paper's: a square of half the side

POLICIES = ("color", "translation", "cutout")


def parse_policy(policy: str) -> tuple[str, ...]:
    """"color,translation" -> ("color", "translation"); "" -> () (off); unknown names are an error."""
    names = tuple(name.strip() for name in policy.split(",") if name.strip())
    unknown = [name for name in names if name not in POLICIES]
    if unknown:
        raise ValueError(f"augment policy names {unknown} unknown; choose from {list(POLICIES)}, comma-separated ('' = off)")
    return names


def _uniform(generator: torch.Generator, batch: int, rows: slice, device, *shape) -> torch.Tensor:
    return torch.rand(batch, *shape, device=device, generator=generator)[rows]


def _color(x: torch.Tensor, generator: torch.Generator, batch: int, rows: slice) -> torch.Tensor:
    draws = _uniform(generator, batch, rows, x.device, 3, 1, 1, 1).to(x.dtype)
    x = x + (draws[:, 0] - 0.5)
    grey = x.mean(dim=1, keepdim=True)
    x = (x - grey) * (draws[:, 1] * 2) + grey
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (draws[:, 2] + 0.5) + mean


def _translation(x: torch.Tensor, generator: torch.Generator, batch: int, rows: slice) -> torch.Tensor:
    size = x.shape[-1]
    shift = int(size * TRANSLATION_RATIO + 0.5)
    offsets = torch.randint(-shift, shift + 1, (batch, 2), device=x.device, generator=generator)[rows]
    padded = F.pad(x, [shift, shift, shift, shift])  # zeros come in where the image moves away
    index = torch.arange(size, device=x.device) + shift
    ys = index[None, :] - offsets[:, :1]  # [b, H]: output row y shows input row y - dy
    xs = index[None, :] - offsets[:, 1:]  # [b, W]
    picked = padded[torch.arange(len(x), device=x.device)[:, None, None], :, ys[:, :, None], xs[:, None, :]]  # [b, H, W, C]
    return picked.permute(0, 3, 1, 2)


def _cutout(x: torch.Tensor, generator: torch.Generator, batch: int, rows: slice) -> torch.Tensor:
    size = x.shape[-1]
    side = int(size * CUTOUT_RATIO + 0.5)
    corners = torch.randint(0, size + (1 - side % 2), (batch, 2), device=x.device, generator=generator)[rows] - side // 2
    grid = torch.arange(size, device=x.device)[None, :]
    inside_y = (grid >= corners[:, :1]) & (grid < corners[:, :1] + side)  # [b, H]
    inside_x = (grid >= corners[:, 1:]) & (grid < corners[:, 1:] + side)  # [b, W]
    keep = ~(inside_y[:, :, None] & inside_x[:, None, :])  # [b, H, W]
    return x * keep[:, None].to(x.dtype)


TRANSFORMS = {"color": _color, "translation": _translation, "cutout": _cutout}


def diff_augment(images: torch.Tensor, policy: tuple[str, ...], generator: torch.Generator, batch: int | None = None,
                 rows: slice = slice(None)) -> torch.Tensor:
    """Apply `policy`'s transforms, in order, to images [b, C, H, W] (differentiably).

    `batch` is the global batch the draws are made for (default len(images)) and `rows` this
    process's share of it; with an empty policy the images are returned as they are, and no
    random number is drawn."""
    batch = len(images) if batch is None else batch
    for name in policy:
        images = TRANSFORMS[name](images, generator, batch, rows)
    return images
