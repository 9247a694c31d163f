#!/usr/bin/env bash
# One-time setup on a fresh Debian/Ubuntu machine with Python 3.11.
#
#   bash tools/install.sh            # CPU TensorFlow, the project (with Apache Beam), Horovod (Gloo) in ./.venv (= --cpu)
#   bash tools/install.sh --gpu      # CUDA TensorFlow (tensorflow[and-cuda]) and Horovod with NCCL
#   bash tools/install.sh --no-horovod
#
# --gpu builds Horovod with HOROVOD_GPU_OPERATIONS=NCCL (GPU all-reduce) plus Gloo, against the NCCL that
# tensorflow[and-cuda] installs (site-packages/nvidia/nccl). Its wheels ship no nvcc, so a CUDA 12 toolkit
# must be on the host (HOROVOD_CUDA_HOME if set, else CUDA_HOME, nvcc on PATH or /usr/local/cuda-12.*; a
# CUDA 13 one is refused). tools/cuda_paths.py finds both; the steps are in docs/INSTALL_GPU.md. No GPU is
# needed to build.
#
# Environment:
#   VENV=PATH            virtual environment to create or reuse (default: ./.venv, or $VIRTUAL_ENV if set)
#   PYTHON=python3.11    interpreter used to create it (default: python3)
#   MLIMAGES_CACHE=DIR   where the built Horovod wheel is kept (default: ~/.cache/mlimages; the --gpu wheel
#                        under a name with its CUDA and NCCL versions, apart from the CPU one)
#   HOROVOD_CUDA_HOME=D  (--gpu) the CUDA 12 toolkit whose bin/nvcc compiles Horovod's kernels
#
# Idempotent: a second run finds a working `import horovod.tensorflow` (with NCCL for --gpu) and does not
# rebuild; a re-install on a machine that built Horovod before takes the cached wheel in seconds. A failed
# Horovod build is reported with the log's tail, and the project still works in single-process mode.
set -euo pipefail

HOROVOD_VERSION=0.28.1
extra=cpu
with_horovod=1
for arg in "$@"; do
  case "$arg" in
    --gpu) extra=gpu ;;
    --cpu) extra=cpu ;;
    --no-horovod) with_horovod=0 ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1' "$0"; exit 0 ;;  # the comment block above
    *) echo "install.sh: unknown argument '$arg' (see --help)" >&2; exit 2 ;;
  esac
done

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${VENV:-${VIRTUAL_ENV:-$root/.venv}}
cache=${MLIMAGES_CACHE:-$HOME/.cache/mlimages}
log() { echo "[install] $*"; }

sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)

