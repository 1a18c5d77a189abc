"""The training loop: data → model → loss → step → validate → checkpoint.

One loop, read top to bottom. Distributed data parallel (``torchrun``) is a
few guarded lines around it, not a second path: each rank draws its own
stream batches (``k = step * world + rank``) and rank 0 validates and saves.

A run folder holds ``config.json`` (the resolved :class:`TrainConfig`),
``checkpoint.pt`` (model, optimiser, step; written every few minutes via a
temporary file) and, at the end, ``model.safetensors`` + ``model.json``.
``resume=True`` continues from the checkpoint with the same batches it would
have drawn.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch

from ebsdnet.cards import save_model
from ebsdnet.losses import compute_loss
from ebsdnet.metrics import error_summary
from ebsdnet.models import _bfloat16_native, create_model, predict_quaternions
from ebsdnet.phases import master_pattern
from ebsdnet.preprocess import PreprocessConfig, preprocess
from ebsdnet.projector import DetectorGeometry, MasterPattern, resample_to_pattern_centre
from ebsdnet.rotations import (
    disorientation_deg,
    euler_to_quaternion,
    point_group_operators,
    same_laue_group,
)
from ebsdnet.stream import NOISE_FREE, REALISTIC, DegradationConfig, PatternStream

__all__ = [
    "TrainConfig",
    "TrainingDataError",
    "dictionary_geometry",
    "evaluate",
    "held_out_conditions",
    "held_out_sets",
    "train",
]

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved as ``config.json`` beside it."""

    out: str = "runs/ni-60"
    model: str = "ebsdnet-s"
    model_args: dict = field(default_factory=dict)
    steps: int = 10_000
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 300
    seed: int = 0
    val_size: int = 500
    val_every: int = 500
    checkpoint_minutes: float = 5.0
    time_limit_minutes: float | None = None  # per invocation: stop resumably after this
    master_pattern: str | None = None
    shape: tuple[int, int] = (60, 60)
    pc: tuple[float, float, float] = (0.425, 0.213, 0.501)
    pc_jitter: float = 0.03
    dose: tuple[float, float] = (8.0, 3000.0)
    blur: tuple[float, float] = (0.0, 1.0)
    falloff: tuple[float, float] | None = None
    clean_fraction: float = 0.1
    # Train on patterns resampled from their jittered PC to the nominal one, as index
    # shows them to the network (models trained before this field existed saw them as
    # simulated).
    pc_known: bool = True
    # "simulated": the degradations above only; "realistic": stream.REALISTIC's camera
    # (PSF, gamma, lens distortion, background residual, PC error, …) at these doses.
    camera: str = "simulated"
    # More master patterns of the phase (files), mixed in at also_fraction of the patterns:
    # a kinematical one beside the dynamical one, so that the network learns bands, not
    # one simulator's band profiles.
    also_master_patterns: tuple[str, ...] = ()
    also_fraction: float = 0.5
    dictionary: str | None = None
    init_from: str | None = None
    device: str = "auto"
    # "auto": bfloat16 autocast where the device computes it natively (CUDA; CPUs with
    # AVX512-BF16 or AMX), else float32; or "bfloat16" / "float32". Runs saved before
    # this field existed trained in float32 on CPUs.
    precision: str = "auto"

    def check(self) -> None:
        """Raise ``ValueError`` naming the first setting no run can use.

        Examples
        --------
        >>> TrainConfig(dose=(0.0, 10.0)).check()
        Traceback (most recent call last):
        ...
        ValueError: dose must be 0 < MIN ≤ MAX counts/pixel, not (0.0, 10.0)
        """
        from ebsdnet.models import MODELS
        from ebsdnet.projector import unphysical_pattern_centres

        if self.model not in MODELS:
            known = ", ".join(sorted(MODELS))
            raise ValueError(f"unknown model {self.model!r}; choose from {known}")
        options = set(inspect.signature(MODELS[self.model]).parameters) - {"shape"}
        if set(self.model_args) - options:
            foreign = ", ".join(sorted(set(self.model_args) - options))
            raise ValueError(
                f"model {self.model} takes no {foreign} (its options: "
                f"{', '.join(sorted(options)) or 'none'})"
            )
        for name in ("steps", "batch_size", "val_size", "val_every"):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"{name.replace('_', '-')} must be at least 1, not {value}")
        if not self.lr > 0 or self.weight_decay < 0 or self.warmup_steps < 0:
            raise ValueError("lr must be positive, weight decay and warm-up steps not negative")
        if not self.checkpoint_minutes > 0 or (
            self.time_limit_minutes is not None and not self.time_limit_minutes > 0
        ):
            raise ValueError("checkpoint and time-limit minutes must be positive")
        if min(self.shape) < 16:
            raise ValueError(f"pattern shape {tuple(self.shape)} is too small (at least 16×16)")
        centres = [[p + s * self.pc_jitter for p in self.pc] for s in (-1, 0, 1)]
        if self.pc_jitter < 0 or unphysical_pattern_centres(np.array(centres)).any():
            raise ValueError(
                f"pattern centre {tuple(self.pc)} ± {self.pc_jitter:g} leaves the physical "
                "range 0 ≤ x, y ≤ 1, z > 0"
            )
        if self.dose is not None and not 0 < self.dose[0] <= self.dose[1]:
            raise ValueError(f"dose must be 0 < MIN ≤ MAX counts/pixel, not {tuple(self.dose)}")
        if not 0 <= self.blur[0] <= self.blur[1]:
            raise ValueError(f"blur must be 0 ≤ MIN ≤ MAX pixels, not {tuple(self.blur)}")
        if self.falloff is not None and not 0 < self.falloff[0] <= self.falloff[1]:
            raise ValueError(f"fall-off must be 0 < MIN ≤ MAX, not {tuple(self.falloff)}")
        if self.camera not in CAMERAS:
            raise ValueError(f"camera must be one of {', '.join(CAMERAS)}, not {self.camera!r}")
        if not 0 <= self.also_fraction <= 1:
            raise ValueError(f"also-fraction must lie in 0–1, not {self.also_fraction}")
        if not 0 <= self.clean_fraction <= 1:
            raise ValueError(f"clean fraction must lie in 0–1, not {self.clean_fraction}")
        if self.precision not in TRAINING_PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(TRAINING_PRECISIONS)}")
        pick_device(self.device)  # raises ValueError for a device there is not

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        d = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in known}
        return cls(**d)


