"""The CNN alone on patterns that are not its training data, and what ``--adapt`` adds.

    python benchmarks/cnn_real.py [--model ni-60 --model runs/x/model.json]
        [--size 30] [--adapt-minutes 3] [--write]

For each model, measured in one process on this machine:

* **kikuchipy's nine real Ni patterns** (60×60, reference orientations from
  kikuchipy): the CNN alone (``index(..., refine=False)``; mean, largest error,
  patterns flagged as not indexed), and the full ``index``, also with the
  dictionary fallback off to count the patterns that need it (refined NCC from
  the CNN's start below ``FALLBACK_NCC``).
* **a realistic-camera Ni map** (``--size``² points, kikuchipy's dynamical Ni
  master pattern through ``benchmarks/phases.py``'s camera: barrel distortion,
  PSF 0.8 px, vignetting, a background drifting across the map, gamma 0.9,
  Poisson noise at dose 200, hot pixels, the file's PC off by ≈0.004): the CNN
  alone and the full ``index``; then ``index(..., adapt=MINUTES)`` (the full map
  and the CNN alone of the adapted model on the same map), with its wall time.
* **simulated held-out sets** as ``ebsdnet evaluate MODEL --n 2000 --seed
  2000000`` makes them (``noise_free``, ``moderate``, ``detector_like``,
  ``camera_like``): the CNN alone.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from _report import machine, publish
from phases import Case, write_case

NI_CAMERA = Case(
    "nickel", "Ni, realistic camera", "FCC", (60, 60), (0.421, 0.217, 0.504),
    (0.003, -0.003, 0.002), gamma=0.9, blur_px=0.8, distortion=-0.03, seed=5150,
    dynamical=True,
)  # fmt: skip


def _errors(xmap, truth: torch.Tensor) -> np.ndarray:
    from ebsdnet.rotations import disorientation_deg

    q = torch.tensor(xmap.rotations.data).reshape(xmap.size, -1, 4)[:, 0].float()
    return disorientation_deg(q, truth.float(), "m-3m").numpy()


def _summary(errors: np.ndarray, xmap=None) -> dict:
    flagged = 0 if xmap is None else int((xmap.phase_id < 0).sum())
    return {
        "mean": float(errors.mean()), "median": float(np.median(errors)),
        "max": float(errors.max()), "above_5": float((errors > 5).mean()),
        "flagged": flagged,
    }  # fmt: skip


def real_nine(model: str) -> dict:
    import kikuchipy as kp

    from ebsdnet.indexing import FALLBACK_NCC, index

    signal = kp.data.nickel_ebsd_small()
    truth = torch.tensor(signal.xmap.rotations.data)
    cnn = index(signal, model=model, refine=False, show_progressbar=False)
    plain = index(signal, model=model, fallback_ncc=None, show_progressbar=False)
    full = index(signal, model=model, show_progressbar=False)
    return {
        "cnn": _summary(_errors(cnn, truth), cnn),
        "cnn_errors": [round(float(e), 2) for e in _errors(cnn, truth)],
        "full": _summary(_errors(full, truth), full),
        "need_fallback": int((plain.prop["ncc"] < FALLBACK_NCC).sum()),
    }


def camera_map(model: str, folder: Path, adapt_minutes: float) -> dict:
    import json

    import kikuchipy as kp

    from ebsdnet.indexing import FALLBACK_NCC, index

    signal = kp.load(folder / "patterns.h5")
    truth = torch.tensor(json.loads((folder / "truth.json").read_text())["quaternions"])
    cnn = index(signal, model=model, refine=False, show_progressbar=False)
    plain = index(signal, model=model, fallback_ncc=None, show_progressbar=False)
    t0 = time.perf_counter()
    full = index(signal, model=model, show_progressbar=False)
    seconds = time.perf_counter() - t0
    result = {
        "cnn": _summary(_errors(cnn, truth), cnn), "full": _summary(_errors(full, truth), full),
        "need_fallback": int((plain.prop["ncc"] < FALLBACK_NCC).sum()), "seconds": seconds,
    }  # fmt: skip
    if adapt_minutes > 0:
        saved = folder / f"adapted-{Path(model).stem}"
        t0 = time.perf_counter()
        adapted = index(signal, model=model, adapt=adapt_minutes, save_model=saved,
                        show_progressbar=False)  # fmt: skip
        result["adapt_seconds"] = time.perf_counter() - t0
        result["adapted"] = _summary(_errors(adapted, truth), adapted)
        cnn2 = index(signal, model=f"{saved}.json", refine=False, show_progressbar=False)
        result["adapted_cnn"] = _summary(_errors(cnn2, truth), cnn2)
    return result


def held_out(model: str) -> dict:
    from ebsdnet.cards import load_model, pc_jitter
    from ebsdnet.projector import DetectorGeometry, MasterPattern
    from ebsdnet.train import evaluate, held_out_sets

    net, card = load_model(model)
    geometry = DetectorGeometry(shape=tuple(card["shape"]), pc=tuple(card["pc_nominal"]))
    sets = held_out_sets(MasterPattern.nickel(), geometry, 2000, 2_000_000, pc_jitter(card))
    figures = evaluate(net, sets, card["point_group"], torch.device("cpu"),
                       tuple(card["pc_nominal"]))  # fmt: skip
    return {name: f["mean"] for name, f in figures.items()}


def _markdown(results: dict, args) -> list[str]:
    flags = "".join(f" --model {m}" for m in args.model)
    flags += "" if args.size == 30 else f" --size {args.size}"
    flags += "" if args.adapt_minutes == 3.0 else f" --adapt-minutes {args.adapt_minutes:g}"
    lines = [
        "## The CNN alone off its training data: real patterns, a camera, `--adapt`",
        "",
        f"Measured by `python benchmarks/cnn_real.py{flags} --write` on: {machine()}.",
        "Errors are disorientations from the truth (degrees). *CNN*: `index(..., "
        "refine=False)`; *flagged*: points whose CNN answer's NCC is below `min_ncc` "
        "(not indexed); *need fallback*: points whose refinement from the CNN's start "
        "ends below the fallback's NCC (0.2), where `index` refines coarse-dictionary "
        "candidates too. The realistic-camera map: "
        f"{args.size}×{args.size} points of kikuchipy's dynamical Ni master pattern through "
        "`benchmarks/phases.py`'s camera (barrel distortion, PSF 0.8 px, vignetting, a "
        "background drifting across the map, gamma 0.9, dose 200, hot pixels, the file's "
        "PC off by (0.003, −0.003, 0.002)). *Adapted*: `index(..., adapt="
        f"{args.adapt_minutes:g})` (`--adapt`), fine-tuned on that map's confidently "
        "indexed points, then the adapted model's CNN alone on the same map.",
        "",
        "### kikuchipy's nine real Ni patterns",
        "",
        "| model | CNN mean | CNN max | CNN flagged | CNN errors | full index | need fallback |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for model, r in results.items():
        n = r["real"]
        lines.append(
            f"| `{model}` | {n['cnn']['mean']:.2f}° | {n['cnn']['max']:.2f}° | "
            f"{n['cnn']['flagged']} of 9 | {', '.join(f'{e:.1f}' for e in n['cnn_errors'])} | "
            f"{n['full']['mean']:.3f}° | {n['need_fallback']} of 9 |"
        )
    lines += [
        "",
        f"### Realistic-camera Ni map ({args.size**2:,} patterns)",
        "",
        "| model | CNN mean | CNN > 5° | full index | need fallback | index s | adapted: full | "
        "adapted: CNN mean | adapted: CNN > 5° | with --adapt s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model, r in results.items():
        c = r["camera"]
        adapted = (
            f"{c['adapted']['mean']:.3f}° | {c['adapted_cnn']['mean']:.3f}° | "
            f"{100 * c['adapted_cnn']['above_5']:.1f}% | {c['adapt_seconds']:.0f}"
            if "adapted" in c
            else "– | – | – | –"
        )
        lines.append(
            f"| `{model}` | {c['cnn']['mean']:.3f}° | {100 * c['cnn']['above_5']:.1f}% | "
            f"{c['full']['mean']:.3f}° | {c['need_fallback']} | {c['seconds']:.0f} | {adapted} |"
        )
    names = list(next(iter(results.values()))["held_out"])
    lines += [
        "",
        "### Simulated held-out sets (2,000 patterns each, seed 2,000,000), CNN alone",
        "",
        "| model | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for model, r in results.items():
        lines.append(
            f"| `{model}` | " + " | ".join(f"{r['held_out'][k]:.3f}°" for k in names) + " |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help="model name or card (repeatable)")
    parser.add_argument("--size", type=int, default=30, help="camera map side (30)")
    parser.add_argument("--adapt-minutes", type=float, default=3.0)
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    args.model = args.model or ["ni-60"]
    warnings.filterwarnings("ignore")
    logging.getLogger("ebsdnet").setLevel(logging.ERROR)
    results = {}
    with tempfile.TemporaryDirectory(prefix="ebsdnet-cnn-real-") as tmp:
        folder = Path(tmp)
        write_case(NI_CAMERA, folder, args.size, 200.0)
        for model in args.model:
            t0 = time.perf_counter()
            results[model] = {
                "real": real_nine(model),
                "camera": camera_map(model, folder, args.adapt_minutes),
                "held_out": held_out(model),
            }
            print(f"{model}: {time.perf_counter() - t0:.0f} s", flush=True)
    publish("cnn-real", _markdown(results, args), args.write)


if __name__ == "__main__":
    main()
