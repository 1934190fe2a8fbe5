"""Walks between two seeds, answered by the served model (SEED_B, MIX) over gRPC, and `make generate`'s walk GIF."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from clients import generate
from training.constants import Z_DIM
from training.latents import seed_pairs_to_latents, walk_mixes


def walk_inputs(seeds, seeds_b=None, mix=None, truncation=None, types=None, shapes=None):
    """Request tensors; `types`/`shapes` override a tensor's datatype/shape ({"MIX": "FP64"})."""
    types, shapes = types or {}, shapes or {}
    numpy_types = {"INT64": np.int64, "INT32": np.int32, "FP32": np.float32, "FP64": np.float64}
    inputs = []
    for name, values, datatype in (("SEED", seeds, "INT64"), ("TRUNCATION", truncation, "FP32"),
                                   ("SEED_B", seeds_b, "INT64"), ("MIX", mix, "FP32")):
        if values is None:
            continue
        datatype = types.get(name, datatype)
        array = np.asarray(values, dtype=numpy_types[datatype]).reshape(shapes.get(name, (-1, 1)))
        tensor = grpcclient.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def infer(client, inputs) -> np.ndarray:
    return client.infer("bamsgan", inputs, outputs=[grpcclient.InferRequestedOutput("IMAGE")]).as_numpy("IMAGE")


def local_images(onnx_path, latents) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return session.run(["image"], {"latent": latents})[0]


@pytest.mark.parametrize("truncation", [None, 0.7])
def test_walk_frames_are_the_slerp_of_the_two_seeds(grpc_client, triton_server, truncation):
    frames = 6
    mixes = walk_mixes(frames)
    thresholds = None if truncation is None else [truncation] * frames
    served = infer(grpc_client, walk_inputs([3] * frames, [17] * frames, mixes, thresholds))
    expected = local_images(triton_server.onnx_path, seed_pairs_to_latents([3] * frames, [17] * frames, mixes, Z_DIM, truncation))
    assert served.shape == (frames, 64, 64, 3) and served.dtype == np.uint8
    assert np.abs(served.astype(int) - expected).max() <= 1  # ONNX Runtime in Triton vs here: rounding at most
    # The walk starts and ends on the faces the seeds give alone, byte for byte, and moves in between.
    plain = infer(grpc_client, walk_inputs([3, 17], truncation=thresholds and thresholds[:2]))
    assert np.array_equal(served[0], plain[0]) and np.array_equal(served[-1], plain[1])
    assert len({frame.tobytes() for frame in served}) == frames


def test_a_walk_point_is_the_same_alone_or_in_a_batch(grpc_client):
    alone = infer(grpc_client, walk_inputs([3], [17], [0.4]))
    batched = infer(grpc_client, walk_inputs([5, 3, 9], [6, 17, 9], [0.1, 0.4, 0.9]))
    assert np.array_equal(alone[0], batched[1])
    assert np.array_equal(batched[2], infer(grpc_client, walk_inputs([9]))[0])  # from a seed to itself: that face


BAD_WALKS = {
    # name: (inputs, words the INVALID_ARGUMENT message must contain)
    "seed-b-without-mix": (lambda: walk_inputs([1, 2], seeds_b=[3, 4]), ["SEED_B and MIX go together"]),
    "mix-without-seed-b": (lambda: walk_inputs([1, 2], mix=[0.5, 0.5]), ["SEED_B and MIX go together"]),
    "seed-b-fp32": (lambda: walk_inputs([1], [2], [0.5], types={"SEED_B": "FP32"}), ["SEED_B", "FP32", "INT64"]),
    "mix-fp64": (lambda: walk_inputs([1], [2], [0.5], types={"MIX": "FP64"}), ["MIX", "FP64", "FP32"]),
    "mix-int32": (lambda: walk_inputs([1], [2], [0], types={"MIX": "INT32"}), ["MIX", "INT32", "FP32"]),
    "mix-shape-n-by-2": (lambda: walk_inputs([1, 2], [3, 4], [0.1, 0.2, 0.3, 0.4], shapes={"MIX": (2, 2)}), ["MIX", "shape"]),
    "seed-b-flat": (lambda: walk_inputs([1, 2], [3, 4], [0.1, 0.2], shapes={"SEED_B": (2,)}), ["SEED_B", "shape"]),
    "mix-fewer": (lambda: walk_inputs([1, 2, 3], [4, 5, 6], [0.5]), ["batch size does not match"]),
    "seed-b-more": (lambda: walk_inputs([1, 2], [4, 5, 6], [0.5, 0.5]), ["batch size does not match"]),
    "seed-b-negative": (lambda: walk_inputs([1, 2], [4, -6], [0.5, 0.5]), ["SEED_B must be non-negative, got -6"]),
    "mix-nan": (lambda: walk_inputs([1, 2], [4, 5], [0.5, np.nan]), ["MIX must be between 0 and 1", "nan"]),
    "mix-over-one": (lambda: walk_inputs([1, 2], [4, 5], [0.5, 1.5]), ["MIX must be between 0 and 1", "1.5"]),
    "mix-negative": (lambda: walk_inputs([1], [4], [-0.25]), ["MIX must be between 0 and 1", "-0.25"]),
}


