"""Triton Python backend model: seeds -> latents -> generator -> uint8 RGB faces.

export/ copies this file, with training/latents.py, engines.py (the engines, beside this file),
generator.onnx (+ optional generator.plan) and metadata.json, into every version directory
model_repository/bamsgan/N/, so a version is self-contained: it imports latents.py and engines.py
from its own directory, never from the project's packages.

Every execute() call runs ONE batched forward pass for all its (dynamically batched) requests:
seeds of the valid requests are concatenated, mapped to latents in one vectorised call and run
through the engine at once (chunked only beyond the engine's batch limit). A request with bad
input gets its own error response; the others in the same batch still get their images.

Walks: with the optional inputs SEED_B (INT64 [1]) and MIX (FP32 [1] in [0, 1]), item i is the
point MIX[i] of the walk from SEED[i] to SEED_B[i] (latents.seed_pairs_to_latents: slerp of the
two seeds' latents), so any gRPC client gets walk frames by sending seeds, and the answer stays a
pure function of the request (deterministic, cacheable). Both or neither must be sent.

The same file also serves the ensemble's first step (serving/ensemble_repository/bamsgan_latents):
when config.pbtxt declares the output LATENT instead of IMAGE it stops after the latents.

Engine, from metadata.json "engines", on a GPU instance: the TensorRT plan when `tensorrt` (and
torch, for CUDA buffers) import, else ONNX Runtime with the CUDA execution provider when
available; otherwise ONNX Runtime on CPU. config.pbtxt parameters:
  engine       auto (default) | tensorrt | onnxruntime-cuda | onnxruntime-cpu
  ort_threads  ONNX Runtime intra-op threads on CPU; 0 (default) = one per core
  fp16         "true": use the FP16 ONNX variant on GPU when exported (default false)
"""

import importlib.util
import json
import os
import time

import numpy as np
import triton_python_backend_utils as pb_utils


def _error(message, code="INVALID_ARG"):
    """An error response; with a Triton error code where the backend has codes (Triton >= 23.06).

    Looked up at call time: the stub adds TritonError to pb_utils only after importing model.py.
    """
    code = getattr(pb_utils.TritonError, code, None)
    error = pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
    return pb_utils.InferenceResponse(output_tensors=[], error=error)


# Request parameter a client may send: when it stops waiting (Unix time, ms). clients/endpoints.py's
# DEADLINE_PARAMETER (a test checks the two agree; this file is copied into versions and imports
# nothing from the project). Triton itself keeps computing requests whose clients have left, so
# under overload the model refuses, without computing, a request that cannot finish before its
# deadline: goodput stays near capacity instead of falling to work nobody waits for.
DEADLINE_PARAMETER = "deadline_unix_ms"
DEADLINE_REFUSAL = "deadline passed while queued: the server is overloaded, retry later"


