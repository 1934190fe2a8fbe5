import pytest
import torch

from training.memory import MemoryRepository


def images(count, value=None):
    if value is not None:
        return torch.full((count, 3, 64, 64), float(value))
    return torch.rand(count, 3, 64, 64) * 2 - 1


def test_never_exceeds_capacity_and_fills_in_order():
    memory = MemoryRepository(10)
    memory.add(images(4, 0.1))
    assert len(memory) == 4 and torch.equal(memory.images[0], images(1, 0.1)[0])
    memory.add(images(30))
    assert len(memory) == 10 and memory.images.shape[0] == 10


def test_replacement_is_random():
    memory = MemoryRepository(50, seed=1)
    memory.add(images(50, -1))
    for step in range(40):
        memory.add(images(1, step / 40))
    replaced = (memory.images != -1).flatten(1).any(1)
    # 40 random replacements into 50 slots: not the first or last 40 slots, and some slots hit twice.
    assert 20 < int(replaced.sum()) < 40
    assert not replaced[:20].all() and not replaced[-20:].all()


def test_values_round_trip_exactly_and_resume_restores_state():
    memory = MemoryRepository(8, seed=3)
    stored = images(12)
    memory.add(stored)
    state = memory.state_dict()
    restored = MemoryRepository(8, seed=99)
    restored.load_state_dict(state)
    assert len(restored) == 8 and torch.equal(restored.images, memory.images)
    # Same RNG state: the same future samples and replacements.
    assert torch.equal(restored.sample(5), memory.sample(5))
    new = images(3)
    memory.add(new)
    restored.add(new)
    assert torch.equal(restored.images, memory.images)
    # Values are kept exactly as generated, in [-1, 1].
    added = torch.cat([stored, new])
    assert all(any(torch.equal(row, image) for image in added) for row in memory.images)


def test_empty_and_bad_capacity():
    with pytest.raises(RuntimeError, match="empty"):
        MemoryRepository(4).sample(1)
    with pytest.raises(ValueError, match="positive"):
        MemoryRepository(0)


def test_replacement_is_reproducible():
    # Many small adds into a small bank: the case where random slots used to repeat within one add.
    banks = [MemoryRepository(6, seed=5) for _ in range(2)]
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        batch = torch.rand(5, 3, 64, 64, generator=generator) * 2 - 1
        for bank in banks:
            bank.add(batch)
    assert torch.equal(banks[0].images, banks[1].images)


def test_a_process_share_of_a_draw_is_those_rows_of_the_whole_draw():
    # Data-parallel training: every process draws the global batch's indices and keeps its rows.
    banks = [MemoryRepository(16, seed=7) for _ in range(3)]
    for bank in banks:
        bank.add(torch.arange(16.0)[:, None, None, None].expand(16, 3, 64, 64) / 16)
    whole = banks[0].sample(8)
    assert torch.equal(banks[1].sample(8, rows=slice(0, 4)), whole[:4])
    assert torch.equal(banks[2].sample(8, rows=slice(4, 8)), whole[4:])
