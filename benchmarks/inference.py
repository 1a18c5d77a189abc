"""CNN inference variants on this machine: patterns/s and the answers' error.

    python benchmarks/inference.py [--model ni-60] [--n 4096] [--write]

The shipped model on the same conditioned, noise-free simulated patterns
(batches of 512), best of 5 runs after a warm-up: eager as trained; the
indexer's inference copy (batch norms folded, channels-last); that copy in
bfloat16 autocast; both through ``torch.compile``; on the CPU, as ``ebsdnet
index`` compiles it (static shapes, frozen weights) in bfloat16 and in int8
(torchao's PT2E quantization, calibrated on simulated patterns), the latter also with
the convolutions' GELUs in their sigmoid form (:func:`ebsdnet.models.sigmoid_gelu`); ONNX Runtime
on the CPU (rows skipped when ``onnxruntime`` and ``onnx`` are not installed: they are
not dependencies of ebsdnet). On CUDA, float16 autocast is measured too. The
mean disorientation from the truth shows which variants are still correct;
``ebsdnet index`` uses the fastest correct one (``precision="auto"``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _report import machine, publish
from ebsdnet.cards import load_model
from ebsdnet.indexing import int8_calibration
from ebsdnet.models import for_inference, quantized_int8, sigmoid_gelu
from ebsdnet.preprocess import PreprocessConfig, preprocess
from ebsdnet.projector import DetectorGeometry, MasterPattern, Projector
from ebsdnet.refine import _Kernel
from ebsdnet.rotations import disorientation_deg
from ebsdnet.stream import random_quaternions

BATCH = 512


def rate(fn, patterns: torch.Tensor, repeats: int = 5) -> tuple[float, torch.Tensor]:
    """Best patterns/s over ``repeats`` passes, and the answers ``(N, 4)``."""
    with torch.no_grad():
        fn(patterns[:BATCH])
        best = 0.0
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = torch.cat([fn(p) for p in patterns.split(BATCH)])
            best = max(best, len(patterns) / (time.perf_counter() - t0))
    return best, out


def onnx_runner(net: torch.nn.Module, example: torch.Tensor, folder: Path):
    """An ONNX Runtime session of ``net`` (raw outputs), or None without onnxruntime."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None

    class Raw(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            out = self.inner(x)
            return out["sixd"], out["logits"]

    path = folder / "model.onnx"
    torch.onnx.export(
        Raw(net), (example,), str(path), input_names=["x"], output_names=["sixd", "logits"],
        dynamic_axes={"x": {0: "batch"}}, dynamo=False,
    )  # fmt: skip
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> torch.Tensor:
        sixd, logits = session.run(None, {"x": x.numpy()})
        output = {"sixd": torch.from_numpy(sixd), "logits": torch.from_numpy(logits)}
        return net.to_quaternions(output)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ni-60")
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    dev = torch.device(args.device)
    net, card = load_model(args.model, device=dev)
    net.eval()
    geometry = DetectorGeometry(shape=tuple(card["shape"]), pc=tuple(card["pc_nominal"]))
    truth = random_quaternions(args.n, torch.Generator().manual_seed(11))
    with torch.no_grad():
        clean = Projector(MasterPattern.nickel(), geometry)(truth)
    patterns = preprocess(clean, PreprocessConfig(**card["preprocessing"])).to(dev)
    fast = for_inference(net)

    def quaternions(model, dtype=None, head=None):
        def fn(x):
            with torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                output = {k: v.float() for k, v in model(x).items()}
            q = (head or model).to_quaternions(output)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            return q.cpu()

        return fn

    variants = [
        ("eager, as trained", quaternions(net)),
        ("inference copy (BN folded, channels-last)", quaternions(fast)),
        ("inference copy, bfloat16 autocast", quaternions(fast, torch.bfloat16)),
    ]
    if dev.type == "cuda":
        variants.append(("inference copy, float16 autocast", quaternions(fast, torch.float16)))
    compiled = torch.compile(fast)
    variants += [
        ("inference copy, `torch.compile`", quaternions(compiled)),
        (
            "inference copy, `torch.compile`, bfloat16 autocast",
            quaternions(compiled, torch.bfloat16),
        ),
    ]
    if dev.type == "cpu":  # what `ebsdnet index` compiles: static shapes, weights frozen
        frozen = _Kernel(fast, dynamic=False, freezing=True)
        variants.append(
            (
                "inference copy, `torch.compile` with frozen weights, bfloat16 autocast",
                quaternions(lambda x: frozen(x, compiled=True), torch.bfloat16, fast),
            )
        )
        calibration = int8_calibration(
            MasterPattern.nickel(), geometry, PreprocessConfig(**card["preprocessing"])
        )
        int8 = _Kernel(quantized_int8(fast, calibration, BATCH), dynamic=False, freezing=True)
        variants.append(
            (
                "int8 (torchao PT2E), `torch.compile` with frozen weights, bfloat16 autocast",
                quaternions(lambda x: int8(x, compiled=True), torch.bfloat16, fast),
            )
        )
        sigmoid = quantized_int8(sigmoid_gelu(fast), calibration, BATCH)
        int8_sigmoid = _Kernel(sigmoid, dynamic=False, freezing=True)
        variants.append(
            (
                "int8, GELUs in sigmoid form (as `ebsdnet index` runs it), compiled, frozen, "
                "bfloat16 autocast",
                quaternions(lambda x: int8_sigmoid(x, compiled=True), torch.bfloat16, fast),
            )
        )
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        if dev.type == "cpu":
            runner = onnx_runner(fast, patterns[:BATCH], Path(folder))
            if runner is not None:
                variants.append(("ONNX Runtime (CPU), float32", runner))
        for name, fn in variants:
            t0 = time.perf_counter()
            with torch.no_grad():
                fn(patterns[:BATCH])  # first call: compiles where it compiles
            first = time.perf_counter() - t0
            speed, q = rate(fn, patterns)
            err = disorientation_deg(q, truth, card["point_group"])
            rows.append((name, speed, float(err.mean()), float(np.percentile(err, 90)), first))
            print(f"{name}: {speed:,.0f}/s, {float(err.mean()):.3f}°", flush=True)
    base = rows[0][1]
    lines = [
        "## CNN inference variants",
        "",
        f"Measured by `python benchmarks/inference.py --write` on: {machine()}; device "
        f"`{dev.type}`. Model `{args.model}`, {args.n:,} conditioned noise-free simulated "
        f"patterns in batches of {BATCH}, best of 5 after a warm-up (first call timed apart: "
        "compiling, exporting). Error: mean disorientation from the truth.",
        "",
        "| variant | patterns/s | × eager | mean error | p90 | first call |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, speed, mean, p90, first in rows:
        lines.append(
            f"| {name} | {speed:,.0f} | {speed / base:.2f} | {mean:.3f}° | {p90:.3f}° "
            f"| {first:.1f} s |"
        )
    publish("inference", lines, args.write)


if __name__ == "__main__":
    main()
