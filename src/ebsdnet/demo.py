"""``ebsdnet demo``: the 2016 study (Liu et al.) reproduced on this machine.

The study compared 1-nearest-neighbour dictionary indexing with a CNN on
simulated 60×60 Ni patterns. Here both run on the same fresh test patterns:
the dictionary is simulated from kikuchipy's shipped Ni master pattern (the
2016 size, 333,227 patterns at 1.36°, with ``--full``; 3° by default so that
the demo takes minutes), and the CNN is the shipped ``ni-60`` model. It
prints the study's table as measured here and writes PNG figures: the
projector beside kikuchipy's, the training stream at falling dose, the
first-layer filters, activation maps, IPF maps of a simulated polycrystal
(truth / 1-NN / CNN) and error histograms. Last, it indexes the nine real
Ni patterns shipped with kikuchipy against their stored reference orientations.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from ebsdnet.baselines import build_dictionary
from ebsdnet.cards import load_model, training_seconds
from ebsdnet.metrics import error_summary, normalised_cross_correlation
from ebsdnet.models import predict_quaternions
from ebsdnet.plots import ipf_rgb, pattern_grid, pyplot
from ebsdnet.preprocess import PreprocessConfig, preprocess
from ebsdnet.projector import DetectorGeometry, MasterPattern, Projector
from ebsdnet.rotations import (
    disorientation_deg,
    point_group_operators,
    quaternion_to_euler,
    reduce_to_fundamental_zone,
)
from ebsdnet.stream import (
    NOISE_FREE,
    DegradationConfig,
    PatternStream,
    degrade,
    random_quaternions,
)

__all__ = ["run_demo"]

log = logging.getLogger(__name__)


def _projector_check(mp: MasterPattern, geometry: DetectorGeometry, out: Path) -> str:
    """Agreement with kikuchipy and speed of both, on 500 random orientations."""
    from orix.quaternion import Rotation

    n = 500
    q = random_quaternions(n, torch.Generator().manual_seed(0))
    projector = Projector(mp, geometry)
    mp_kp = mp.to_kikuchipy()  # the same texture, read by kikuchipy
    det = geometry.to_kikuchipy()
    rot = Rotation(q.double().numpy())
    mp_kp.get_patterns(rot[:8], det, compute=True, show_progressbar=False)  # numba warm-up
    with torch.no_grad():
        projector(q[:8])
        t0 = time.perf_counter()
        ours = projector(q)
        t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = mp_kp.get_patterns(rot, det, compute=True, show_progressbar=False).data
    t_kp = time.perf_counter() - t0
    ncc = normalised_cross_correlation(ours, torch.from_numpy(ref))
    pattern_grid(
        [ref[:6], ours[:6].numpy()],
        out / "projector_vs_kikuchipy.png",
        row_labels=["kikuchipy", "ebsdnet"],
        title="Same orientations, two projectors",
    )
    return (
        f"Projector: lowest NCC with kikuchipy's get_patterns {float(ncc.min()):.6f} on {n} "
        f"orientations; {n / t_ours:,.0f} patterns/s (torch) vs {n / t_kp:,.0f} (kikuchipy)"
    )


def _stream_figure(mp: MasterPattern, geometry: DetectorGeometry, out: Path) -> None:
    q = random_quaternions(6, torch.Generator().manual_seed(1))
    with torch.no_grad():
        clean = Projector(mp, geometry)(q)
    rows, labels = [preprocess(clean).numpy()], ["noise-free"]
    for dose in (1000.0, 100.0, 10.0):
        cfg = DegradationConfig(dose=(dose, dose), pc_jitter=0.0)
        rows.append(preprocess(degrade(clean, cfg, torch.Generator().manual_seed(2))).numpy())
        labels.append(f"dose {dose:g}")
    pattern_grid(
        rows,
        out / "stream_doses.png",
        row_labels=labels,
        title="Training stream: one orientation per column, falling dose",
    )


def _euler_mae_deg(q_pred: torch.Tensor, q_true: torch.Tensor, point_group: str) -> list[float]:
    """Per-angle Euler MAE (degrees) of fundamental-zone representatives (the 2016 metric)."""
    ops = point_group_operators(point_group, dtype=q_pred.dtype)
    e_pred = quaternion_to_euler(reduce_to_fundamental_zone(q_pred, ops))
    e_true = quaternion_to_euler(reduce_to_fundamental_zone(q_true, ops))
    delta = torch.atan2(torch.sin(e_pred - e_true), torch.cos(e_pred - e_true)).abs()
    return [float(v) for v in torch.rad2deg(delta).mean(0)]


def _filters_and_activations(model, pattern: torch.Tensor, out: Path) -> None:
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    w = first.weight.detach()[:, 0].numpy()  # (C, k, k)
    pattern_grid(
        [w[i : i + 8] for i in range(0, len(w), 8)],
        out / "first_layer_filters.png",
        title=f"{len(w)} first-layer filters ({w.shape[1]}×{w.shape[2]})",
    )
    rows, labels = [], []
    x = pattern[None, None]
    with torch.no_grad():
        for i, layer in enumerate(model.features):
            x = layer(x)
            if i % 2 == 1:
                rows.append(x[0, :8].numpy())
                labels.append(f"block {i} ({x.shape[-2]}×{x.shape[-1]})")
    pattern_grid(
        [pattern[None].numpy(), *rows],
        out / "activations.png",
        row_labels=["input", *labels],
        title="Activation maps of one pattern",
    )


def _map_figures(rgb: dict[str, np.ndarray], errors: dict[str, np.ndarray], out: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(rgb), figsize=(4 * len(rgb), 4.3))
    for ax, (name, image) in zip(axes, rgb.items(), strict=True):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(name, fontsize=10)
        ax.axis("off")
    fig.suptitle("IPF-Z of a simulated Ni polycrystal (noise-free)", fontsize=11)
    fig.tight_layout()
    fig.savefig(out / "ipf_truth_1nn_cnn.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.logspace(-2, 2, 60)
    for name, err in errors.items():
        ax.hist(np.clip(err, 1e-2, 100), bins=bins, histtype="step", lw=1.5, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("disorientation to truth (°)")
    ax.set_ylabel("test patterns")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "error_histograms.png", dpi=110)
    plt.close(fig)


def _real_patterns(model, card: dict, dictionary, mp: MasterPattern) -> list[str]:
    """The nine real Ni patterns shipped in kikuchipy, against their stored orientations."""
    import kikuchipy as kp

    from ebsdnet.indexing import MIN_NCC, index

    s = kp.data.nickel_ebsd_small()
    truth = torch.tensor(s.xmap.rotations.data)
    cnn = index(s, model=model, master_pattern=mp, refine=False, show_progressbar=False)
    full = index(s, model=model, master_pattern=mp, show_progressbar=False)
    raw = torch.from_numpy(s.data.reshape(-1, 60, 60))
    bg = torch.from_numpy(np.asarray(s.static_background, dtype=np.float32))
    patterns = preprocess(raw, PreprocessConfig(**card["preprocessing"]), static_background=bg)
    q_nn, _ = dictionary.match(patterns)
    lines = [
        "Nine real Ni patterns (kikuchipy.data.nickel_ebsd_small) vs their reference "
        "orientations:",
    ]
    for name, q, ncc in (
        (f"1-NN ({dictionary.resolution_deg}° dictionary)", q_nn.double(), None),
        (f"CNN alone ({Path(str(model)).name})", torch.tensor(cnn.rotations.data), cnn),
        ("CNN + refinement (+ dictionary fallback)", torch.tensor(full.rotations.data), full),
    ):
        err = disorientation_deg(q, truth, card["point_group"])
        line = f"  {name}: mean {float(err.mean()):.2f}°, max {float(err.max()):.2f}°"
        if ncc is not None:
            indexed = ncc.phase_id >= 0
            line += f"; {int(indexed.sum())} of {len(err)} indexed (NCC ≥ {MIN_NCC})"
            if indexed.any():
                scores = ncc.prop["ncc"][indexed]
                line += f", NCC {float(scores.min()):.2f}–{float(scores.max()):.2f}"
        lines.append(line)
    return lines


def run_demo(out: Path, quick: bool = True, model: str = "ni-60") -> None:
    """Print the 2016 table as measured here and write the figures to ``out``."""
    from ebsdnet.synthetic import polycrystal_orientations

    out.mkdir(parents=True, exist_ok=True)
    mp = MasterPattern.nickel()
    net, card = load_model(model)
    geometry = DetectorGeometry(shape=tuple(card["shape"]), pc=tuple(card["pc_nominal"]))
    config = PreprocessConfig(**card["preprocessing"])
    print(_projector_check(mp, geometry, out))
    _stream_figure(mp, geometry, out)

    resolution, n_test = (3.0, 2000) if quick else (1.36, 30_000)
    t0 = time.perf_counter()
    dictionary = build_dictionary(resolution, mp, geometry, config)
    t_dict = time.perf_counter() - t0
    test = PatternStream(
        mp,
        geometry,
        batch_size=n_test,
        degradation=NOISE_FREE,
        preprocessing=config,
        seed=3_000_000,
    ).batch(0)
    patterns, truth = test["patterns"], test["quaternions"]

    t0 = time.perf_counter()
    q_nn, _ = dictionary.match(patterns)
    t_nn = time.perf_counter() - t0
    predict_quaternions(net, patterns[:64])  # warm-up
    t0 = time.perf_counter()
    q_cnn = predict_quaternions(net, patterns)
    t_cnn = time.perf_counter() - t0

    pg = card["point_group"]
    rows = {}
    cnn_name = f"CNN ({Path(str(model)).name})"
    for name, q, seconds in (("1-NN dictionary", q_nn, t_nn), (cnn_name, q_cnn, t_cnn)):
        err = disorientation_deg(q.double(), truth.double(), pg)
        rows[name] = (
            error_summary(err),
            _euler_mae_deg(q.double(), truth.double(), pg),
            seconds,
            err.numpy(),
        )
    train_h = training_seconds(card) / 3600
    print(
        f"\nThe 2016 table, measured here on {n_test:,} noise-free simulated 60×60 Ni patterns\n"
        f"(dictionary: {len(dictionary):,} patterns at {resolution}°, built in {t_dict:.0f} s; "
        f"2016: 333,227 at ≈1.4°, 30,000 test patterns)\n"
    )
    print(
        "| method | Euler MAE φ1/Φ/φ2 (°) | mean / median disorientation (°) | > 3° | "
        "test run time | patterns/s |"
    )
    print("|---|---|---|---:|---:|---:|")
    for name, (summary, mae, seconds, _) in rows.items():
        print(
            f"| {name} | {mae[0]:.2f} / {mae[1]:.2f} / {mae[2]:.2f} | "
            f"{summary['mean']:.2f} / {summary['median']:.2f} | "
            f"{100 * summary['share_above_3']:.1f}% | {seconds:.1f} s | {n_test / seconds:,.0f} |"
        )
    print(
        f"\nCNN training: {train_h:.1f} h on {card.get('machine', '?')} "
        "(2016: 7 days on 4 TITAN X).\n2016 figures: 1-NN 1.299 vs DNN 0.072 (units unclear), "
        "375 s vs 50 s on 30,000 patterns."
    )

    _filters_and_activations(net, patterns[0], out)
    shape = (40, 40) if quick else (100, 100)
    q_map, _ = polycrystal_orientations(shape, n_grains=12, seed=4, gradient_deg=2.0)
    with torch.no_grad():
        map_patterns = preprocess(Projector(mp, geometry)(q_map), config)
    rgb = {
        "truth": ipf_rgb(q_map, pg, shape),
        "1-NN": ipf_rgb(dictionary.match(map_patterns)[0], pg, shape),
        "CNN": ipf_rgb(predict_quaternions(net, map_patterns), pg, shape),
    }
    _map_figures(rgb, {name: row[3] for name, row in rows.items()}, out)
    print()
    for line in _real_patterns(model, card, dictionary, mp):
        print(line)
    print(f"\nFigures in {out}/: " + ", ".join(sorted(p.name for p in out.glob("*.png"))))