@pytest.mark.parametrize("case", sorted(BAD_WALKS))
def test_bad_walk_request_gets_invalid_argument(grpc_client, case):
    make, words = BAD_WALKS[case]
    with pytest.raises(InferenceServerException) as raised:
        grpc_client.infer("bamsgan", make())
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT", raised.value.message()
    for word in words:
        assert word in raised.value.message(), f"{case}: {raised.value.message()!r} lacks {word!r}"
    assert infer(grpc_client, walk_inputs([1], [2], [0.5])).shape == (1, 64, 64, 3)  # still serving walks


# ---------------------------------------------------------------- make generate SEEDS=3,17 FRAMES=48 OUT=out/walk.gif


def test_generate_writes_a_walk_gif_and_frames(triton_server, grpc_client, tmp_path, capsys):
    gif, frames_dir = tmp_path / "out" / "walk.gif", tmp_path / "frames"
    code = generate.main(["--url", triton_server.grpc_url, "--seeds", "3,17", "--frames", "7", "--out", str(gif),
                          "--each", str(frames_dir), "--truncation", "0.8"])
    assert code == 0
    assert "7 frames of the walk 3 -> 17" in capsys.readouterr().out
    served = infer(grpc_client, walk_inputs([3] * 7, [17] * 7, walk_mixes(7), [0.8] * 7))
    for index in range(7):  # --each: lossless PNGs, the served bytes
        assert np.array_equal(np.asarray(Image.open(frames_dir / f"frame-{index:04d}.png").convert("RGB")), served[index])
    with Image.open(gif) as animation:
        assert animation.format == "GIF" and animation.n_frames == 7 and animation.info["loop"] == 0
        assert animation.info["duration"] == generate.gif_frame_ms(generate.WALK_FPS) == 80
        for index in (0, 6):
            animation.seek(index)
            # GIF: a 256-colour palette per frame, so close to the served face, not equal.
            assert np.abs(np.asarray(animation.convert("RGB")).astype(int) - served[index]).mean() < 6


def test_generate_walk_as_a_png_strip(triton_server, tmp_path):
    out = tmp_path / "walk.png"
    assert generate.main(["--url", triton_server.grpc_url, "--seeds", "3,17", "--frames", "4", "--columns", "4", "--out", str(out)]) == 0
    assert Image.open(out).size == (4 * 66 + 2, 66 + 2)


@pytest.mark.parametrize("argv, words", [
    (["--seeds", "3", "--frames", "4"], "exactly two seeds"),
    (["--seeds", "3,4,5", "--frames", "4"], "got 3"),
    (["--seeds", "3,4", "--frames", "1"], "--frames >= 2"),
    (["--seeds", "3,4", "--frames", "x"], "invalid int value"),
    (["--seeds", "3,4", "--frames", "4", "--fps", "0"], "--fps > 0"),
])
def test_bad_walk_arguments_exit_2(tmp_path, capsys, argv, words):
    with pytest.raises(SystemExit) as exited:
        generate.main(["--url", "127.0.0.1:1", "--out", str(tmp_path / "walk.gif"), *argv])
    assert exited.value.code == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "walk.gif").exists()