def _load_module(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        self.latents = _load_module("bamsgan_latents_" + args["model_version"], os.path.join(version_dir, "latents.py"))
        input_names = {item["name"] for item in config["input"]}
        self.has_truncation = "TRUNCATION" in input_names
        self.has_walk = {"SEED_B", "MIX"} <= input_names  # a config without them serves faces only
        self.ms_per_item = 0.0  # the last computed batch's time per face: the estimate of this batch's run time
        self.output_name = config["output"][0]["name"]  # IMAGE, or LATENT for the ensemble's first step
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}

        metadata_path = os.path.join(version_dir, "metadata.json")
        metadata = {}
        if os.path.isfile(metadata_path):
            with open(metadata_path) as file:
                metadata = json.load(file)
        # The latent size: the version's metadata.json says it (export writes it); the ensemble's
        # latents step also declares it as its LATENT output's dims.
        output_dims = [int(d) for d in config["output"][0]["dims"]]
        if "z_dim" in metadata:
            self.z_dim = int(metadata["z_dim"])
        elif self.output_name == "LATENT":
            self.z_dim = output_dims[-1]
        else:
            raise pb_utils.TritonModelException(f"{metadata_path} is missing or has no z_dim: re-export this version (make export)")
        self.image_shape = output_dims  # IMAGE [H, W, C], from config.pbtxt (the served contract)
        self.engine = None
        if self.output_name == "IMAGE":
            self.engine = self._make_engine(args, version_dir, metadata, parameters)

    def _make_engine(self, args, version_dir, metadata, parameters):
        engines = metadata.get("engines") or {"onnx": "generator.onnx"}
        choice = parameters.get("engine", "auto") or "auto"
        if choice not in ("auto", "tensorrt", "onnxruntime-cuda", "onnxruntime-cpu"):
            raise pb_utils.TritonModelException(f"parameter engine={choice!r}: choose auto, tensorrt, onnxruntime-cuda or onnxruntime-cpu")
        engines_module = _load_module("bamsgan_engines_" + args["model_version"], os.path.join(version_dir, "engines.py"))
        threads = int(parameters.get("ort_threads", "") or engines_module.DEFAULT_ORT_THREADS)
        on_gpu = args.get("model_instance_kind") == "GPU"
        device_id = int(args.get("model_instance_device_id", 0))

        def path(key):
            name = engines.get(key)
            return os.path.join(version_dir, name) if name and os.path.isfile(os.path.join(version_dir, name)) else None

        if choice == "tensorrt" and path("tensorrt") is None:
            raise pb_utils.TritonModelException(f"parameter engine=tensorrt but {version_dir} has no TensorRT plan")
        if choice == "tensorrt" or (choice == "auto" and on_gpu and path("tensorrt")):
            try:
                engine = engines_module.TensorRTEngine(path("tensorrt"), device_id, self.image_shape)
                pb_utils.Logger.log_info(f"bamsgan: TensorRT engine {engines['tensorrt']} on GPU {device_id}")
                return engine
            except Exception as error:  # no tensorrt/torch, or a plan for another GPU: fall back
                if choice == "tensorrt":
                    raise
                pb_utils.Logger.log_warn(f"bamsgan: TensorRT plan not usable ({error}); falling back to ONNX Runtime")

        import onnxruntime as ort

        use_cuda = choice == "onnxruntime-cuda" or (
            choice == "auto" and on_gpu and "CUDAExecutionProvider" in ort.get_available_providers()
        )
        onnx = path("onnx_fp16") if use_cuda and parameters.get("fp16", "false").lower() == "true" else None
        onnx = onnx or path("onnx")
        if onnx is None:
            raise pb_utils.TritonModelException(f"no ONNX generator in {version_dir} (metadata engines: {engines})")
        if use_cuda:
            providers = [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        engine = engines_module.OnnxRuntimeEngine(onnx, providers, threads)
        pb_utils.Logger.log_info(f"bamsgan: ONNX Runtime {os.path.basename(onnx)} with {engine.providers}")
        return engine

    @staticmethod
    def _deadline_ms(request):
        """The client's deadline (optional request parameter, Unix ms), or None."""
        try:
            deadline_ms = json.loads(request.parameters() or "{}").get(DEADLINE_PARAMETER)
        except ValueError:
            return None
        if not isinstance(deadline_ms, (int, float)) or isinstance(deadline_ms, bool):
            return None
        return deadline_ms

    def _read_request(self, request):
        """(seeds int64 [n], truncation float64 [n] or None, walk (seeds_b, mix) or None) of one
        request; ValueError if invalid."""
        seed_tensor = pb_utils.get_input_tensor_by_name(request, "SEED")
        if seed_tensor is None:
            raise ValueError("SEED is required")
        seeds = seed_tensor.as_numpy()
        if seeds.dtype != np.int64:
            raise ValueError(f"SEED must be INT64, got {seeds.dtype}")
        # Triton's core guarantees [n, 1] for n >= 1; an empty request ([0, 1]) reaches the Python
        # backend (Triton 2.41) as a 1-D array of one arbitrary value, so 1-D means empty.
        if seeds.size == 0 or seeds.ndim == 1:
            raise ValueError("SEED is empty: send at least one seed, shape [n, 1] with n >= 1")
        if seeds.ndim != 2 or seeds.shape[1] != 1:
            raise ValueError(f"SEED must have shape [n, 1], got {list(seeds.shape)}")
        seeds = seeds[:, 0]
        if seeds.min() < 0:
            raise ValueError(f"SEED must be non-negative, got {int(seeds.min())}")

        truncation = self._read_per_item(request, "TRUNCATION", np.float32, len(seeds)) if self.has_truncation else None
        if truncation is not None:
            if np.isnan(truncation).any():
                raise ValueError("TRUNCATION must not be NaN")
            if (truncation <= 0).any():
                raise ValueError(f"TRUNCATION must be positive (or omitted for none), got {float(truncation.min())}")
        return seeds, truncation, self._read_walk(request, len(seeds))

    def _read_per_item(self, request, name, dtype, count):
        """Optional input `name`: float64/int64 [count] (its own dtype checked), or None if absent."""
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            return None
        values = tensor.as_numpy()
        if values.dtype != dtype:
            raise ValueError(f"{name} must be {'FP32' if dtype == np.float32 else 'INT64'}, got {values.dtype}")
        if values.shape != (count, 1):
            raise ValueError(f"{name} must have the shape of SEED, [{count}, 1], got {list(values.shape)}")
        return values[:, 0].astype(np.float64 if dtype == np.float32 else np.int64)

    def _read_walk(self, request, count):
        """(seeds_b int64 [n], mix float64 [n]) of a walk request, None for plain faces."""
        if not self.has_walk:
            return None
        seeds_b = self._read_per_item(request, "SEED_B", np.int64, count)
        mix = self._read_per_item(request, "MIX", np.float32, count)
        if (seeds_b is None) != (mix is None):
            raise ValueError("SEED_B and MIX go together: send both for a walk (MIX 0 = SEED, 1 = SEED_B) or neither")
        if seeds_b is None:
            return None
        if seeds_b.min() < 0:
            raise ValueError(f"SEED_B must be non-negative, got {int(seeds_b.min())}")
        if np.isnan(mix).any() or mix.min() < 0 or mix.max() > 1:
            bad = mix[np.isnan(mix) | (mix < 0) | (mix > 1)][0]
            raise ValueError(f"MIX must be between 0 and 1 (0 = SEED, 1 = SEED_B), got {float(bad)}")
        return seeds_b, mix

    def _run_engine(self, latents):
        limit = self.engine.max_batch or len(latents)
        if len(latents) <= limit:
            return self.engine(latents)
        return np.concatenate([self.engine(latents[i : i + limit]) for i in range(0, len(latents), limit)])

    def execute(self, requests):
        responses = [None] * len(requests)
        started = time.time()
        parts = []  # (index, seeds, truncation, walk, deadline_ms) of each well-formed request
        for index, request in enumerate(requests):
            try:
                parts.append((index, *self._read_request(request), self._deadline_ms(request)))
            except ValueError as error:
                responses[index] = _error(str(error))
        # This batch ends about ms_per_item x its faces from now; a request whose client stops
        # waiting before then is refused uncomputed (a lone request is never refused unless its
        # deadline is shorter than its own run time).
        expected_end_ms = started * 1000 + self.ms_per_item * sum(len(part[1]) for part in parts)
        in_time = []
        for part in parts:
            if part[4] is not None and part[4] < expected_end_ms:
                responses[part[0]] = _error(DEADLINE_REFUSAL, "UNAVAILABLE")
            else:
                in_time.append(part)
        parts = in_time
        if not parts:
            return responses
        valid = [(index, len(seeds)) for index, seeds, *_ in parts]
        seed_parts, truncation_parts, walk_parts = ([part[i] for part in parts] for i in (1, 2, 3))

        try:
            outputs = self._latents(seed_parts, truncation_parts, walk_parts)
            if self.engine is not None:
                outputs = self._run_engine(outputs)
        except Exception as error:  # engine failure: every request of this batch learns why
            for index, _ in valid:
                responses[index] = _error(f"generation failed: {error}", "INTERNAL")
            return responses

        self.ms_per_item = (time.time() - started) * 1000 / len(outputs)
        start = 0
        for index, count in valid:
            responses[index] = pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(self.output_name, outputs[start : start + count])]
            )
            start += count
        return responses

    def _latents(self, seed_parts, truncation_parts, walk_parts):
        """The latents of every valid request of a batch, in one vectorised call."""
        seeds = np.concatenate(seed_parts)
        truncation = None
        if any(part is not None for part in truncation_parts):
            # Per item; inf (no truncation) for requests that sent none.
            truncation = np.concatenate(
                [np.full(len(s), np.inf) if t is None else t for s, t in zip(seed_parts, truncation_parts)]
            )
        if all(walk is None for walk in walk_parts):
            return self.latents.seeds_to_latents(seeds, self.z_dim, truncation)
        # Plain requests batched with walks: a walk from the seed to itself is that seed's latent, bit for bit.
        seeds_b = np.concatenate([s if w is None else w[0] for s, w in zip(seed_parts, walk_parts)])
        mix = np.concatenate([np.zeros(len(s)) if w is None else w[1] for s, w in zip(seed_parts, walk_parts)])
        return self.latents.seed_pairs_to_latents(seeds, seeds_b, mix, self.z_dim, truncation)

    def finalize(self):
        self.engine = None
