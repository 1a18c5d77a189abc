"""ebsdnet: EBSD indexing with a CNN trained on simulated patterns.

``import ebsdnet`` stays light (no torch, kikuchipy or orix import); the public
names below are loaded on first use.

    >>> import ebsdnet
    >>> sorted(ebsdnet.__all__)[:3]
    ['DetectorGeometry', 'MasterPattern', 'Projector']
"""

from __future__ import annotations

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "index": "ebsdnet.indexing",
    "master_pattern": "ebsdnet.phases",
    "read_cif": "ebsdnet.phases",
    "save_map": "ebsdnet.indexing",
    "write_ipf_map": "ebsdnet.indexing",
    "load_model": "ebsdnet.cards",
    "create_model": "ebsdnet.models",
    "Projector": "ebsdnet.projector",
    "MasterPattern": "ebsdnet.projector",
    "DetectorGeometry": "ebsdnet.projector",
    "preprocess": "ebsdnet.preprocess",
    "refine_orientations": "ebsdnet.refine",
    "disorientation_deg": "ebsdnet.rotations",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ebsdnet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return [*globals(), *__all__]