TRAINING_PRECISIONS = ("auto", "bfloat16", "float32")
CAMERAS = ("simulated", "realistic")


def training_precision(device: torch.device, precision: str = "auto") -> str:
    """``"bfloat16"`` (autocast; weights, batch norms and the loss stay float32) or
    ``"float32"``. ``auto``: bfloat16 where the device computes it natively — measured
    on the 2-core EPYC, a step of ``ebsdnet-s`` (width 32, 128 patterns) 320 → 190 ms.

    Raises
    ------
    ValueError
        For another precision name.
    """
    if precision not in TRAINING_PRECISIONS:
        raise ValueError(
            f"precision must be one of {', '.join(TRAINING_PRECISIONS)}, not {precision!r}"
        )
    if precision == "auto":
        return "bfloat16" if _bfloat16_native(device) else "float32"
    return precision


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU.

    Raises
    ------
    ValueError
        For a name torch does not know, or CUDA where torch sees none.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:  # torch's own message lists every device type it knows
        raise ValueError(f"unknown device {name!r}: auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}, but torch sees no CUDA device")
    return device


class TrainingDataError(ValueError):
    """A dictionary file that cannot serve the run as configured."""


def dictionary_geometry(path: str) -> tuple[tuple[int, int], tuple[float, float, float]]:
    """The pattern shape and the PC an ``ebsdnet simulate`` dictionary was made with.

    Raises
    ------
    TrainingDataError
        For a file that is no such dictionary.
    """
    import h5py

    no_dictionary = TrainingDataError(f"{path} is no `ebsdnet simulate` dictionary")
    try:
        with h5py.File(path, "r") as f:
            if not {"patterns", "euler_deg"} <= set(f) or "pc_bruker" not in f.attrs:
                raise no_dictionary
            shape = tuple(int(n) for n in f["patterns"].shape[1:])
            pc = tuple(float(v) for v in f.attrs["pc_bruker"])
    except OSError:  # not HDF5
        raise no_dictionary from None
    return shape, pc


