"""The wheel carries the shipped model, and installed into a fresh virtual environment it runs
``ebsdnet demo`` from outside the source tree.

The fresh environment gets ebsdnet from the wheel alone; its dependencies (torch, kikuchipy,
…) it sees through a ``.pth`` file naming this environment's site-packages, which a CI run
could not download in reasonable time. Directories named in a ``.pth`` file are only appended
to ``sys.path``: the ``.pth`` files inside them (this checkout's editable install among them)
are not read, so ``src/`` stays out of reach.
"""

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRETRAINED = ROOT / "src" / "ebsdnet" / "pretrained"


def _run(cmd, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{cmd}:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """``pip wheel`` of a clean copy of the package: an in-tree build would leave ``build/``
    in the checkout, whose stale files setuptools puts into later wheels."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(ROOT / "src", source / "src", ignore=ignore)
    for path in [ROOT / "pyproject.toml", ROOT / "README.md", *ROOT.glob("LICEN[CS]E*")]:
        shutil.copy2(path, source / path.name)
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    _run([*pip, "--no-index", "-w", str(work / "dist"), str(source)], cwd=work)
    (built,) = (work / "dist").glob("ebsdnet-*.whl")
    return built


def test_wheel_ships_the_model_and_the_command(wheel):
    shipped = sorted(PRETRAINED.glob("*.safetensors")) + sorted(PRETRAINED.glob("*.json"))
    assert shipped, "no shipped model in src/ebsdnet/pretrained"
    with zipfile.ZipFile(wheel) as whl:
        sizes = {info.filename: info.file_size for info in whl.infolist()}
        (entry_points,) = [n for n in sizes if n.endswith(".dist-info/entry_points.txt")]
        assert "ebsdnet = ebsdnet.cli:main" in whl.read(entry_points).decode()
    for path in shipped:
        assert sizes.get(f"ebsdnet/pretrained/{path.name}") == path.stat().st_size, path.name
    assert "ebsdnet/py.typed" in sizes
    assert not [n for n in sizes if n.startswith(("tests/", "benchmarks/", "docs/"))]


@pytest.mark.slow
def test_wheel_installed_in_a_fresh_venv_runs_the_demo(wheel, tmp_path):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    fresh_site = Path(_run([str(python), "-c", code]).stdout.strip())
    (fresh_site / "project_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q"]
    _run([*install, "--no-deps", "--no-index", str(wheel)])

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    where = "import ebsdnet, sys; print(ebsdnet.__file__); print('\\n'.join(sys.path))"
    ebsdnet_file, *path = _run([str(python), "-c", where], cwd=tmp_path, env=env).stdout.split()
    assert Path(ebsdnet_file).is_relative_to(fresh_site), ebsdnet_file
    assert str(ROOT / "src") not in path

    out = tmp_path / "demo"
    demo = [str(venv / "bin" / "ebsdnet"), "demo", "--out", str(out)]
    result = _run(demo, cwd=tmp_path, env=env)
    assert "CNN (ni-60)" in result.stdout  # the shipped model, read from the wheel
    for figure in ["ipf_truth_1nn_cnn.png", "error_histograms.png", "first_layer_filters.png"]:
        assert (out / figure).stat().st_size > 0, figure
