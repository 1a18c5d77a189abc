"""Self-training on the user's own scan: ``ebsdnet index --adapt``.

A network trained on simulated patterns meets a real detector's patterns as a
stranger: their noise is correlated over pixels, their bands' profiles are not
the simulation's, their contrast fades towards the edges. The scan itself holds
the cure. :func:`ebsdnet.indexing.index` indexes the map once; the points whose
*refined* NCC is confidently high (at least the map's median, flag 0) carry
orientations good to about a tenth of a degree — pseudo-labels, in the scan's own
patterns. :func:`fine_tune` trains the network on them for a bounded time, each
batch half pseudo-labelled patterns and half simulated ones from the stream the
model was trained on (so that it keeps what it knew); ``index`` then indexes
the map again with the adapted network, and each point keeps its first answer
unless the second matches its pattern clearly better (refined NCC higher by
``indexing.ADAPT_MIN_GAIN``): adapting rescues points, it never lowers a point's
NCC.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

__all__ = ["ADAPT_MINUTES", "fine_tune", "pseudo_labels"]

log = logging.getLogger(__name__)

#: Default time spent fine-tuning (``--adapt`` without a value), minutes.
ADAPT_MINUTES = 3.0
#: Pseudo-labels: indexed points (flag 0) whose NCC is at least this quantile of theirs.
CONFIDENT_QUANTILE = 0.5
#: Fewer confident points than this: no adaptation (the map is returned as indexed).
MIN_LABELS = 16
#: At most this many pseudo-labels (an even sample of the confident points): 10,000
#: conditioned 60×60 patterns hold 144 MB.
MAX_LABELS = 10_000
#: Patterns per fine-tuning step, half pseudo-labelled and half simulated.
ADAPT_BATCH = 64
ADAPT_LR = 1e-4
#: At most this many steps, however long ``minutes`` allows.
ADAPT_MAX_STEPS = 5_000


def pseudo_labels(ncc: np.ndarray, flag: np.ndarray, seed: int = 0) -> np.ndarray:
    """Indices of the points to fine-tune on: indexed (flag 0), NCC at least the
    ``CONFIDENT_QUANTILE`` of the indexed points', at most ``MAX_LABELS`` of them
    (an even random sample), sorted.

    >>> pseudo_labels(np.array([0.5, 0.1, 0.4, 0.3, 0.0]), np.array([0, 0, 0, 0, 4]))
    array([0, 2])
    """
    indexed = np.flatnonzero(flag == 0)
    if not len(indexed):
        return indexed
    threshold = np.quantile(ncc[indexed], CONFIDENT_QUANTILE)
    chosen = indexed[ncc[indexed] >= threshold]
    if len(chosen) > MAX_LABELS:
        chosen = np.random.default_rng(seed).choice(chosen, MAX_LABELS, replace=False)
    return np.sort(chosen)


def fine_tune(
    model: str,
    inputs: torch.Tensor,
    quaternions: torch.Tensor,
    master_pattern,
    minutes: float = ADAPT_MINUTES,
    device: torch.device | str = "cpu",
    seed: int = 0,
    show_progressbar: bool = True,
) -> tuple[torch.nn.Module, dict]:
    """``model`` (a saved or shipped model) fine-tuned on pseudo-labelled patterns.

    Parameters
    ----------
    inputs
        The network's view of the pseudo-labelled patterns ``(N, H, W)``
        (conditioned, at the model's shape and nominal PC, as ``index`` shows them).
    quaternions
        Their refined orientations ``(N, 4)``.
    master_pattern
        The model's master pattern: the simulated half of each batch is drawn
        from the stream the model was trained on (its card's degradations).

    Returns
    -------
    The fine-tuned model (training form, on ``device``) and a summary for the
    model card: ``labels``, ``steps``, ``seconds``, ``lr``, ``batch_size``.
    """
    from tqdm.auto import tqdm

    from ebsdnet.cards import load_model
    from ebsdnet.projector import DetectorGeometry
    from ebsdnet.rotations import point_group_operators
    from ebsdnet.stream import DegradationConfig, PatternStream
    from ebsdnet.train import training_precision, training_step

    device = torch.device(device)
    net, card = load_model(model, device=device)
    net.train()
    geometry = DetectorGeometry(shape=tuple(card["shape"]), pc=tuple(card["pc_nominal"]))
    degradation = DegradationConfig(**(card.get("degradation") or {}))
    stream = PatternStream(
        master_pattern, geometry, batch_size=ADAPT_BATCH - ADAPT_BATCH // 2,
        degradation=degradation, seed=seed + 7_000_003,
        at_nominal_pc=card.get("training", {}).get("pc_known", False),
    )  # fmt: skip
    operators = point_group_operators(card["point_group"], device=device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=ADAPT_LR, weight_decay=0.05)
    amp = training_precision(device) == "bfloat16"
    g = torch.Generator().manual_seed(seed)
    seconds = 60.0 * minutes
    bar = tqdm(
        total=round(seconds), unit="s", desc="adapt", disable=not show_progressbar,
        bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s [{postfix}]",
    )  # fmt: skip
    t0 = time.perf_counter()
    step = 0
    while step < ADAPT_MAX_STEPS and time.perf_counter() - t0 < seconds:
        pick = torch.randint(len(inputs), (ADAPT_BATCH // 2,), generator=g)
        simulated = stream.batch(step)
        batch = {
            "patterns": torch.cat([inputs[pick], simulated["patterns"]]),
            "quaternions": torch.cat([quaternions[pick].float(), simulated["quaternions"]]),
        }
        loss = training_step(net, net, optimizer, batch, operators, ADAPT_LR, amp)
        step += 1
        if step % 10 == 0:
            bar.n = min(round(time.perf_counter() - t0), bar.total)
            bar.set_postfix_str(f"step {step}, loss {loss.item():.4f}")
    bar.n = bar.total
    bar.close()
    net.eval()
    summary = {
        "labels": len(inputs), "steps": step,
        "seconds": round(time.perf_counter() - t0, 1), "lr": ADAPT_LR,
        "batch_size": ADAPT_BATCH, "simulated_share": 0.5,
        "label_rule": f"flag 0, NCC ≥ the map's {CONFIDENT_QUANTILE:g} quantile",
    }  # fmt: skip
    log.info("adapted on %d patterns: %d steps in %.0f s", len(inputs), step, summary["seconds"])
    return net, summary
