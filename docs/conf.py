"""Sphinx configuration for ebsdnet's documentation (``make docs``).

The build is offline (no intersphinx inventories are fetched) and runs with warnings as
errors: ``sphinx-build -W --keep-going -b html docs docs/_build/html``.
"""

import sys
from pathlib import Path

# Document the checkout being built, also where ebsdnet is installed only as a wheel.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import ebsdnet

project = "ebsdnet"
author = "the ebsdnet developers"
copyright = "the ebsdnet developers"
release = ebsdnet.__version__
version = release

extensions = [
    "myst_parser",
    "numpydoc",
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "sphinxarg.ext",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

myst_enable_extensions = ["colon_fence", "dollarmath"]
# Curly quotes, but no dashes: option names such as --output in help texts stay as typed.
smartquotes_action = "qe"
myst_heading_anchors = 3

# Docstrings are numpydoc; numpydoc renders them, autodoc finds them.
autodoc_member_order = "bysource"
autodoc_typehints = "none"  # numpydoc's Parameters sections carry the types in words
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

html_theme = "alabaster"
html_title = f"ebsdnet {release}"
html_static_path: list[str] = []
html_theme_options = {"description": "EBSD indexing: a CNN, then pattern matching"}


# --- The API page is filled in from the package itself, so that a new public name or module
# appears without editing the docs: ``_LAZY`` lists the public names, the files the modules.


def _public_names() -> str:
    rows = ["| name | documented as |", "|---|---|"]
    for name, module in sorted(ebsdnet._LAZY.items()):
        rows.append(f"| `ebsdnet.{name}` | {{py:obj}}`{module}.{name}` |")
    return "\n".join(rows) + "\n"


def _modules() -> str:
    import pkgutil

    blocks = []
    for info in sorted(pkgutil.iter_modules(ebsdnet.__path__), key=lambda m: m.name):
        if info.name.startswith("_") or info.name == "cli":  # cli: the CLI reference page
            continue
        name = f"ebsdnet.{info.name}"
        # autodoc writes reStructuredText, so its directive sits in an eval-rst block.
        rst = f".. automodule:: {name}\n   :members:"
        blocks.append(f"### `{name}`\n\n```{{eval-rst}}\n{rst}\n```\n")
    return "\n".join(blocks)


def _fill_api_page(app, docname, source):
    if docname == "api":
        text = source[0].replace("<!-- ebsdnet:public-names -->", _public_names())
        source[0] = text.replace("<!-- ebsdnet:modules -->", _modules())


def setup(app):
    app.connect("source-read", _fill_api_page)
