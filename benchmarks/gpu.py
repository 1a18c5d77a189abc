"""One GPU session: throughput of the shipped model, then robust models trained there.

    python benchmarks/gpu.py bundle                # here: what the GPU machine lacks
    python benchmarks/gpu.py run --out DIR [--budget-s 470]   # there: measure, train
    python benchmarks/gpu.py publish DIR/report.json [--training X] --write   # here

The GPU machines lent to this project have PyTorch but not kikuchipy or orix,
and no network. ``bundle`` writes ``.gpu/bundle.pt`` (git-ignored): kikuchipy's
dynamical Ni master pattern (symmetrised, as ebsdnet projects it), a kinematical
Ni master pattern from ``tests/data/ni.cif`` and one of each structure of
``benchmarks/family.py``'s ``TRAIN`` (kikuchipy's simulator; 401 px, float16),
the m-3m operators orix gives and the default detector's frame (kikuchipy's).
``run`` installs those in place of the loaders that need kikuchipy and orix,
then runs ebsdnet's own code:

1. **Throughput** of the shipped ``ni-60`` on the GPU: 65,536 simulated 60×60 Ni
   patterns (dose 100, made on the GPU), CNN alone (inference copy, bfloat16
   autocast, batches of 8,192) and CNN + refinement
   (:func:`ebsdnet.refine.refine_orientations`, no dictionary fallback).
   Patterns/s of one timed pass after a warm-up; mean disorientation from the
   truth. File reading and writing are not part of it (no kikuchipy there).
2. **Training** (``ebsdnet.train.train``, ``camera="realistic"``, from ``ni-60``,
   steps sized from timed trial runs to fit the budget): ``ni-60-camera`` with
   the kinematical Ni master pattern mixed in at 30%; then ``cubic-60`` with the
   family's kinematical master patterns at 85% beside the dynamical Ni. Cards and
   weights land in ``--out``.

The same training on a CPU: ``ebsdnet train -o runs/ni-60-camera --init-from
ni-60 --camera realistic --also tests/data/ni.cif --also-fraction 0.3 --lr 4e-4
--batch-size 1024 --steps N`` (and ``--also`` each family CIF for the family).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / ".gpu" / "bundle.pt"
KINEMATICAL = "ni-kinematical"  # the name training asks for the bundled kinematical file
FAMILY_HALF_SIZE = 200
SAFETY = 0.8  # of the measured step rate that a run is sized for
# The same training on this project's 2-core CPU VM (ebsdnet train --camera realistic,
# batch 128): 3.7 steps a second, measured 2026-12-04.
CPU_RATE = 3.7 * 128


def bundle() -> None:
    from ebsdnet.phases import master_pattern
    from ebsdnet.projector import DetectorGeometry, MasterPattern
    from ebsdnet.rotations import point_group_operators

    def fields(mp: MasterPattern) -> dict:
        return {
            "texture": mp.texture.contiguous(), "point_group": mp.point_group,
            "phase_name": mp.phase_name, "sha256": mp.sha256, "meta": dict(mp.meta),
        }  # fmt: skip

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import family
    from ebsdnet.phases import kinematical_master_pattern, read_cif

    members = []
    for name in family.TRAIN:  # 401 px a side, stored as float16: 0.6 MB each
        kp_mp = kinematical_master_pattern(
            read_cif(family.cif_path(name)), family.energy(name), half_size=FAMILY_HALF_SIZE
        )
        mp = MasterPattern.from_kikuchipy(kp_mp, symmetrise=False)
        # Every member is of Laue group m-3m; kinematical patterns obey Friedel's law.
        members.append({**fields(mp), "point_group": "m-3m", "phase_name": name})
        members[-1]["texture"] = members[-1]["texture"].half()
    BUNDLE.parent.mkdir(exist_ok=True)
    torch.save(
        {
            "family": members,
            "dynamical": fields(MasterPattern.nickel()),
            "kinematical": fields(master_pattern(str(ROOT / "tests" / "data" / "ni.cif"))),
            "operators": {"m-3m": point_group_operators("m-3m", torch.float64).numpy()},
            # The default tilts (sample 70°, camera 0°): the only detector used there.
            "detector_to_sample": DetectorGeometry().detector_to_sample(),
        },
        BUNDLE,
    )
    print(f"wrote {BUNDLE} ({BUNDLE.stat().st_size / 2**20:.1f} MB)")


def _install_bundle() -> None:
    """Serve master patterns and symmetry operators from the bundle."""
    import ebsdnet.rotations as rotations
    import ebsdnet.train as train_module
    from ebsdnet.projector import DetectorGeometry, MasterPattern

    data = torch.load(BUNDLE, weights_only=False)
    tilts = ("sample_tilt", "tilt", "azimuthal", "twist")
    default = tuple(getattr(DetectorGeometry(), t) for t in tilts)

    def detector_to_sample(geometry: DetectorGeometry):
        if tuple(getattr(geometry, t) for t in tilts) != default:
            raise ValueError("the bundle holds the default tilts' detector frame only")
        return data["detector_to_sample"]

    patterns = {key: MasterPattern(**data[key]) for key in ("dynamical", "kinematical")}
    operators = data["operators"]

    def operators_numpy(point_group: str):
        return operators[point_group]

    rotations._operators_numpy = operators_numpy
    DetectorGeometry.detector_to_sample = detector_to_sample
    MasterPattern.nickel = classmethod(lambda cls: patterns["dynamical"])
    for member in data["family"]:
        member = {**member, "texture": member["texture"].float()}
        patterns[f"family:{member['phase_name']}"] = MasterPattern(**member)
    train_module.master_pattern = lambda source: patterns[
        {KINEMATICAL: "kinematical", None: "dynamical"}.get(source, source)
    ]
    return [key for key in patterns if key.startswith("family:")]


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def throughput(device: torch.device, n: int = 65_536, batch: int = 8192) -> dict:
    from ebsdnet.cards import load_model
    from ebsdnet.models import for_inference, inference_autocast
    from ebsdnet.preprocess import PreprocessConfig
    from ebsdnet.projector import DetectorGeometry, MasterPattern, Projector
    from ebsdnet.refine import refine_orientations
    from ebsdnet.rotations import disorientation_deg
    from ebsdnet.stream import DegradationConfig, PatternStream

    model, card = load_model("ni-60", device=device)
    net = for_inference(model)
    geometry = DetectorGeometry(shape=tuple(card["shape"]), pc=tuple(card["pc_nominal"]))
    mp = MasterPattern.nickel()
    degradation = DegradationConfig(dose=(100.0, 100.0), pc_jitter=0.0)
    stream = PatternStream(
        mp, geometry, batch_size=n, degradation=degradation, seed=7, device=device
    )
    data = stream.batch(0)
    patterns, truth = data["patterns"], data["quaternions"]
    projector = Projector(mp, geometry).to(device)

    def cnn(p):
        with torch.no_grad(), inference_autocast(device):
            return model.to_quaternions(net(p)).float()

    def cnn_refine(p):
        q = cnn(p)
        return refine_orientations(p, q, projector, preprocessing=PreprocessConfig()).quaternions

    figures = {}
    for name, fn in (("cnn", cnn), ("cnn_refine", cnn_refine)):
        fn(patterns[:batch])  # warm-up
        _sync()
        t0 = time.perf_counter()
        out = torch.cat([fn(p) for p in patterns.split(batch)])
        _sync()
        seconds = time.perf_counter() - t0
        error = disorientation_deg(out.cpu(), truth.cpu(), "m-3m")
        figures[name] = {
            "patterns": n, "batch": batch, "seconds": round(seconds, 3),
            "patterns_per_s": round(n / seconds), "mean_deg": round(float(error.mean()), 4),
            "p90_deg": round(float(error.quantile(0.9)), 4),
        }  # fmt: skip
        print(name, figures[name], flush=True)
    return figures


def _config(folder: Path, steps: int, batch: int, device, also: tuple, fraction: float):
    from ebsdnet.train import TrainConfig

    return TrainConfig(
        out=str(folder), init_from="ni-60", steps=steps, batch_size=batch, lr=4e-4,
        warmup_steps=100, seed=31, val_size=2000 if steps > 100 else 64, val_every=10**9,
        checkpoint_minutes=2.0, camera="realistic", also_master_patterns=also,
        also_fraction=fraction, device=str(device),
    )  # fmt: skip


def step_seconds(device, batch: int, also: tuple, fraction: float) -> tuple[float, float]:
    """Seconds per training step (from runs of 5 and 305 steps) and a run's fixed cost.

    The first session sized its run from 5 and 35 steps: 5.3 ms a step, where the
    run then took 29.7 ms (16,174 steps in 480 s, H200, batch 1,024) and was cut
    off by the command's limit; a longer trial and a safety factor now.
    """
    from ebsdnet.train import train

    times = []
    for steps in (5, 305):
        t0 = time.perf_counter()
        train(_config(Path(f"/tmp/trial{steps}"), steps, batch, device, also, fraction),
              show_progressbar=False)  # fmt: skip
        _sync()
        times.append(time.perf_counter() - t0)
    per_step = max((times[1] - times[0]) / 300, 1e-3) / SAFETY
    return per_step, times[0] - 5 * per_step


def train_for(name, device, out: Path, seconds, per_step, overhead, batch, also, fraction):
    """Train ``name`` for about ``seconds``; its card and weights land in ``out``."""
    from ebsdnet.train import train

    steps = max(100, int((seconds - 3 * overhead) / per_step))
    print(f"{name}: {per_step * 1000:.1f} ms/step (batch {batch}); {steps} steps", flush=True)
    run = Path("/tmp") / name
    shutil.rmtree(run, ignore_errors=True)
    t0 = time.perf_counter()
    card_path = train(_config(run, steps, batch, device, also, fraction), show_progressbar=False)
    wall = time.perf_counter() - t0
    shutil.copy(run / "model.safetensors", out / f"{name}.safetensors")
    shutil.copy(run / "model.json", out / f"{name}.json")
    card = json.loads(card_path.read_text())
    summary = {
        "ms_per_step": round(per_step * 1000, 2), "steps": steps, "batch": batch,
        "wall_s": round(wall, 1), "validation": {k: round(v["mean"], 3)
                                                 for k, v in card["validation"].items()},
    }  # fmt: skip
    print(name, summary, flush=True)
    return summary


def run(args) -> None:
    t_start = time.perf_counter()
    family = _install_bundle()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
    }
    print(report, flush=True)

    def save() -> None:
        (out / "report.json").write_text(json.dumps(report, indent=2))

    if not args.skip_throughput:
        report["throughput"] = throughput(device, args.n, args.batch)
        save()
    batch = args.train_batch
    per_step, overhead = step_seconds(device, batch, (KINEMATICAL,), 0.3)
    left = args.budget_s - (time.perf_counter() - t_start)
    # The Ni model first (its must-shows are on real Ni), then the family with the rest.
    seconds = left * args.ni_share if family and args.family else left
    report["ni-60-camera"] = train_for(
        "ni-60-camera", device, out, seconds, per_step, overhead, batch, (KINEMATICAL,), 0.3
    )
    save()
    if family and args.family:
        left = args.budget_s - (time.perf_counter() - t_start)
        report["cubic-60"] = train_for(
            "cubic-60", device, out, left, per_step, overhead, batch, tuple(family), 0.85
        )
        save()


def publish_report(report_path: Path, training: Path | None, write: bool) -> None:
    """BENCHMARKS.md's ``gpu`` section from a ``run``'s ``report.json`` (and, for the
    training rate, a checkpoint summary ``{"step", "elapsed"}`` or a card)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _report import publish

    report = json.loads(report_path.read_text())
    t = report["throughput"]
    rows = [
        ("CNN alone (inference copy, bfloat16 autocast)", t["cnn"]),
        ("CNN + refinement (`refine_orientations`, no dictionary fallback)", t["cnn_refine"]),
    ]
    lines = [
        "## On one GPU: throughput of the shipped model, and training there",
        "",
        f"Measured by `python benchmarks/gpu.py run` on: {report['device']} (one GPU, 16 CPU "
        f"cores), torch {report['torch']}; published from its `report.json` with "
        "`python benchmarks/gpu.py publish REPORT --write`.",
        f"`ni-60` on {t['cnn']['patterns']:,} simulated 60×60 Ni patterns at dose 100 (made on "
        f"the GPU, conditioned), batches of {t['cnn']['batch']:,}, one timed pass after a "
        "warm-up, eager (no `torch.compile`). The patterns are already on the GPU: file "
        "reading, writing and start-up are not in these figures (the GPU machine has no "
        "kikuchipy), so they are the indexing core's rate, not a whole command's. "
        "*Mean* is dominated by the few CNN answers more than 5° off that refinement alone "
        "does not recover (`index` sends those to its dictionary fallback; see the held-out "
        "tail section).",
        "",
        "| path | patterns/s | mean | p90 |",
        "|---|---:|---:|---:|",
        *(
            f"| {name} | {r['patterns_per_s']:,} | {r['mean_deg']:.3f}° | {r['p90_deg']:.3f}° |"
            for name, r in rows
        ),
    ]
    if training is not None:
        info = json.loads(training.read_text())
        steps, seconds = info.get("step", info.get("steps")), info.get("elapsed")
        if seconds is None:
            seconds = info["wall_time_s"]
        batch = 1024
        lines += [
            "",
            f"Training there (`ebsdnet-s`, width 32, 4 hypotheses, batches of {batch:,} "
            "simulated on the GPU through the `--camera realistic` stream, bfloat16 "
            f"autocast): {steps:,} steps in {seconds:.0f} s, "
            f"{1000 * seconds / steps:.1f} ms a step, {steps * batch / seconds:,.0f} "
            f"patterns/s: {steps * batch / seconds / CPU_RATE:.0f}× the two-core CPU's rate "
            f"on the same stream ({CPU_RATE:.0f} patterns/s, 3.7 steps of 128 a second).",
        ]
    publish("gpu", lines, write)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("bundle")
    p = sub.add_parser("run")
    p.add_argument("--out", required=True)
    p.add_argument("--budget-s", type=float, default=480.0)
    p.add_argument("--ni-share", type=float, default=0.55, help="of the training time")
    p.add_argument("--family", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--n", type=int, default=65_536)
    p.add_argument("--batch", type=int, default=8192)
    p.add_argument("--train-batch", type=int, default=1024)
    p.add_argument("--skip-throughput", action="store_true")
    p = sub.add_parser("publish")
    p.add_argument("report", type=Path)
    p.add_argument("--training", type=Path, help="checkpoint summary or card of the run")
    p.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    if args.command == "bundle":
        bundle()
    elif args.command == "publish":
        publish_report(args.report, args.training, args.write)
    else:
        run(args)


if __name__ == "__main__":
    main()
