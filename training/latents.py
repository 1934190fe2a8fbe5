"""Seeds -> latents: the one definition of the mapping from integer seeds to generator inputs.

Everything that turns a seed into a face uses this module: the trainer's fixed-seed sample
grids, the Triton model (export copies this file, unchanged, into every model version so a
version is self-contained), and the clients. It depends on numpy only.

Design:
- Counter-based: latent entry j of seed s is a pure function of (s, j) through the SplitMix64
  mixer, so the same seed gives byte-identical latents in any batch, in any order, on any
  machine, and the whole batch is computed with array arithmetic (no per-seed Python loop).
- Standard normal entries by Box-Muller from two 53-bit uniforms, computed in float64 and
  rounded once to float32.
- Truncation (BigGAN's truncation trick): with threshold t, each entry is drawn from N(0, 1)
  restricted to [-t, t] by rejection sampling over further counter rounds. Round 0 is the
  untruncated draw, so entries already inside [-t, t] are kept and a truncated face stays close
  to its untruncated self. Later rounds propose from N(0, 1) when t >= 1 and from U(-t, t) when
  t < 1, so every round accepts with probability >= 0.6.
- Walks between two seeds (`seed_pairs_to_latents`): spherical interpolation (slerp) of the two
  seeds' latents. In 128 dimensions a standard normal latent lies close to the sphere of radius
  sqrt(128); the straight line between two of them cuts through the inside (its midpoint has
  norm ~sqrt(64)), where the generator saw no training latents, so a linear walk fades towards a
  washed-out average face midway. slerp follows the great circle and keeps the norm (White 2016,
  "Sampling Generative Networks"). Truncation is applied to both ends first, with the same
  threshold, and the result is clipped to [-t, t] again, so every latent of a truncated walk lies
  where truncated latents lie. MIX 0 gives seed A's latent and MIX 1 seed B's, bit for bit, so a
  walk starts and ends on the faces that those seeds give alone.
"""

from __future__ import annotations

import re

import numpy as np

_MASK_MIXER_1 = np.uint64(0xBF58476D1CE4E5B9)
_MASK_MIXER_2 = np.uint64(0x94D049BB133111EB)
_GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MAX_TRUNCATION_ROUNDS = 64  # P(an entry is still rejected after these) < 0.4**64

MAX_SEED = 2**63 - 1


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 arrays (wrapping arithmetic is the intent)."""
    with np.errstate(over="ignore"):
        x = x + _GOLDEN_GAMMA
        x = (x ^ (x >> np.uint64(30))) * _MASK_MIXER_1
        x = (x ^ (x >> np.uint64(27))) * _MASK_MIXER_2
        return x ^ (x >> np.uint64(31))


def _uniforms(seed_keys: np.ndarray, counters: np.ndarray) -> np.ndarray:
    """Uniforms in (0, 1), float64, shape [B, len(counters)], from hashed (seed, counter)."""
    bits = _splitmix64(seed_keys[:, None] ^ _splitmix64(counters[None, :]))
    return ((bits >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / 2.0**53)


def _normals(seed_keys: np.ndarray, dim: int, round_index: int) -> np.ndarray:
    """Standard normals, float64 [B, dim], for one counter round (Box-Muller)."""
    base = np.uint64(round_index) * np.uint64(4 * dim)
    counters = base + np.arange(2 * dim, dtype=np.uint64)
    u = _uniforms(seed_keys, counters)
    return np.sqrt(-2.0 * np.log(u[:, :dim])) * np.cos(2.0 * np.pi * u[:, dim:])


def _uniform_proposals(seed_keys: np.ndarray, dim: int, round_index: int) -> tuple[np.ndarray, np.ndarray]:
    """U(0, 1) pairs for the uniform-proposal rejection round (disjoint counters from _normals)."""
    base = np.uint64(round_index) * np.uint64(4 * dim) + np.uint64(2 * dim)
    u = _uniforms(seed_keys, base + np.arange(2 * dim, dtype=np.uint64))
    return u[:, :dim], u[:, dim:]


def validate_seeds(seeds) -> np.ndarray:
    """Seeds as a 1-D int64 array; ValueError naming the problem otherwise."""
    array = np.asarray(seeds)
    if array.dtype.kind not in "iu":
        raise ValueError(f"seeds must be integers, got dtype {array.dtype}")
    array = array.reshape(-1)
    if array.dtype.kind == "u" and array.size and array.max() > MAX_SEED:
        raise ValueError(f"seeds must be at most {MAX_SEED} (INT64), got {int(array.max())}")
    array = array.astype(np.int64)
    if array.size and array.min() < 0:
        raise ValueError(f"seeds must be non-negative, got {int(array.min())}")
    return array


def _per_item(values, batch: int, name: str) -> np.ndarray:
    """float64 [batch] from one value per seed or a single value for all; ValueError if NaN or miscounted."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if values.size == 1 and batch != 1:
        values = np.full(batch, values[0])
    if values.size != batch:
        raise ValueError(f"{name} needs one value per seed or a single value, got {values.size} for {batch} seeds")
    if np.isnan(values).any():
        raise ValueError(f"{name} must not be NaN")
    return values


def validate_truncation(truncation, batch: int) -> np.ndarray:
    """Per-item truncation thresholds, float64 [batch]; inf means no truncation."""
    values = _per_item(truncation, batch, "truncation")
    if (values <= 0).any():
        raise ValueError(f"truncation must be positive, got {float(values.min())}")
    return values


