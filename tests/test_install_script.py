"""tools/install.sh's command line and the GPU build's path finding (tools/cuda_paths.py) on fake trees.

No GPU and no CUDA toolkit are needed: the nvidia-* wheel layout and `nvcc` are imitated in tmp_path.
"""

import os
import pathlib
import re
import subprocess
import sys

import pytest

from tools import cuda_paths

INSTALL_SH = pathlib.Path(__file__).resolve().parents[1] / "tools" / "install.sh"


def fake_site_packages(root: pathlib.Path, *, nccl=(2, 32, 3), cudart=12090, with_unversioned=False):
    """The files of nvidia-nccl-cu12 and nvidia-cuda-runtime-cu12 that cuda_paths reads."""
    nccl_dir = root / "nvidia" / "nccl"
    (nccl_dir / "include").mkdir(parents=True)
    (nccl_dir / "lib").mkdir()
    major, minor, patch = nccl
    (nccl_dir / "include" / "nccl.h").write_text(
        f"#define NCCL_MAJOR {major}\n#define NCCL_MINOR {minor}\n#define NCCL_PATCH {patch}\n"
        f'#define NCCL_SUFFIX ""\n#define NCCL_VERSION_CODE {major * 10000 + minor * 100 + patch}\n'
    )
    (nccl_dir / "lib" / "libnccl.so.2").write_bytes(b"\x7fELF")
    if with_unversioned:
        (nccl_dir / "lib" / "libnccl.so").symlink_to("libnccl.so.2")
    runtime = root / "nvidia" / "cuda_runtime" / "include"
    runtime.mkdir(parents=True)
    (runtime / "cuda_runtime_api.h").write_text(f"/* header */\n#define CUDART_VERSION  {cudart}\n")
    return root


def fake_toolkit(home: pathlib.Path, release: str | None, *, headers: bool = True) -> pathlib.Path:
    """A CUDA home whose bin/nvcc prints `release` like nvcc --version does (None: an nvcc that fails)."""
    (home / "bin").mkdir(parents=True)
    if headers:
        (home / "include" / "nv").mkdir(parents=True)
        (home / "include" / "nv" / "target").write_text("// CCCL\n")
        (home / "include" / "cuda_runtime.h").write_text("// runtime\n")
    nvcc = home / "bin" / "nvcc"
    if release is None:
        nvcc.write_text("#!/bin/sh\nexit 1\n")
    else:
        nvcc.write_text(
            "#!/bin/sh\necho 'nvcc: NVIDIA (R) Cuda compiler driver'\n"
            f"echo 'Cuda compilation tools, release {release}, V{release}.86'\n"
        )
    nvcc.chmod(0o755)
    return home


# --- install.sh's command line ---------------------------------------------------------------------------


def test_help_describes_every_flag_and_the_gpu_build():
    out = subprocess.run(
        ["bash", str(INSTALL_SH), "--help"], capture_output=True, text=True, check=True
    ).stdout
    flags_in_case = set(re.findall(r"^\s+(--[a-z-]+)\)", INSTALL_SH.read_text(), re.MULTILINE))
    assert flags_in_case >= {"--gpu", "--cpu", "--no-horovod"}
    for flag in flags_in_case:
        assert flag in out, flag
    for needed in ("NCCL", "HOROVOD_CUDA_HOME", "CUDA 12", "MLIMAGES_CACHE", "docs/INSTALL_GPU.md"):
        assert needed in out, needed
    assert "set -euo pipefail" not in out  # only the comment block is shown


