"""The CUDA compiler and NCCL paths a GPU (NCCL) build of Horovod compiles against; used by install.sh --gpu.

`tensorflow[and-cuda]` installs CUDA 12 and NCCL as nvidia-* wheels under site-packages/nvidia/. They carry
what Horovod links against — NCCL's header and `libnccl.so.2` (nvidia/nccl/{include,lib}), the CUDA runtime
headers and `libcudart_static.a` (nvidia/cuda_runtime/{include,lib}) — but no `nvcc`: nvidia-cuda-nvcc-cu12
ships `ptxas` only (checked for 12.4.131 and 12.9.86), and Horovod compiles its fused-buffer kernels
(horovod/common/ops/cuda/cuda_kernels.cu) with nvcc. So the compiler comes from a CUDA toolkit on the host
whose major version matches the wheels' runtime (12 for TF 2.21); a CUDA 13 nvcc is refused, its runtime
needs a newer driver than TensorFlow's CUDA 12 and the two runtimes would share one process.

Two quirks of the wheels are handled here: CMake's `find_library(nccl)` (Horovod's FindNCCL.cmake) looks for
`libnccl.so`, which the wheel does not ship (only the SONAME file `libnccl.so.2`), so a link directory with
that symlink is made; and the versions of the toolkit and of NCCL go into a tag that keeps the GPU wheel's
cache apart from the CPU one.

Usage (prints `export NAME=value` lines that install.sh evaluates):
  python tools/cuda_paths.py --link_dir /tmp/build/nccl-lib [--site_packages DIR]
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Mapping, Sequence

from absl import app, flags

from data import command_line


@dataclasses.dataclass(frozen=True)
class Nccl:
    """NCCL as the nvidia-nccl wheel installs it, with a link directory that CMake's find_library accepts."""

    include: pathlib.Path
    lib: pathlib.Path  # holds libnccl.so (a symlink to the wheel's libnccl.so.N where needed)
    version: str  # "2.32.3"


@dataclasses.dataclass(frozen=True)
class Nvcc:
    """A CUDA toolkit whose bin/nvcc was run and reported its release."""

    home: pathlib.Path
    version: str  # "12.9"

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])


def _header_define(header: pathlib.Path, name: str) -> int:
    match = re.search(rf"^\s*#define\s+{name}\s+(\d+)", header.read_text(errors="replace"), re.MULTILINE)
    if match is None:
        raise ValueError(f"{header} does not define {name}")
    return int(match.group(1))


def find_nccl(site_packages: pathlib.Path, *, link_dir: pathlib.Path) -> Nccl:
    """NCCL from `site_packages/nvidia/nccl`; makes `link_dir/libnccl.so` when the wheel lacks it.

    The symlink points at the wheel's file by absolute path; it is only needed while linking (the built
    library records the SONAME libnccl.so.2, found at run time through the RPATH install.sh adds).
    """
    root = site_packages / "nvidia" / "nccl"
    header = root / "include" / "nccl.h"
    if not header.is_file():
        raise ValueError(
            f"no NCCL header at {header}: install the GPU TensorFlow first (pip install -e .[gpu])"
        )
    version = ".".join(str(_header_define(header, n)) for n in ("NCCL_MAJOR", "NCCL_MINOR", "NCCL_PATCH"))
    lib_dir = root / "lib"
    if (lib_dir / "libnccl.so").exists():
        return Nccl(include=header.parent, lib=lib_dir, version=version)
    versioned = sorted(lib_dir.glob("libnccl.so.*"))
    if not versioned:
        raise ValueError(f"no libnccl.so* in {lib_dir}")
    link_dir.mkdir(parents=True, exist_ok=True)
    link = link_dir / "libnccl.so"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(versioned[0].resolve())
    return Nccl(include=header.parent, lib=link_dir, version=version)


def cudart_major(site_packages: pathlib.Path) -> int:
    """The CUDA major version of the runtime wheel TensorFlow uses (CUDART_VERSION 12090 -> 12)."""
    header = site_packages / "nvidia" / "cuda_runtime" / "include" / "cuda_runtime_api.h"
    if not header.is_file():
        raise ValueError(f"no CUDA runtime header at {header}: install the GPU TensorFlow first")
    return _header_define(header, "CUDART_VERSION") // 1000


def nvcc_version(nvcc: pathlib.Path) -> str | None:
    """`nvcc --version`'s release ("12.9"), or None when it does not run or says no release."""
    try:
        out = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"release (\d+\.\d+)", out.stdout)
    return match.group(1) if match else None


