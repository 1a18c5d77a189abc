"""The README fits one screen and its links lead somewhere; ``make docs`` builds without a
warning, and its reference pages cover every command, option and public name."""

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_readme_is_short_and_its_links_exist():
    readme = ROOT / "README.md"
    assert readme.stat().st_size <= 10_000, "README.md: details belong in docs/"
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme.read_text(encoding="utf-8"))
    assert targets, "the README links to nothing"
    missing = [t for t in targets if "://" not in t and not (ROOT / t).exists()]
    assert not missing, f"README.md links to missing files: {missing}"


@pytest.fixture(scope="module")
def html(tmp_path_factory) -> Path:
    """The documentation built as ``make docs`` builds it (-W: a warning fails the build)."""
    out = tmp_path_factory.mktemp("docs")
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html"]
    cmd += ["-d", str(out / "doctrees"), str(ROOT / "docs"), str(out / "html")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"sphinx-build failed:\n{result.stderr[-6000:]}"
    return out / "html"


@pytest.mark.slow
def test_docs_build_every_page(html):
    pages = ["index", "cli", "api", "performance", "benchmarks", "study-2016", "architecture"]
    pages += [f"guide/{p.stem}" for p in (ROOT / "docs" / "guide").glob("*.md")]
    for page in pages:
        assert (html / f"{page}.html").is_file(), page
    # BENCHMARKS.md is included, not copied: every table of it is on the page.
    text = (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8")
    tables = len(re.findall(r"^\|(?: *:?-+:? *\|)+$", text, re.M))
    assert tables > 5
    assert (html / "benchmarks.html").read_text(encoding="utf-8").count("<table") == tables


@pytest.mark.slow
def test_cli_reference_lists_every_command_and_option(html):
    from ebsdnet.cli import build_parser

    page = (html / "cli.html").read_text(encoding="utf-8")
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in commands.choices.items():
        assert f'id="ebsdnet-{name}"' in page, name
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            for option in action.option_strings:
                assert re.search(rf"<kbd>(?:[^<]*, )?{re.escape(option)}(?=[,<])", page), (
                    f"ebsdnet {name} {option}"
                )


@pytest.mark.slow
def test_api_reference_documents_every_public_name(html):
    import ebsdnet

    page = (html / "api.html").read_text(encoding="utf-8")
    for name, module in ebsdnet._LAZY.items():
        assert f'id="{module}.{name}"' in page, f"ebsdnet.{name}"