def test_unknown_argument_is_a_usage_error():
    res = subprocess.run(["bash", str(INSTALL_SH), "--gpus"], capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.strip() == "install.sh: unknown argument '--gpus' (see --help)"


# --- NCCL and the CUDA runtime from the wheels ------------------------------------------------------------


def test_find_nccl_links_libnccl_so_to_the_wheels_soname_file(tmp_path):
    sp = fake_site_packages(tmp_path / "sp")
    nccl = cuda_paths.find_nccl(sp, link_dir=tmp_path / "link")
    assert nccl.version == "2.32.3"
    assert nccl.include == sp / "nvidia" / "nccl" / "include"
    assert nccl.lib == tmp_path / "link"
    link = tmp_path / "link" / "libnccl.so"  # what CMake's find_library(NAMES nccl) looks for
    assert link.is_symlink() and link.resolve() == (sp / "nvidia" / "nccl" / "lib" / "libnccl.so.2").resolve()
    # A second run (a re-install) replaces the link instead of failing on it.
    assert cuda_paths.find_nccl(sp, link_dir=tmp_path / "link").lib == tmp_path / "link"


def test_find_nccl_uses_the_wheels_lib_dir_when_it_has_libnccl_so(tmp_path):
    sp = fake_site_packages(tmp_path / "sp", nccl=(2, 21, 5), with_unversioned=True)
    nccl = cuda_paths.find_nccl(sp, link_dir=tmp_path / "link")
    assert nccl.lib == sp / "nvidia" / "nccl" / "lib"
    assert nccl.version == "2.21.5"
    assert not (tmp_path / "link").exists()


def test_find_nccl_without_the_wheel_says_what_to_install(tmp_path):
    with pytest.raises(ValueError, match=r"no NCCL header at .*nccl\.h: install the GPU TensorFlow"):
        cuda_paths.find_nccl(tmp_path, link_dir=tmp_path / "link")


@pytest.mark.parametrize(("cudart", "major"), [(12090, 12), (12000, 12), (13000, 13), (11080, 11)])
def test_cudart_major_from_the_runtime_header(tmp_path, cudart, major):
    assert cuda_paths.cudart_major(fake_site_packages(tmp_path, cudart=cudart)) == major


# --- nvcc ---------------------------------------------------------------------------------------------------


def test_find_nvcc_skips_a_cuda_13_toolkit_for_cuda_12_wheels(tmp_path):
    cuda13 = fake_toolkit(tmp_path / "cuda-13.0", "13.0")
    broken = fake_toolkit(tmp_path / "broken", None)
    bare = fake_toolkit(tmp_path / "nvcc-only", "12.8", headers=False)
    cuda12 = fake_toolkit(tmp_path / "cuda-12.9", "12.9")
    found = cuda_paths.find_nvcc([tmp_path / "absent", cuda13, broken, bare, cuda12], major=12)
    assert found == cuda_paths.Nvcc(home=cuda12, version="12.9")
    assert found.major == 12


def test_find_nvcc_error_lists_what_it_saw(tmp_path):
    cuda13 = fake_toolkit(tmp_path / "cuda-13.0", "13.0")
    broken = fake_toolkit(tmp_path / "broken", None)
    bare = fake_toolkit(tmp_path / "nvcc-only", "12.8", headers=False)
    with pytest.raises(ValueError) as e:
        cuda_paths.find_nvcc([cuda13, broken, bare], major=12)
    msg = str(e.value)
    assert f"{cuda13}/bin/nvcc (CUDA 13.0)" in msg
    assert f"{broken}/bin/nvcc (does not run)" in msg
    assert f"{bare}/bin/nvcc (CUDA 12.8 without include/cuda_runtime.h and include/nv/target)" in msg
    assert "HOROVOD_CUDA_HOME" in msg and "no CUDA 12 toolkit with nvcc" in msg


def test_toolkit_candidates_order(tmp_path):
    root = tmp_path / "usr_local"
    for name in ("cuda", "cuda-12.9", "cuda-12.10", "cuda-11.8"):
        (root / name).mkdir(parents=True)
    on_path = fake_toolkit(tmp_path / "opt" / "cuda", "12.4")
    env = {"CUDA_HOME": str(root / "cuda-11.8"), "PATH": str(on_path / "bin")}
    got = cuda_paths.toolkit_candidates(env, search_root=root)
    assert got == [
        root / "cuda-11.8",  # CUDA_HOME
        on_path,  # nvcc on PATH
        root / "cuda",
        root / "cuda-12.10",  # numeric, newest first
        root / "cuda-12.9",
    ]


def test_horovod_cuda_home_is_the_only_candidate_when_set(tmp_path):
    (tmp_path / "cuda").mkdir()
    env = {"HOROVOD_CUDA_HOME": "/explicit", "CUDA_HOME": "/other", "PATH": str(tmp_path)}
    assert cuda_paths.toolkit_candidates(env, search_root=tmp_path) == [pathlib.Path("/explicit")]


def test_build_env_tags_the_wheel_with_both_versions(tmp_path):
    nccl = cuda_paths.Nccl(include=tmp_path / "inc", lib=tmp_path / "lib", version="2.32.3")
    env = cuda_paths.build_env(nccl, cuda_paths.Nvcc(home=tmp_path / "cuda", version="12.9"))
    assert env == {
        "HOROVOD_GPU_OPERATIONS": "NCCL",
        "HOROVOD_CUDA_HOME": str(tmp_path / "cuda"),
        "HOROVOD_NCCL_INCLUDE": str(tmp_path / "inc"),
        "HOROVOD_NCCL_LIB": str(tmp_path / "lib"),
        "HOROVOD_NCCL_LINK": "SHARED",
        "MLIMAGES_GPU_TAG": "cuda12.9-nccl2.32.3",
    }


def test_command_line_output_is_evaluated_by_bash(tmp_path):
    """What install.sh --gpu does with the tool's output: `eval` it, then read the exported variables."""
    sp = fake_site_packages(tmp_path / "site packages")  # a space: the values must come out quoted
    cuda = fake_toolkit(tmp_path / "cuda 12", "12.9")
    script = (
        f'eval "$({sys.executable} -m tools.cuda_paths --site_packages="{sp}" --link_dir="{tmp_path}/l")"; '
        "bash -c 'echo \"$HOROVOD_CUDA_HOME|$HOROVOD_NCCL_LIB|$HOROVOD_NCCL_INCLUDE|$MLIMAGES_GPU_TAG\"'"
    )
    env = {**os.environ, "HOROVOD_CUDA_HOME": str(cuda), "PYTHONPATH": str(INSTALL_SH.parents[1])}
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True, env=env).stdout
    assert out.strip().split("|") == [
        str(cuda),
        f"{tmp_path}/l",
        str(sp / "nvidia/nccl/include"),
        "cuda12.9-nccl2.32.3",
    ]


def test_command_line_failure_is_one_line(tmp_path):
    sp = fake_site_packages(tmp_path / "sp", cudart=99000)  # no CUDA 99 toolkit anywhere
    env = {
        **os.environ,
        "HOROVOD_CUDA_HOME": str(fake_toolkit(tmp_path / "c", "12.9")),
        "PATH": "/usr/bin:/bin",
    }
    env["PYTHONPATH"] = str(INSTALL_SH.parents[1])
    res = subprocess.run(
        [sys.executable, "-m", "tools.cuda_paths", f"--site_packages={sp}", f"--link_dir={tmp_path}/l"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert res.returncode == 1 and res.stdout == ""
    assert (
        res.stderr.startswith("cuda_paths.py: error: no CUDA 99 toolkit with nvcc found")
        and res.stderr.count("\n") == 1
    )
