"""Write one benchmark's section of BENCHMARKS.md, leaving the others as they are."""

from __future__ import annotations

from pathlib import Path

from ebsdnet.report import machine, write_section

__all__ = ["machine", "publish"]

ROOT = Path(__file__).resolve().parents[1]


def publish(name: str, lines: list[str], write: bool) -> None:
    """Print a benchmark's table and, with ``write``, put it in BENCHMARKS.md."""
    table = "\n".join(lines)
    print(table)
    if write:
        write_section(name, table, ROOT / "BENCHMARKS.md")
