import numpy as np
import pytest

from training.constants import Z_DIM
from training.latents import parse_seeds, seed_pairs_to_latents, seeds_to_latents, slerp, walk_mixes


def test_same_seed_same_latent_in_any_batch():
    alone = seeds_to_latents([5], Z_DIM)
    mixed = seeds_to_latents([9, 5, 2, 5], Z_DIM)
    assert alone.dtype == np.float32 and alone.shape == (1, Z_DIM)
    assert np.array_equal(mixed[1], alone[0]) and np.array_equal(mixed[3], alone[0])
    assert not np.array_equal(mixed[0], mixed[1])


def test_known_values_are_stable():
    # Pinned so a change to the mapping (which would change every served face) cannot go unnoticed.
    np.testing.assert_allclose(seeds_to_latents([0], Z_DIM)[0, :3], [-0.08293348, 0.54151666, 0.4765355], rtol=1e-6)


def test_standard_normal_statistics():
    latents = seeds_to_latents(np.arange(4000), Z_DIM)
    assert abs(latents.mean()) < 0.01 and abs(latents.std() - 1) < 0.01
    # Entries are uncorrelated across positions.
    correlation = np.corrcoef(latents[:, :8].T)
    assert np.abs(correlation - np.eye(8)).max() < 0.06


@pytest.mark.parametrize("threshold, expected_std", [(0.05, 0.0288), (0.5, 0.2837), (1.0, 0.5396), (2.0, 0.8796)])
def test_truncation_gives_a_truncated_normal(threshold, expected_std):
    latents = seeds_to_latents(np.arange(2000), Z_DIM, truncation=threshold)
    assert np.abs(latents).max() <= threshold
    assert abs(latents.std() - expected_std) < 0.01  # analytic std of N(0,1) restricted to [-t, t]


def test_truncation_keeps_entries_already_inside():
    plain = seeds_to_latents([3], Z_DIM)
    truncated = seeds_to_latents([3], Z_DIM, truncation=1.0)
    inside = np.abs(plain) <= 1.0
    assert np.array_equal(plain[inside], truncated[inside])
    assert np.array_equal(seeds_to_latents([3], Z_DIM, truncation=np.inf), plain)


def test_per_item_truncation():
    both = seeds_to_latents([1, 1], Z_DIM, truncation=[0.5, np.inf])
    assert np.abs(both[0]).max() <= 0.5
    assert np.array_equal(both[1], seeds_to_latents([1], Z_DIM)[0])


@pytest.mark.parametrize(
    "seeds, truncation, message",
    [
        ([-3], None, "non-negative"),
        ([1.5], None, "integers"),
        ([1], float("nan"), "NaN"),
        ([1], -1.0, "positive"),
        ([1], 0.0, "positive"),
        ([1, 2, 3], [0.5, 0.5], "one value per seed"),
    ],
)
def test_bad_input_is_named(seeds, truncation, message):
    with pytest.raises(ValueError, match=message):
        seeds_to_latents(np.asarray(seeds), Z_DIM, truncation)


def test_full_int64_range():
    latents = seeds_to_latents(np.array([0, 2**63 - 1], dtype=np.int64), Z_DIM)
    assert np.isfinite(latents).all()
    with pytest.raises(ValueError, match="at most"):
        seeds_to_latents(np.array([2**63], dtype=np.uint64), Z_DIM)


def test_parse_seeds():
    assert parse_seeds("0-3, 7,10-11") == [0, 1, 2, 3, 7, 10, 11]
    for bad in ("5-2", "a", ""):
        with pytest.raises(ValueError):
            parse_seeds(bad)


# ---------------------------------------------------------------- walks between two seeds


@pytest.mark.parametrize("truncation", [None, 0.7, 2.0])
def test_walk_starts_and_ends_on_the_seeds_own_latents(truncation):
    mixes = walk_mixes(5)
    walk = seed_pairs_to_latents([3] * 5, [17] * 5, mixes, Z_DIM, truncation)
    ends = seeds_to_latents([3, 17], Z_DIM, truncation)
    assert np.array_equal(walk[0], ends[0]) and np.array_equal(walk[-1], ends[1])  # bit for bit
    assert not np.array_equal(walk[2], walk[0]) and not np.array_equal(walk[2], walk[-1])


def test_walk_keeps_the_norm_where_a_straight_line_would_shrink_it():
    a, b = seeds_to_latents([3, 17], Z_DIM).astype(np.float64)
    middle = seed_pairs_to_latents([3], [17], [0.5], Z_DIM)[0]
    ends = sorted([np.linalg.norm(a), np.linalg.norm(b)])
    assert ends[0] - 1e-3 <= np.linalg.norm(middle) <= ends[1] + 1e-3  # on the arc between the two shells
    assert np.linalg.norm((a + b) / 2) < 0.8 * ends[0]  # what lerp would give: well inside
    # slerp of orthogonal unit vectors: the 45-degree point, unit length.
    point = slerp(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]]), np.array([0.5]))[0]
    assert np.allclose(point, [np.sqrt(0.5), np.sqrt(0.5)])


def test_walk_is_deterministic_and_per_item_in_any_batch():
    mixes = walk_mixes(7)
    together = seed_pairs_to_latents([3] * 7 + [9], [17] * 7 + [9], np.append(mixes, 0.3), Z_DIM, 0.8)
    alone = seed_pairs_to_latents([3], [17], mixes[3:4], Z_DIM, 0.8)
    assert np.array_equal(together[3], alone[0])
    assert np.array_equal(together[7], seeds_to_latents([9], Z_DIM, 0.8)[0])  # A == B: that seed's latent at any mix


def test_truncated_walk_stays_in_the_truncation_box():
    # Nearly opposite ends: slerp's weights exceed 1 midway, so without the clip entries would leave [-t, t].
    walk = seed_pairs_to_latents(np.arange(50), np.arange(50, 100), np.full(50, 0.5, np.float32), Z_DIM, 0.5)
    assert np.abs(walk).max() <= 0.5


def test_walk_mixes():
    assert walk_mixes(2).tolist() == [0.0, 1.0]
    assert walk_mixes(48).dtype == np.float32 and walk_mixes(48)[0] == 0 and walk_mixes(48)[-1] == 1
    for bad in (1, 0, -3, 2.5, True):
        with pytest.raises(ValueError, match="at least 2 frames"):
            walk_mixes(bad)


@pytest.mark.parametrize(
    "seeds_b, mix, message",
    [
        ([17, 18], [0.5], "as many B seeds"),
        ([-1], [0.5], "non-negative"),
        ([17], [np.nan], "mix must not be NaN"),
        ([17], [1.5], "between 0 and 1, got 1.5"),
        ([17], [-0.1], "between 0 and 1"),
        ([17], [0.1, 0.2], "one value per seed"),
    ],
)
def test_bad_walk_input_is_named(seeds_b, mix, message):
    with pytest.raises(ValueError, match=message):
        seed_pairs_to_latents([3], seeds_b, mix, Z_DIM)
