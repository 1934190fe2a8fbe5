"""Generator -> ONNX: fold the training-time machinery into plain weights, export latent -> uint8 image.

Graph: `latent` FP32 [B, 128] -> generator -> tanh -> training.data.images.to_uint8_nhwc -> `image` UINT8
[B, 64, 64, 3], B dynamic. Before export the generator is folded:
- spectral norm: `remove_parametrizations(leave_parametrized=True)` in eval mode stores W / sigma
  (sigma from the saved power-iteration vectors, exactly what eval-mode forward uses);
- BatchNorm (eval: running statistics) into the preceding ConvTranspose2d. Its weight is
  [in, out, kh, kw], so the per-output-channel BN scale multiplies dim 1;
- attention switched to "reference" (bmm + softmax: plain MatMul/Softmax ops every runtime has).

Exporter: torch.onnx.export(dynamo=True) at opset 18. Both paths were tried on this generator
(torch 2.13): both give the same images, but the dynamo graph is 41 nodes with a symbolic `batch`
dimension and constant-folded reshapes, while the TorchScript path (dynamo=False, opset 17) gives
138 nodes (43 Constant plus Shape/Gather/Unsqueeze/Concat chains for every reshape). The small graph
is easier to read in Netron, to pick attention/tail nodes out of for FP16 and TensorRT precision
constraints, and needs no simplifier. Opset 18 is what the ONNX Runtime and TensorRT 10 parsers of
current Triton containers all read. The price: the dynamo path takes 2-6 s per export on 2 CPU cores
(torch.export tracing) against 0.1 s for TorchScript, which a one-off export can afford; and the
TorchScript exporter is deprecated.

Do not deep-copy a spectral-normed module before folding it: the copy shares the parametrized
class object, and removing the parametrization from one removes the `weight` property of both.
Load a fresh generator from the checkpoint instead (`training.checkpoint.generator_from_checkpoint`).
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import onnx
import torch
from onnx import helper, shape_inference
from torch import nn
from torch.nn.utils import parametrize

from training.networks.attention import set_attention_impl
from training.constants import IMAGE_CHANNELS, IMAGE_SIZE
from training.data.images import to_uint8_nhwc
from training.networks.sagan import Generator

OPSET = 18
INPUT_NAME = "latent"
OUTPUT_NAME = "image"
FLOAT_OUTPUT_NAME = "image_float"  # parity-only extra output: the tanh output, float [B, 3, 64, 64]
EXPORTER = f"torch.onnx.export(dynamo=True, opset_version={OPSET})"


@torch.no_grad()
def fold_generator(generator: Generator) -> Generator:
    """Fold spectral norm and BatchNorm into plain weights, in place; returns the eval-mode generator.

    The result computes the same function as the eval-mode generator with plain Conv/ConvTranspose.
    """
    generator.eval()
    for module in list(generator.modules()):
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    for block in generator.modules():
        if not isinstance(block, nn.Sequential):
            continue
        for index in range(len(block) - 1):
            conv, norm = block[index], block[index + 1]
            if isinstance(conv, nn.ConvTranspose2d) and isinstance(norm, nn.BatchNorm2d):
                if conv.groups != 1:
                    raise ValueError("BatchNorm folding supports ConvTranspose2d with groups=1 only")
                scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)  # per output channel
                conv.weight.mul_(scale.view(1, -1, 1, 1))  # ConvTranspose2d weight: [in, out, kh, kw]
                bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
                conv.bias = nn.Parameter((bias - norm.running_mean) * scale + norm.bias)
                block[index + 1] = nn.Identity()
    remaining = [type(m).__name__ for m in generator.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if remaining:
        raise ValueError(f"BatchNorm layers not preceded by a ConvTranspose2d cannot be folded: {remaining}")
    return set_attention_impl(generator, "reference")


class LatentToImage(nn.Module):
    """The served function: latent FP32 [B, z_dim] -> image UINT8 [B, 64, 64, 3]."""

    def __init__(self, generator: Generator):
        super().__init__()
        self.generator = generator

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return to_uint8_nhwc(self.generator(latent))


def export_onnx(generator: Generator, path: str | os.PathLike) -> onnx.ModelProto:
    """Export a folded generator to `path` (dynamic batch); returns the checked model."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = LatentToImage(generator).eval()
    example = torch.zeros(2, generator.z_dim)  # batch 2, not 1: a size-1 example dim gets specialised
    batch = torch.export.Dim("batch", min=1)
    # The exporter warns about optional torchvision ops it cannot register; irrelevant here.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapper,
            (example,),
            dynamo=True,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes={"latent": {0: batch}},
            verbose=False,
        )
    program.save(str(path))
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    check_io(model, generator.z_dim)
    return model


