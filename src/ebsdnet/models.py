"""Network definitions and a small registry: ``create_model(name, **kwargs)``.

Every model maps preprocessed patterns ``(B, H, W)`` to a raw output and has
``to_quaternions(output) -> (B, 4)``; the loss that trains it is named by its
``loss`` attribute (see :mod:`ebsdnet.losses`).

- ``liu2016``: the 2016 study's network, one CNN per Bunge angle (4 conv layers
  of 9×9 kernels with 32/32/64/64 filters, ReLU, max-pooling, a 256-unit
  fully connected layer). Kept to show why Euler regression breaks on
  crystal symmetry.
- ``ebsdnet-s``: the default. A strided CNN with batch norm whose head gives
  ``K`` rotation hypotheses in the continuous 6D representation and ``K``
  logits saying which one to trust. Near the fundamental zone's boundary the
  right answer jumps between symmetry-equivalent representatives; one smooth
  output cannot jump, ``K`` outputs can each own one side.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from itertools import pairwise

import torch
from torch import Tensor, nn

from ebsdnet.rotations import euler_to_quaternion, matrix_to_quaternion, sixd_to_matrix

__all__ = [
    "MODELS",
    "EbsdnetS",
    "Liu2016",
    "create_model",
    "for_inference",
    "inference_autocast",
    "predict_quaternions",
    "quantized_int8",
    "resolve_precision",
    "sigmoid_gelu",
]

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    def wrap(cls):
        MODELS[name] = cls
        cls.registry_name = name
        return cls

    return wrap


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model by name.

    Examples
    --------
    >>> model = create_model("ebsdnet-s", shape=(60, 60), width=8, hypotheses=2)
    >>> model(torch.zeros(3, 60, 60))["sixd"].shape
    torch.Size([3, 2, 6])
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(sorted(MODELS))}")
    return MODELS[name](**kwargs)


def for_inference(model: nn.Module) -> nn.Module:
    """A copy of ``model`` for inference: batch norms folded into the convolutions before
    them, weights in channels-last memory (measured 1.4× faster on these CPUs, same output
    to 1e-5).
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = copy.deepcopy(model).eval()
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        for i, (first, second) in enumerate(pairwise(list(module))):
            if isinstance(first, nn.Conv2d) and isinstance(second, nn.BatchNorm2d):
                module[i] = fuse_conv_bn_eval(first, second)
                module[i + 1] = nn.Identity()
    return model.to(memory_format=torch.channels_last)


#: ``a`` of the sigmoid form of GELU, ``x·σ(a·x)`` (Hendrycks & Gimpel, 2016).
SIGMOID_GELU_SCALE = 1.702


def sigmoid_gelu(model: nn.Module, scale: float = SIGMOID_GELU_SCALE) -> nn.Module:
    """A copy of an inference copy (:func:`for_inference`) of an ``ebsdnet-s`` whose
    convolutions' GELUs are replaced by their sigmoid form ``x·σ(1.702·x)``, written as
    SiLUs: each convolution's weights and bias are scaled by ``a`` (then SiLU gives
    ``a`` times the sigmoid GELU) and the layer after it divides its weights by ``a``.

    Why: compiled to oneDNN's int8 kernels, a SiLU runs inside the convolution
    (inductor fuses convolution + SiLU + quantize, not GELU), where a GELU is a separate
    pass over every activation. Measured on ni-60, 2-core EPYC, 1,600-pattern maps:
    the CNN alone 6–10% faster in int8; mean error noise-free 0.646° → 0.634°, dose 100
    0.762° → 0.744°, dose 15 6.74° → 6.92° (float32: 0.595° → 0.590°). Models without
    GELUs after their convolutions come back as a plain copy.
    """
    model = copy.deepcopy(model)
    features = getattr(model, "features", None)
    head = getattr(model, "head", None)
    if not isinstance(features, nn.Sequential) or not isinstance(head, nn.Sequential):
        return model
    blocks = list(features)
    if not all(
        isinstance(b, nn.Sequential) and isinstance(b[0], nn.Conv2d) and isinstance(b[-1], nn.GELU)
        and b[0].bias is not None and all(isinstance(m, nn.Identity) for m in list(b)[1:-1])
        for b in blocks
    ) or not isinstance(head[1], nn.Linear):  # fmt: skip
        return model  # not a for_inference copy of ebsdnet-s: leave it exact
    consumers = [b[0] for b in blocks[1:]] + [head[1]]  # each block feeds the next layer
    with torch.no_grad():
        for block, consumer in zip(blocks, consumers, strict=True):
            block[0].weight.mul_(scale)
            block[0].bias.mul_(scale)
            block[-1] = nn.SiLU()
            consumer.weight.div_(scale)
    return model