def toolkit_candidates(
    env: Mapping[str, str], *, search_root: pathlib.Path = pathlib.Path("/usr/local")
) -> list[pathlib.Path]:
    """Where a CUDA toolkit may be: HOROVOD_CUDA_HOME alone when set (an explicit choice is not second-guessed),
    else CUDA_HOME, CUDA_PATH, `nvcc` on PATH, /usr/local/cuda, /usr/local/cuda-* (newest first)."""
    if env.get("HOROVOD_CUDA_HOME"):
        return [pathlib.Path(env["HOROVOD_CUDA_HOME"])]
    found: list[pathlib.Path] = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if env.get(var):
            found.append(pathlib.Path(env[var]))
    on_path = shutil.which("nvcc", path=env.get("PATH", ""))
    if on_path:
        found.append(pathlib.Path(on_path).resolve().parent.parent)
    found.append(search_root / "cuda")

    def version_key(p: pathlib.Path) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", p.name))

    found.extend(sorted(search_root.glob("cuda-*"), key=version_key, reverse=True))
    return list(dict.fromkeys(found))


# Headers the build includes from the toolkit: Horovod's GPU code includes cuda_runtime.h, and NCCL's nccl.h
# includes cuda_fp16.h, which includes CCCL's <nv/target> (a toolkit with nvcc alone lacks both).
TOOLKIT_HEADERS = ("include/cuda_runtime.h", "include/nv/target")


def find_nvcc(candidates: Sequence[pathlib.Path], *, major: int) -> Nvcc:
    """The first candidate whose bin/nvcc runs, is CUDA `major` and has the headers; the error lists what was seen."""
    seen = []
    for home in candidates:
        nvcc = home / "bin" / "nvcc"
        if not nvcc.is_file():
            continue
        version = nvcc_version(nvcc)
        if version is None or int(version.split(".")[0]) != major:
            seen.append(f"{nvcc} ({'CUDA ' + version if version else 'does not run'})")
            continue
        missing = [h for h in TOOLKIT_HEADERS if not (home / h).exists()]
        if missing:
            seen.append(f"{nvcc} (CUDA {version} without {' and '.join(missing)})")
            continue
        return Nvcc(home=home, version=version)
    raise ValueError(
        f"no CUDA {major} toolkit with nvcc found (TensorFlow's wheels are CUDA {major}; they ship no nvcc); "
        + (f"seen: {', '.join(seen)}; " if seen else "")
        + f"install one (NVIDIA's cuda-toolkit-{major}-x, or cuda-nvcc-{major}-x, cuda-cudart-dev-{major}-x and "
        f"cuda-cccl-{major}-x) and set HOROVOD_CUDA_HOME to it"
    )


def build_env(nccl: Nccl, nvcc: Nvcc) -> dict[str, str]:
    """The environment of Horovod's build: NCCL for the GPU collectives, shared NCCL from the wheel."""
    return {
        "HOROVOD_GPU_OPERATIONS": "NCCL",
        "HOROVOD_CUDA_HOME": str(nvcc.home),
        "HOROVOD_NCCL_INCLUDE": str(nccl.include),
        "HOROVOD_NCCL_LIB": str(nccl.lib),
        "HOROVOD_NCCL_LINK": "SHARED",
        # Part of the cached wheel's directory name: a wheel built for another toolkit or NCCL is not reused.
        "MLIMAGES_GPU_TAG": f"cuda{nvcc.version}-nccl{nccl.version}",
    }


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines the script's flags on `flag_values` (a fresh one runs it in-process)."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_string(
        "link_dir", None, "Directory for the libnccl.so symlink the build links against.", **fv
    )
    flags.DEFINE_string(
        "site_packages", None, "site-packages holding nvidia/ (default: this interpreter's).", **fv
    )
    flags.mark_flag_as_required("link_dir", **fv)


def main(argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """The script: `argv` as left by absl's parsing of `flag_values` (app.run passes only argv)."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {list(argv[1:])}")
    f = flag_values
    site_packages = pathlib.Path(f.site_packages or sysconfig.get_paths()["purelib"])
    try:
        nccl = find_nccl(site_packages, link_dir=pathlib.Path(f.link_dir))
        nvcc = find_nvcc(toolkit_candidates(os.environ), major=cudart_major(site_packages))
    except ValueError as e:
        raise command_line.error(__file__, e) from None
    sys.stdout.write("".join(f"export {k}={shlex.quote(v)}\n" for k, v in build_env(nccl, nvcc).items()))


if __name__ == "__main__":
    command_line.run(main, define_flags, script=__file__)
