"""Shared fixtures: a tiny published model version and a real Triton server serving it.

`triton_server` (session scope) starts tritonserver once for the whole test session on free
ports, serving a temporary copy of model_repository/bamsgan/config.pbtxt with one tiny version
published from a random checkpoint by the real exporter (`publish_test_version`).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_NAME = "bamsgan"
TEST_CHANNELS = 8  # tiny generator: fast to export and to run on 2 CPU cores


@dataclass
class PublishedVersion:
    version_dir: Path  # .../bamsgan/N
    onnx_path: Path  # .../bamsgan/N/generator.onnx
    generator: "object"  # the torch Generator that was exported (eval mode, reference attention)


def tiny_checkpoint_state(channels: int = TEST_CHANNELS, seed: int = 0) -> dict:
    """A checkpoint dict with random weights; BN running stats and attention gammas made non-trivial."""
    import torch

    from training.constants import Z_DIM
    from training.networks.sagan import Discriminator, Generator

    torch.manual_seed(seed)
    generator, ema = Generator(Z_DIM, channels=channels).train(), Generator(Z_DIM, channels=channels).train()
    with torch.no_grad():
        for g in (generator, ema):
            for name, parameter in g.named_parameters():
                if name.endswith("gamma"):  # 0 at init would hide the attention path from parity
                    parameter.fill_(0.5)
            for _ in range(2):  # train-mode passes: running mean/var away from 0/1, spectral-norm u, v updated
                g(torch.randn(16, Z_DIM))
    return {
        "model": {"z_dim": Z_DIM, "channels": channels, "attention": True},
        "config": {},
        "epoch": 3,
        "step": 1234,
        "G": generator.state_dict(),
        "D": Discriminator(channels=channels).state_dict(),
        "G_ema": ema.state_dict(),
    }


def publish_test_version(repo_dir: Path, channels: int = TEST_CHANNELS, seed: int = 0) -> PublishedVersion:
    """Publish a tiny random checkpoint into repo_dir/bamsgan/ with the real exporter (`make export`'s code)."""
    from export.pipeline import export_checkpoint
    from training.networks.attention import set_attention_impl
    from training.checkpoint import generator_from_checkpoint, load_checkpoint, save_checkpoint

    checkpoint = save_checkpoint(repo_dir.parent / "tiny-checkpoint.pt", tiny_checkpoint_state(channels, seed))
    model_dir = repo_dir / MODEL_NAME
    model_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO_ROOT / "model_repository" / MODEL_NAME / "config.pbtxt", model_dir / "config.pbtxt")
    result = export_checkpoint(checkpoint, repo_dir, MODEL_NAME, fp16=False, log=lambda line: None)
    generator = set_attention_impl(generator_from_checkpoint(load_checkpoint(checkpoint)), "reference")
    return PublishedVersion(result.version_dir, result.version_dir / "generator.onnx", generator)


@dataclass
class ServerInfo:
    grpc_url: str
    http_url: str
    metrics_url: str
    repository: Path
    model_name: str
    version: PublishedVersion
    server: "object"  # serving.launcher.TritonServer

    @property
    def generator(self):
        return self.version.generator

    @property
    def onnx_path(self) -> Path:
        return self.version.onnx_path


@pytest.fixture(scope="session")
def published_version(tmp_path_factory) -> PublishedVersion:
    """A tiny version in a session-wide temporary model repository (not served by itself)."""
    return publish_test_version(tmp_path_factory.mktemp("published") / "model_repository")


@pytest.fixture(scope="session")
def triton_server(tmp_path_factory, published_version) -> ServerInfo:
    """A real tritonserver serving `bamsgan` (tiny version 1) on free local ports, for the session."""
    from serving.launcher import TritonServer, free_ports

    repository = tmp_path_factory.mktemp("served") / "model_repository"
    shutil.copytree(published_version.version_dir.parent, repository / MODEL_NAME)
    grpc_port, http_port, metrics_port = free_ports(3)
    # Response cache off: these tests check what model.py computes, and a cached answer would hide
    # repeated requests from it (tests/test_server_ops.py tests the cache). Poll off: nothing changes.
    server = TritonServer(repository, grpc_port, http_port, metrics_port, log_path=repository.parent / "tritonserver.log",
                          cache_mib=0, poll_seconds=0)
    server.start(timeout=120)
    try:
        yield ServerInfo(
            server.grpc_url, server.http_url, server.metrics_url, repository, MODEL_NAME, published_version, server
        )
    finally:
        server.stop()


@pytest.fixture
def grpc_client(triton_server):
    """A tritonclient gRPC client connected to the session's server."""
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(triton_server.grpc_url) as client:
        yield client
