"""Tencent ML-Images in TensorFlow 2 / Keras 3: dataset tooling, the multi-label ResNet, training and evaluation.

TensorFlow comes through an extra so that CPU and GPU machines each get the right build:

    pip install -e .[cpu,dev]     # CPU wheel (tensorflow-cpu), test tools
    pip install -e .[gpu]         # CUDA build (tensorflow[and-cuda])
    pip install -e .[beam]        # Apache Beam: generate the `ml_images` TFDS dataset (data/ml_images/)

Horovod is built by tools/install.sh (it needs a source build against the installed TensorFlow). The tests
also need `tf-keras` (TF1 graph code writes a release-style checkpoint); install.sh adds it with --no-deps,
because its dependency on the `tensorflow` distribution would install a second TensorFlow over
tensorflow-cpu.
"""

from setuptools import find_packages, setup

TF_VERSION = "2.21.*"

setup(
    name="mlimages",
    version="0.1.0",
    description="Reference-faithful TF2/Keras 3 reimplementation of Tencent ML-Images",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    # tools/ too: `python tools/export.py` imports tools.serving_input, tools/benchmark.py tools.benchmarks.
    packages=find_packages(include=["data", "data.*", "models", "training", "tools", "tools.*"]),
    package_data={"tools.benchmarks": ["floors.toml"]},
    install_requires=[
        "tensorflow-datasets>=4.9",
        # TFDS 4.9.10 imports it for every builder defined in a package (data/ml_images) but does not declare
        # it on Python >= 3.9 (tensorflow/datasets#11212).
        "importlib_resources>=6",
        "numpy>=1.26",
        "pillow>=10",
        "absl-py>=2.1",
        "tqdm>=4.66",
        "idna>=3.7",  # data/fetch/urls.py: non-ASCII host names as browsers send them (IDNA 2008, UTS #46)
        "tensorboard>=2.19",  # tf.summary needs it; TensorFlow 2.21 no longer installs it
        # CRC-32C of the TFRecord framing (data/records/record_writer.py): C, ~100x the numpy fallback's speed.
        "google-crc32c>=1.5",
    ],
    extras_require={
        "cpu": [f"tensorflow-cpu=={TF_VERSION}"],
        "gpu": [f"tensorflow[and-cuda]=={TF_VERSION}"],
        "plots": ["matplotlib>=3.8"],
        # `tfds build data/ml_images` on DirectRunner, Dataflow, Flink or Spark. Beam 2.77 caps protobuf < 7,
        # pyarrow < 26 and pillow < 13, so installing it moves those three down a major version.
        # mlcroissant: the `tfds` command line imports it for every subcommand, `tfds build` included.
        "beam": ["apache-beam==2.77.*", "mlcroissant>=1.0.9"],
        "dev": [
            "pytest>=8",
            "ruff==0.17.*",
            "matplotlib>=3.8",
            "psutil>=5.9",
            "opencv-python-headless>=4.9",  # tests: the release tools' cv.imread/cv.resize as the reference
        ],
    },
)