class DictionaryBatches:
    """Training batches drawn from a pattern–orientation dictionary file (the 2016 setup).

    The last ``holdout`` entries of a seeded permutation are kept out for testing.
    Every pattern of the dictionary has its one PC; batches carry it as ``pc``.

    Raises
    ------
    TrainingDataError
        For a dictionary of another master pattern, pattern shape or PC than the
        run's, or one too small for the held-out set and a batch.
    """

    def __init__(
        self, path: str, batch_size: int, seed: int, holdout: int, preprocessing,
        master_pattern: MasterPattern, geometry: DetectorGeometry,
    ) -> None:  # fmt: skip
        import h5py

        self.file = h5py.File(path, "r")
        self.patterns = self.file["patterns"]
        attrs = self.file.attrs
        if attrs.get("master_pattern_sha256") != master_pattern.sha256:
            raise TrainingDataError(
                f"{path} was simulated from another master pattern than the run's"
            )
        shape, pc = dictionary_geometry(path)
        if shape != tuple(geometry.shape) or not np.allclose(pc, geometry.pc):
            raise TrainingDataError(
                f"{path} holds {shape[0]}×{shape[1]} patterns at PC {pc}; the run is "
                f"{geometry.shape[0]}×{geometry.shape[1]} at PC {tuple(geometry.pc)}"
            )
        n = len(self.patterns)
        if n - holdout < batch_size:
            raise TrainingDataError(
                f"{path} holds {n:,} patterns: too few for {holdout:,} held out and batches "
                f"of {batch_size:,}"
            )
        self.quaternions = euler_to_quaternion(
            torch.deg2rad(torch.from_numpy(self.file["euler_deg"][:]))
        ).float()
        self.pc = torch.tensor(pc, dtype=torch.float32)
        order = np.random.default_rng(seed).permutation(n)
        self.train_index = order[: n - holdout]
        self.test_index = np.sort(order[n - holdout :])
        self.batch_size = batch_size
        self.seed = seed
        self.preprocessing = preprocessing

    def take(self, index: np.ndarray) -> dict[str, torch.Tensor]:
        index = np.sort(index)
        raw = torch.from_numpy(self.patterns[index])
        return {
            "patterns": preprocess(raw, self.preprocessing),
            "quaternions": self.quaternions[index],
            "pc": self.pc.expand(len(index), 3),
        }

    def batch(self, k: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, k])
        return self.take(rng.choice(self.train_index, self.batch_size, replace=False))


def held_out_conditions(pc_jitter: float = 0.03) -> dict[str, DegradationConfig]:
    """The held-out sets' degradations: ``noise_free`` (nominal PC); ``moderate``:
    dose 100 with the stream's random contrast, background and blur ≤ 1 px;
    ``detector_like``: dose 50–300, blur 0.5–1.5 px and band contrast fading
    towards the edges (width 0.6–1.0), as on real detectors; ``camera_like``: that,
    through a camera (gamma 0.8–1.25, barrel distortion, a background residual, noise
    correlated over 1–2 pixels)."""
    return {
        "noise_free": NOISE_FREE,
        "moderate": DegradationConfig(dose=(100.0, 100.0), pc_jitter=pc_jitter),
        "detector_like": DegradationConfig(
            dose=(50.0, 300.0), blur=(0.5, 1.5), falloff=(0.6, 1.0), pc_jitter=pc_jitter
        ),
        "camera_like": replace(
            REALISTIC,
            dose=(50.0, 300.0),
            blur=(0.5, 1.5),
            falloff=(0.6, 1.0),
            gamma=(0.8, 1.25),
            distortion=(-0.04, 0.0),
            background_residual=0.15,
            correlated_noise=(0.5, 1.0),
            noise_sigma=(1.0, 2.0),
            pc_jitter=pc_jitter,
            pc_error=0.0,
            clean_fraction=0.0,
        ),
    }


def held_out_sets(
    mp: MasterPattern, geometry: DetectorGeometry, n: int, seed: int, pc_jitter: float = 0.03
) -> dict[str, dict]:
    """Fixed held-out sets of :func:`held_out_conditions`.

    Seeds at or above 1,000,000 never meet training batches (those use the
    run's seed). Made on the CPU whatever the training device, so that figures
    compare across machines.
    """
    sets = {}
    for name, degradation in held_out_conditions(pc_jitter).items():
        stream = PatternStream(mp, geometry, batch_size=n, degradation=degradation, seed=seed)
        sets[name] = stream.batch(0)
    return sets


@torch.no_grad()
def evaluate(
    model, sets: dict, point_group: str, device: torch.device,
    pc_nominal: tuple[float, float, float] | None = None,
) -> dict[str, dict]:  # fmt: skip
    """Disorientation statistics of ``model`` on each validation set.

    With ``pc_nominal`` (the model's), each set's patterns are first resampled from
    their own pattern centres to it, as ``index`` does: the PC of a pattern is known.
    """
    was_training = model.training
    model.eval()
    result = {}
    for name, batch in sets.items():
        patterns = batch["patterns"]
        if pc_nominal is not None:
            patterns = resample_to_pattern_centre(patterns, batch["pc"], torch.tensor(pc_nominal))
        q_pred = predict_quaternions(model, patterns, batch_size=256, device=device)
        result[name] = error_summary(disorientation_deg(q_pred, batch["quaternions"], point_group))
    model.train(was_training)
    return result


