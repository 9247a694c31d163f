"""A fresh Python process that has Keras and TensorFlow but cannot import this project, as a user's has.

The project is installed editable in the venv (a path finder set up by a `.pth` file in site-packages),
so clearing PYTHONPATH and leaving the repository is not enough: the process runs with `-I -S` (no
PYTHONPATH, no user site, no working directory on the path, no `.pth` files) and gets only the venv's
site-packages folders appended to `sys.path`, without the editable finder. It checks that it cannot
import `data`, `models`, `training` or `tools` before it runs the code it is given.
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
import textwrap

PRELUDE = textwrap.dedent(
    """
    import importlib, sys
    sys.path.extend({site_packages!r})
    for package in ("data", "models", "training", "tools"):
        try:
            importlib.import_module(package)
        except ImportError:
            continue
        raise SystemExit(f"the project's package {{package}} is importable here")
    """
)


def run(
    code: str, *args: str, cwd: str | os.PathLike[str], timeout: int = 300
) -> subprocess.CompletedProcess:
    """Runs `code` (with `sys.argv[1:] == args`) in such a process in `cwd`; returns the finished process."""
    prelude = PRELUDE.format(site_packages=[p for p in site.getsitepackages() if os.path.isdir(p)])
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    return subprocess.run(
        [sys.executable, "-I", "-S", "-c", prelude + textwrap.dedent(code), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