def seeds_to_latents(seeds, dim: int, truncation=None) -> np.ndarray:
    """Map non-negative integer seeds to latents, float32 [len(seeds), dim].

    truncation: None (no truncation), one positive threshold for all seeds, or one per seed;
    `inf` leaves that seed untruncated.
    """
    seed_array = validate_seeds(seeds)
    seed_keys = _splitmix64(seed_array.astype(np.uint64))
    latents = _normals(seed_keys, dim, 0)
    if truncation is not None and seed_array.size:
        thresholds = validate_truncation(truncation, seed_array.size)[:, None]
        rejected = np.abs(latents) > thresholds
        for round_index in range(1, _MAX_TRUNCATION_ROUNDS + 1):
            if not rejected.any():
                break
            # Normal proposals for t >= 1, uniform proposals (accepted with prob exp(-x^2/2)) for t < 1.
            normal = _normals(seed_keys, dim, round_index)
            u_value, u_accept = _uniform_proposals(seed_keys, dim, round_index)
            uniform = (2.0 * u_value - 1.0) * thresholds
            use_uniform = np.broadcast_to(thresholds < 1.0, latents.shape)
            proposal = np.where(use_uniform, uniform, normal)
            accepted = np.where(use_uniform, u_accept < np.exp(-0.5 * uniform**2), np.abs(normal) <= thresholds)
            take = rejected & accepted
            latents = np.where(take, proposal, latents)
            rejected &= ~take
        latents = np.clip(latents, -thresholds, thresholds)
    return latents.astype(np.float32)


def validate_mix(mix, batch: int) -> np.ndarray:
    """Walk positions, float64 [batch], each in [0, 1] (0 = seed A, 1 = seed B)."""
    values = _per_item(mix, batch, "mix")
    if values.size and (values.min() < 0 or values.max() > 1):
        bad = values[(values < 0) | (values > 1)][0]
        raise ValueError(f"mix must be between 0 and 1, got {float(bad)}")
    return values


def slerp(a: np.ndarray, b: np.ndarray, mix: np.ndarray) -> np.ndarray:
    """Spherical interpolation of rows a[i] -> b[i] at mix[i], float64 [B, dim].

    Exact at the ends (mix 0 -> a, 1 -> b); linear where the two rows are (nearly) parallel,
    where the sphere's arc and the straight line agree and slerp's weights would be 0/0.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mix = np.asarray(mix, np.float64).reshape(-1, 1)
    norms = np.linalg.norm(a, axis=1, keepdims=True) * np.linalg.norm(b, axis=1, keepdims=True)
    cosine = np.clip(np.sum(a * b, axis=1, keepdims=True) / np.maximum(norms, 1e-300), -1.0, 1.0)
    angle = np.arccos(cosine)
    sine = np.sin(angle)
    parallel = sine < 1e-6
    safe_sine = np.where(parallel, 1.0, sine)
    weight_a = np.where(parallel, 1.0 - mix, np.sin((1.0 - mix) * angle) / safe_sine)
    weight_b = np.where(parallel, mix, np.sin(mix * angle) / safe_sine)
    return weight_a * a + weight_b * b


def seed_pairs_to_latents(seeds_a, seeds_b, mix, dim: int, truncation=None) -> np.ndarray:
    """Points of walks from seeds_a[i] to seeds_b[i] at mix[i], float32 [B, dim]: slerp of the
    two seeds' (truncated) latents, clipped to the truncation box (see the module docstring)."""
    seeds_a, seeds_b = validate_seeds(seeds_a), validate_seeds(seeds_b)
    if seeds_a.size != seeds_b.size:
        raise ValueError(f"a walk needs as many B seeds as A seeds, got {seeds_b.size} for {seeds_a.size}")
    mix = validate_mix(mix, seeds_a.size)
    start = seeds_to_latents(seeds_a, dim, truncation)
    end = seeds_to_latents(seeds_b, dim, truncation)
    latents = slerp(start, end, mix)
    if truncation is not None and seeds_a.size:
        thresholds = validate_truncation(truncation, seeds_a.size)[:, None]
        latents = np.clip(latents, -thresholds, thresholds)
    return latents.astype(np.float32)


def walk_mixes(frames: int) -> np.ndarray:
    """The MIX values of a walk of `frames` frames from seed A to seed B, both ends included.

    float32, the dtype the served model's MIX input has, so a client's walk and the server's agree.
    """
    if isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or frames < 2:
        raise ValueError(f"a walk needs at least 2 frames (whole number), got {frames!r}")
    return np.linspace(0.0, 1.0, int(frames), dtype=np.float32)


def parse_seeds(text: str) -> list[int]:
    """Parse '0-7,12,20-22' into [0..7, 12, 20, 21, 22] (inclusive ranges)."""
    seeds: list[int] = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        match = re.fullmatch(r"(\d+)-(\d+)", part)
        if match:
            start, end = int(match[1]), int(match[2])
            if end < start:
                raise ValueError(f"seed range {part!r} runs backwards")
            seeds.extend(range(start, end + 1))
        else:
            try:
                seeds.append(int(part))
            except ValueError:
                raise ValueError(f"not a seed or a seed range: {part!r}") from None
    if not seeds:
        raise ValueError(f"no seeds in {text!r}")
    return seeds