def _lr(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up (at most a tenth of the run), then cosine decay to 2% of the peak."""
    warmup = min(cfg.warmup_steps, cfg.steps // 10)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    t = (step - warmup) / max(1, cfg.steps - warmup)
    return cfg.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def training_degradation(cfg: TrainConfig) -> DegradationConfig:
    """The stream's degradations that a run's config sets (the rest are the defaults;
    ``camera="realistic"``: :data:`~ebsdnet.stream.REALISTIC` at the run's doses and PC
    jitter)."""
    if cfg.camera == "realistic":
        return replace(
            REALISTIC, dose=tuple(cfg.dose), pc_jitter=cfg.pc_jitter,
            pc_error=REALISTIC.pc_error if cfg.pc_known else 0.0,
        )  # fmt: skip
    return DegradationConfig(
        dose=tuple(cfg.dose),
        blur=tuple(cfg.blur),
        falloff=None if cfg.falloff is None else tuple(cfg.falloff),
        pc_jitter=cfg.pc_jitter,
        clean_fraction=cfg.clean_fraction,
    )


def training_step(
    net, model, optimizer, batch: dict, operators: torch.Tensor, lr: float, amp: bool
) -> torch.Tensor:
    """One optimiser step of ``model`` on ``batch`` through ``net`` (``model`` or its DDP
    wrapper, which averages the gradients over the ranks); returns the loss."""
    device = next(model.parameters()).device
    for group in optimizer.param_groups:
        group["lr"] = lr
    patterns = batch["patterns"].to(device, non_blocking=True)
    q_true = batch["quaternions"].to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        output = net(patterns)
    output = {k: v.float() for k, v in output.items()}
    loss, _ = compute_loss(model, output, q_true, operators)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return loss


def _save_checkpoint(path: Path, model, optimizer, step: int, state: dict) -> None:
    tmp = path.with_name(path.name + ".partial")
    torch.save(
        {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step, **state},
        tmp,
    )
    os.replace(tmp, path)


def train(cfg: TrainConfig, resume: bool = False, show_progressbar: bool = True) -> Path | None:
    """Run (or resume) training; returns the card path on rank 0 when the run completes."""
    from tqdm.auto import tqdm

    cfg.check()

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = pick_device(cfg.device)
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    main_rank = rank == 0
    out = Path(cfg.out)
    ckpt_path = out / "checkpoint.pt"

    # A CIF, an EMsoft file or one written by ebsdnet (see ebsdnet.phases).
    mp = master_pattern(cfg.master_pattern) if cfg.master_pattern else MasterPattern.nickel()
    others = tuple(master_pattern(path) for path in cfg.also_master_patterns)
    for path, other in zip(cfg.also_master_patterns, others, strict=True):
        if not same_laue_group(other.point_group, mp.point_group):
            raise TrainingDataError(
                f"{path} is of point group {other.point_group}; the run's master pattern "
                f"of {mp.point_group}, another Laue group"
            )
    geometry = DetectorGeometry(shape=tuple(cfg.shape), pc=tuple(cfg.pc))
    preprocessing = PreprocessConfig()
    degradation = training_degradation(cfg)
    if cfg.dictionary:
        data = DictionaryBatches(
            cfg.dictionary, cfg.batch_size, cfg.seed, cfg.val_size, preprocessing, mp, geometry
        )
        test = data.take(data.test_index)
        val_sets = {"dictionary_holdout": test}
    else:
        # Made on the training device: on a GPU, a CPU stream would starve the steps.
        data = PatternStream(
            mp, geometry, cfg.batch_size, degradation, preprocessing, seed=cfg.seed,
            at_nominal_pc=cfg.pc_known, device=device, others=others,
            other_fraction=cfg.also_fraction,
        )  # fmt: skip
        val_sets = (
            held_out_sets(mp, geometry, cfg.val_size, cfg.seed + 1_000_000, cfg.pc_jitter)
            if main_rank
            else {}
        )

    torch.manual_seed(cfg.seed)
    if cfg.init_from:
        # Fine-tuning: the saved model's architecture, and its weights unless resuming.
        from ebsdnet.cards import load_model

        model, start_card = load_model(cfg.init_from, device=device)
        cfg.model = start_card["architecture"]
        cfg.model_args = {k: v for k, v in start_card["architecture_args"].items() if k != "shape"}
        model.train()
    else:
        model = create_model(cfg.model, shape=tuple(cfg.shape), **cfg.model_args).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    operators = point_group_operators(mp.point_group, device=device)
    start, history, elapsed = 0, [], 0.0
    if resume and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, history, elapsed = state["step"], state["history"], state["elapsed"]
        log.info("resuming %s at step %d", out, start)
    if main_rank:
        # Only now, so that a bad --init-from or master pattern leaves no folder behind.
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model)

    precision = training_precision(device, cfg.precision)
    amp = precision == "bfloat16"
    t_start = time.perf_counter() - elapsed  # wall time across resumes, for the card
    t_invoked = time.perf_counter()  # the time limit is per invocation (one session's share)
    t_ckpt = time.perf_counter()
    bar = tqdm(
        total=cfg.steps,
        initial=start,
        unit="step",
        desc="train",
        disable=not (show_progressbar and main_rank),
        mininterval=2.0,
    )
    model.train()
    step = start
    stopped_early = False
    while step < cfg.steps:
        batch = data.batch(step * world + rank)
        loss = training_step(net, model, optimizer, batch, operators, _lr(step, cfg), amp)
        step += 1
        bar.update(1)
        last = step == cfg.steps
        if main_rank and (step % cfg.val_every == 0 or last):
            figures = evaluate(model, val_sets, mp.point_group, device, tuple(cfg.pc))
            history.append(
                {
                    "step": step,
                    "loss": loss.item(),
                    "elapsed_s": time.perf_counter() - t_start,
                    **{k: v["mean"] for k, v in figures.items()},
                }
            )
            bar.set_postfix(
                loss=f"{loss.item():.4f}", **{k: f"{v['mean']:.2f}°" for k, v in figures.items()}
            )
        out_of_time = cfg.time_limit_minutes is not None and (
            time.perf_counter() - t_invoked > 60 * cfg.time_limit_minutes
        )
        due = time.perf_counter() - t_ckpt > 60 * cfg.checkpoint_minutes
        if main_rank and (due or last or out_of_time):
            _save_checkpoint(
                ckpt_path,
                model,
                optimizer,
                step,
                {"history": history, "elapsed": time.perf_counter() - t_start},
            )
            t_ckpt = time.perf_counter()
        if out_of_time and not last:
            stopped_early = True
            break
    bar.close()
    if world > 1:
        torch.distributed.destroy_process_group()
    if not main_rank or stopped_early:
        return None
    figures = evaluate(model, val_sets, mp.point_group, device, tuple(cfg.pc))
    jitter = 0.0 if cfg.dictionary else cfg.pc_jitter
    card = {
        "phase": mp.phase_name,
        "point_group": mp.point_group,
        "master_pattern_sha256": mp.sha256,
        # How the texture trained on was derived from that file (see MasterPattern.symmetrised).
        "master_pattern_texture": {k: mp.meta.get(k) for k in ("symmetrised", "upsampled")},
        "shape": list(cfg.shape),
        "pc_nominal": list(cfg.pc),
        # A dictionary holds patterns of its one PC, clean: no jitter, no degradation.
        "pc_range": [[p - jitter, p + jitter] for p in cfg.pc],
        "sample_tilt": geometry.sample_tilt,
        "camera_tilt": geometry.tilt,
        "preprocessing": preprocessing.to_dict(),
        "degradation": None if cfg.dictionary else degradation.to_dict(),
        # Mixed into training beside the master pattern above (index refines with that one).
        "also_master_patterns": [
            {"phase": o.phase_name, "sha256": o.sha256, "share": cfg.also_fraction / len(others)}
            for o in others
        ],
        "training": asdict(cfg),
        "command": " ".join(sys.argv),
        "steps": step,
        "samples_seen": step * cfg.batch_size * world,
        "wall_time_s": round(time.perf_counter() - t_start, 1),
        "training_precision": precision,
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, {device}",
        "validation": figures,
        "history": history,
    }
    if cfg.init_from:  # what the run started from, so that the card tells the whole recipe
        keys = ("name", "weights_sha256", "command", "steps", "samples_seen", "wall_time_s")
        card["initialised_from"] = {key: start_card.get(key) for key in keys}
        if "initialised_from" in start_card:  # a chain of fine-tunings
            card["initialised_from"]["initialised_from"] = start_card["initialised_from"]
    return save_model(model, out / "model", card)