PRECISIONS = ("auto", "float32", "bfloat16", "int8")


def _bfloat16_native(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _int8_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("torchao") is not None


def resolve_precision(
    device: torch.device | str, precision: str = "auto", compiled: bool = False
) -> str:
    """The arithmetic the CNN runs in: ``"int8"``, ``"bfloat16"`` or ``"float32"``.

    ``"auto"`` takes int8 on CPUs when the network is compiled (an int8 graph is
    fast only once compiled to oneDNN's int8 kernels; measured on ni-60, 2-core
    EPYC: 1.4× the compiled bfloat16 network, mean error 1.000° → 1.002°), else
    bfloat16 where the device computes it natively (CPUs with AVX512-BF16 or
    AMX, CUDA GPUs that support it), else float32.

    Raises
    ------
    ValueError
        For an unknown precision, or ``"int8"`` off the CPU or not compiled.
    """
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "int8" and (device.type != "cpu" or not compiled):
        raise ValueError("precision 'int8' runs only compiled, on the CPU")
    if precision != "auto":
        return precision
    if compiled and device.type == "cpu" and _int8_available():
        return "int8"
    return "bfloat16" if _bfloat16_native(device) else "float32"


def inference_autocast(device: torch.device | str, precision: str = "auto"):
    """The context the CNN runs in when indexing: bfloat16 autocast or plain float32.

    ``precision`` as in :func:`resolve_precision` (``"auto"`` here never means
    int8). An int8 network keeps some layers unquantized (the 6D head's last
    product, the activations between quantized layers); those run in bfloat16
    where it is native. Measured on ni-60, 2-core EPYC: bfloat16 2.1× the
    patterns/s of float32, mean error of the CNN alone 0.955° → 0.996°
    (noise-free); refinement starts from it and ends where it ends from float32.
    """
    device = torch.device(device)
    resolved = resolve_precision(device, precision, compiled=precision == "int8")
    bfloat16 = resolved == "bfloat16" or (resolved == "int8" and _bfloat16_native(device))
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bfloat16)