# 1. System packages that the Horovod build needs.
apt_packages=(cmake g++ make libhighwayhash-dev libfarmhash-dev)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "$with_horovod" = 1 ] && [ "${#missing[@]}" -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# 2. The virtual environment and the project with its Python dependencies.
if [ ! -x "$venv/bin/python" ]; then
  log "creating virtual environment $venv"
  "${PYTHON:-python3}" -m venv "$venv"
fi
py="$venv/bin/python"
"$py" -m pip install -q --upgrade pip setuptools wheel
# beam: Apache Beam, which generates the ml_images TFDS dataset (data/ml_images/) and its tests use.
log "pip install -e .[$extra,dev,beam]"
"$py" -m pip install -q -e "$root[$extra,dev,beam]"
# tf-keras runs the tests' TF1 graph code (tf.compat.v1.layers). --no-deps: it requires the `tensorflow`
# distribution, which would be installed over tensorflow-cpu as a second copy of the same files.
"$py" -m pip install -q --no-deps "tf-keras==2.21.*"

# 3. Horovod with TensorFlow and Gloo, built from the PyPI sdist against the installed TensorFlow.
horovod_check="import horovod.tensorflow as hvd; hvd.init(); assert hvd.size() >= 1"
# --gpu: a CPU-only Horovod already in the venv does not count (nccl_built() is False for it).
[ "$extra" = gpu ] && horovod_check="$horovod_check; assert hvd.nccl_built()"
horovod_works() {
  (cd /tmp && "$py" -c "$horovod_check") >/dev/null 2>&1
}
if [ "$with_horovod" = 0 ]; then
  log "skipping Horovod (--no-horovod): single-process mode only"
  exit 0
fi
if horovod_works; then
  log "horovod.tensorflow already works: nothing to build"
  exit 0
fi

tf_version=$("$py" -c "import tensorflow as tf; print(tf.__version__)")
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
if [ "$extra" = gpu ]; then
  # Exports HOROVOD_GPU_OPERATIONS=NCCL, HOROVOD_CUDA_HOME, HOROVOD_NCCL_{INCLUDE,LIB,LINK}, MLIMAGES_GPU_TAG.
  cuda_vars=$("$py" "$root/tools/cuda_paths.py" --link_dir="$build/nccl-lib") || exit 1
  eval "$cuda_vars"
  # Horovod's build_utils.py asks `nvcc` on PATH before $HOROVOD_CUDA_HOME/bin/nvcc for the GPU architectures.
  export PATH="$HOROVOD_CUDA_HOME/bin:$PATH"
  log "GPU build: nvcc in $HOROVOD_CUDA_HOME, NCCL from $HOROVOD_NCCL_INCLUDE ($MLIMAGES_GPU_TAG)"
  wheel_dir="$cache/horovod-$HOROVOD_VERSION-tf$tf_version-$MLIMAGES_GPU_TAG-$(uname -m)"
else
  wheel_dir="$cache/horovod-$HOROVOD_VERSION-tf$tf_version-$(uname -m)"
fi
mkdir -p "$wheel_dir"
wheel=$(ls "$wheel_dir"/horovod-*.whl 2>/dev/null | head -n 1 || true)
if [ -z "$wheel" ]; then
  log "building Horovod $HOROVOD_VERSION against TensorFlow $tf_version (about 10 minutes on 2 cores)"
  "$py" -m pip download -q --no-deps --no-binary :all: "horovod==$HOROVOD_VERSION" -d "$build"
  tar -xzf "$build/horovod-$HOROVOD_VERSION.tar.gz" -C "$build"
  src="$build/horovod-$HOROVOD_VERSION"
  # TensorFlow 2.21 ships XLA's headers under xla/..., no longer under tensorflow/compiler/xla/...
  sed -i \
    -e 's#tensorflow/compiler/xla/client/xla_builder.h#xla/hlo/builder/xla_builder.h#' \
    -e 's#tensorflow/compiler/xla/service/#xla/service/#' \
    -e 's#tensorflow/compiler/xla/shape.h#xla/shape.h#' \
    -e 's#tensorflow/compiler/xla/xla_data.pb.h#xla/xla_data.pb.h#' \
    "$src/horovod/tensorflow/xla_mpi_ops.cc"
  if [ "$extra" = gpu ]; then
    # TensorFlow 2.21 no longer exports stream_executor::gpu::AsGpuStreamValue (the library would link and
    # then fail to import with an undefined symbol): take the CUDA stream from
    # Stream::platform_specific_handle().
    sed -i \
      -e '/^\/\/ Forward declaration of AsGpuStreamValue$/,/^} \/\/ namespace gpu$/d' \
      -e '/^#endif \/\/ TENSORFLOW_VERSION >= 2011000000$/a namespace stream_executor { namespace gpu {\
inline GpuStreamHandle AsGpuStreamValue(Stream* stream) {\
  return static_cast<GpuStreamHandle>(stream->platform_specific_handle().stream);\
} } }' \
      "$src/horovod/tensorflow/mpi_ops.cc"
    # Horovod's XLA ops (HOROVOD_ENABLE_XLA_OPS; their code is compiled only with a GPU) use
    # xla::StatusOr, now absl::StatusOr.
    sed -i 's/::xla::StatusOr</::absl::StatusOr</g' "$src/horovod/tensorflow/xla_mpi_ops.cc"
    # libnccl.so.2 is found at run time beside TensorFlow's: site-packages/nvidia/nccl/lib, from
    # site-packages/horovod/tensorflow/mpi_lib*.so (TensorFlow's own libraries use the same RUNPATH).
    # shellcheck disable=SC2016  # $ORIGIN is for the dynamic loader, not the shell
    sed -i -e '/^project(horovod CXX)$/a set(CMAKE_BUILD_WITH_INSTALL_RPATH ON)' \
      -e '/^project(horovod CXX)$/a set(CMAKE_INSTALL_RPATH "$ORIGIN/../../nvidia/nccl/lib")' \
      "$src/CMakeLists.txt"
    if grep -q 'GpuStreamHandle AsGpuStreamValue(Stream\* stream);' "$src/horovod/tensorflow/mpi_ops.cc" ||
       ! grep -q CMAKE_INSTALL_RPATH "$src/CMakeLists.txt"; then
      echo "[install] ERROR: the GPU patches of Horovod $HOROVOD_VERSION's sources did not apply" >&2
      exit 1
    fi
  fi
  if ! (cd "$src" && HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_PYTORCH=1 \
        HOROVOD_WITHOUT_MXNET=1 HOROVOD_CPU_OPERATIONS=gloo MAKEFLAGS="-j$(nproc)" \
        "$py" -m pip wheel -v --no-deps --no-build-isolation . -w "$wheel_dir" >"$build/build.log" 2>&1); then
    echo "[install] ERROR: the Horovod build failed; last lines of its log:" >&2
    tail -n 40 "$build/build.log" >&2
    echo "[install] The project still works in single-process mode (python train.py ...)." >&2
    exit 1
  fi
  wheel=$(ls "$wheel_dir"/horovod-*.whl | head -n 1)
fi
log "installing $wheel"
"$py" -m pip install -q --no-deps --force-reinstall "$wheel"
"$py" -m pip install -q cloudpickle psutil pyyaml packaging  # horovod's runtime requirements
if horovod_works; then
  log "horovod.tensorflow works: $("$py" -c 'import horovod; print(horovod.__version__)')"
else
  echo "[install] ERROR: Horovod installed but 'import horovod.tensorflow' fails; remove $wheel_dir and re-run" >&2
  exit 1
fi