def check_io(model: onnx.ModelProto, z_dim: int) -> None:
    """The contract's interface: latent FP32 [B, z_dim] -> image UINT8 [B, 64, 64, 3]."""

    def signature(value: onnx.ValueInfoProto) -> tuple:
        tensor = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else "B" for d in tensor.shape.dim)
        return value.name, tensor.elem_type, dims

    expected_in = [(INPUT_NAME, onnx.TensorProto.FLOAT, ("B", z_dim))]
    expected_out = [(OUTPUT_NAME, onnx.TensorProto.UINT8, ("B", IMAGE_SIZE, IMAGE_SIZE, IMAGE_CHANNELS))]
    got_in, got_out = [signature(v) for v in model.graph.input], [signature(v) for v in model.graph.output]
    if got_in != expected_in or got_out != expected_out:
        raise ValueError(f"exported interface {got_in} -> {got_out} is not {expected_in} -> {expected_out}")


def _tanh_node(model: onnx.ModelProto) -> onnx.NodeProto:
    tanh = [node for node in model.graph.node if node.op_type == "Tanh"]
    if len(tanh) != 1:
        raise ValueError(f"expected one Tanh node (the generator's output), found {len(tanh)}")
    return tanh[0]


def with_float_output(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` that also outputs the generator's float image (the Tanh output) as
    `image_float`, so parity can measure float differences on the very graph that is published."""
    inferred = shape_inference.infer_shapes(model)
    tanh_out = _tanh_node(model).output[0]
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    identity = helper.make_node("Identity", [tanh_out], [FLOAT_OUTPUT_NAME], name="parity_float_output")
    augmented.graph.node.append(identity)
    shape = ["batch", IMAGE_CHANNELS, IMAGE_SIZE, IMAGE_SIZE]
    elem_type = types.get(tanh_out, onnx.TensorProto.FLOAT)
    augmented.graph.output.append(helper.make_tensor_value_info(FLOAT_OUTPUT_NAME, elem_type, shape))
    return augmented


def tail_node_names(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes from Tanh to the uint8 output: to_uint8_nhwc and the tanh itself.

    Kept in fp32 in the FP16 variants: x * 127.5 + 127.5 near 255 has a half-precision spacing of
    0.125, enough to move pixels across a rounding boundary.
    """
    tanh = _tanh_node(model)
    names, frontier = [tanh.name], set(tanh.output)
    for node in model.graph.node:  # ONNX nodes are topologically sorted
        if frontier.intersection(node.input):
            names.append(node.name)
            frontier.update(node.output)
    return names


FP16_BLOCKED_OPS = ("MatMul", "Softmax")  # attention logits and softmax stay fp32, as in training


def convert_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """FP16 weights and activations, same interface (FP32 latent in, UINT8 image out).

    Attention MatMul/Softmax and the tanh -> uint8 tail stay in fp32 (Cast nodes around them).
    """
    from onnxconverter_common import float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "the model contains values that will be truncated" etc.
        converted = float16.convert_float_to_float16(
            model,
            keep_io_types=True,
            op_block_list=list(float16.DEFAULT_OP_BLOCK_LIST) + list(FP16_BLOCKED_OPS),
            node_block_list=tail_node_names(model),
        )
    onnx.checker.check_model(converted, full_check=True)
    return converted