def quantized_int8(model: nn.Module, calibration: Tensor, batch_size: int) -> nn.Module:
    """``model`` with int8 weights and activations for x86 CPUs (torchao's PT2E flow).

    The graph is exported for batches of exactly ``batch_size`` patterns, and
    each activation's scale is observed on ``calibration`` (conditioned patterns,
    any number: they are fed in batches of ``batch_size``). Run it through
    ``torch.compile`` with weight freezing: that lowers it to oneDNN's int8
    convolutions; run eagerly it is slow.
    """
    torchao_log = logging.getLogger("torchao")
    pytree_log = logging.getLogger("torch.utils._pytree")
    levels = torchao_log.level, pytree_log.level
    # On import torchao reports CUDA extensions it cannot load and registers types
    # torch now handles itself; neither matters on a CPU.
    torchao_log.setLevel(logging.ERROR)
    pytree_log.setLevel(logging.ERROR)
    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq
    finally:
        torchao_log.setLevel(levels[0])
        pytree_log.setLevel(levels[1])
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
    # Whole batches: the last one completed from the start of ``calibration`` (repeated
    # patterns leave the observed ranges as they are).
    n_batches = -(-len(calibration) // batch_size)
    wrapped = calibration[torch.arange(n_batches * batch_size) % len(calibration)]
    batches = wrapped.split(batch_size)
    with torch.no_grad():
        graph = torch.export.export(model.eval(), (batches[0],)).module()
        prepared = prepare_pt2e(graph, quantizer)
        for batch in batches:
            prepared(batch)
        return convert_pt2e(prepared)


@torch.no_grad()
def predict_quaternions(
    model: nn.Module, patterns: Tensor, batch_size: int = 512, device: torch.device | None = None
) -> Tensor:
    """A model's quaternions ``(B, 4)`` for conditioned patterns ``(B, H, W)``, on the CPU."""
    device = device or next(model.parameters()).device
    return torch.cat(
        [model.to_quaternions(model(p.to(device))).cpu() for p in patterns.split(batch_size)]
    )


class _Liu2016Branch(nn.Sequential):
    """One network of the 2016 study: pattern → one angle."""

    def __init__(self, shape: tuple[int, int]) -> None:
        layers: list[nn.Module] = []
        channels = (1, 32, 32, 64, 64)
        h, w = shape
        for c_in, c_out in pairwise(channels):
            layers += [nn.Conv2d(c_in, c_out, 9, padding=4), nn.ReLU(), nn.MaxPool2d(2)]
            h, w = h // 2, w // 2
        layers += [nn.Flatten(), nn.Linear(64 * h * w, 256), nn.ReLU(), nn.Linear(256, 1)]
        super().__init__(*layers)


@register("liu2016")
class Liu2016(nn.Module):
    """The 2016 study's three networks (φ1, Φ, φ2), Euler angles in radians."""

    loss = "periodic_euler"

    def __init__(self, shape: tuple[int, int] = (60, 60)) -> None:
        super().__init__()
        self.config = {"shape": tuple(shape)}
        self.branches = nn.ModuleList(_Liu2016Branch(tuple(shape)) for _ in range(3))

    def forward(self, patterns: Tensor) -> dict[str, Tensor]:
        x = patterns[:, None]  # (B, 1, H, W)
        return {"euler": torch.cat([b(x) for b in self.branches], dim=-1)}  # (B, 3)

    def to_quaternions(self, output: dict[str, Tensor]) -> Tensor:
        return euler_to_quaternion(output["euler"])


def _conv(c_in: int, c_out: int, stride: int = 1, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.GELU(),
    )


@register("ebsdnet-s")
class EbsdnetS(nn.Module):
    """Strided CNN → ``K`` 6D rotation hypotheses + ``K`` selection logits.

    Parameters
    ----------
    shape
        Input pattern shape.
    width
        Channels of the first stage; later stages double it up to 8×.
    hypotheses
        Number ``K`` of rotation outputs.
    """

    loss = "symmetric_multi_hypothesis"

    def __init__(
        self, shape: tuple[int, int] = (60, 60), width: int = 32, hypotheses: int = 4
    ) -> None:
        super().__init__()
        self.config = {"shape": tuple(shape), "width": width, "hypotheses": hypotheses}
        w = width
        self.features = nn.Sequential(
            _conv(1, w, stride=2, kernel=5),  # 60 → 30
            _conv(w, w),
            _conv(w, 2 * w, stride=2),  # → 15
            _conv(2 * w, 2 * w),
            _conv(2 * w, 4 * w, stride=2),  # → 8
            _conv(4 * w, 4 * w),
            _conv(4 * w, 8 * w, stride=2),  # → 4
            _conv(8 * w, 8 * w),
        )
        with torch.no_grad():
            n_flat = self.features(torch.zeros(1, 1, *shape)).numel()
        self.hypotheses = hypotheses
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(n_flat, 512),
            nn.GELU(),
            nn.Linear(512, hypotheses * 7),
        )

    def forward(self, patterns: Tensor) -> dict[str, Tensor]:
        out = self.head(self.features(patterns[:, None]))  # (B, 7K)
        out = out.reshape(-1, self.hypotheses, 7)
        return {"sixd": out[..., :6], "logits": out[..., 6]}

    def to_quaternions(self, output: dict[str, Tensor]) -> Tensor:
        """The hypothesis with the highest logit, as a quaternion ``(B, 4)``."""
        best = output["logits"].argmax(-1)
        sixd = output["sixd"][torch.arange(len(best)), best]
        return matrix_to_quaternion(sixd_to_matrix(sixd))

    def all_quaternions(self, output: dict[str, Tensor]) -> Tensor:
        """Every hypothesis, ``(B, K, 4)``: candidates for refinement to choose from."""
        return matrix_to_quaternion(sixd_to_matrix(output["sixd"]))
