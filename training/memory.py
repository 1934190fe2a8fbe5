"""The memory repository: a fixed-capacity bank of generated images replayed to D as fakes.

Images are stored as tensors in the model's [-1, 1] range (not re-encoded as uint8 or BGR
files), so replayed memories are exactly what G produced. Filling starts once training has
converged (a configured epoch); when the bank is full each new image replaces a uniformly
random slot, so the bank stays a random sample of the generator's history. The bank, its fill
count and its random generator state are part of the checkpoint.
"""

from __future__ import annotations

import torch

from training.constants import IMAGE_CHANNELS, IMAGE_SIZE


class MemoryRepository:
    def __init__(self, capacity: int, device: torch.device | str = "cpu", seed: int = 0):
        if capacity < 1:
            raise ValueError(f"memory capacity must be positive, got {capacity}")
        self.capacity = capacity
        self.images = torch.zeros(capacity, IMAGE_CHANNELS, IMAGE_SIZE, IMAGE_SIZE, device=device)
        self.count = 0  # filled slots: images[:count] are valid
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def __len__(self) -> int:
        return self.count

    def add(self, images: torch.Tensor) -> None:
        """Store generated images: fill free slots first, then replace random slots."""
        images = images.detach().to(self.images.dtype)
        free = min(self.capacity - self.count, len(images))
        if free:
            self.images[self.count : self.count + free] = images[:free]
            self.count += free
        rest = images[free:][-self.capacity :]
        if len(rest):
            # Distinct random slots: with repeated indices, which write wins is unspecified (it
            # varies between threads), and the bank must be reproducible for an exact resume.
            slots = torch.randperm(self.capacity, device=self.images.device, generator=self.generator)[: len(rest)]
            self.images[slots] = rest

    def sample(self, count: int, rows: slice = slice(None)) -> torch.Tensor:
        """`count` stored images drawn uniformly with replacement (empty bank -> error); with `rows`,
        only those rows of the draw (a training process's share of a global batch: every process
        draws the same `count` indices and keeps its own)."""
        if self.count == 0:
            raise RuntimeError("the memory repository is empty")
        index = torch.randint(0, self.count, (count,), device=self.images.device, generator=self.generator)
        return self.images[index[rows]]

    def state_dict(self) -> dict:
        return {
            "capacity": self.capacity,
            "count": self.count,
            "images": self.images[: self.count].clone(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["capacity"] != self.capacity:
            raise ValueError(f"checkpoint memory capacity {state['capacity']} != configured {self.capacity}")
        self.count = int(state["count"])
        self.images.zero_()
        self.images[: self.count] = state["images"].to(self.images.device)
        self.generator.set_state(state["generator"])
