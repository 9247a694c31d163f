"""Tencent ML-Images in TensorFlow 2 / Keras 3: dataset tooling, the multi-label ResNet, training and evaluation.

TensorFlow comes through an extra so that CPU and GPU machines each get the right build:

    pip install -e .[cpu,dev]     # CPU wheel (tensorflow-cpu), test tools
    pip install -e .[gpu]         # CUDA build (tensorflow[and-cuda])

Horovod is built by tools/install.sh (it needs a source build against the installed TensorFlow). The tests
also need `tf-keras` (TF1 graph code writes a release-style checkpoint); install.sh adds it with --no-deps,
because its dependency on the `tensorflow` distribution would install a second TensorFlow over
tensorflow-cpu.
"""

from setuptools import setup

TF_VERSION = "2.21.*"

setup(
    name="mlimages",
    version="0.1.0",
    description="Reference-faithful TF2/Keras 3 reimplementation of Tencent ML-Images",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=["data", "models", "training"],
    install_requires=[
        "tensorflow-datasets>=4.9",
        "numpy>=1.26",
        "pillow>=10",
        "absl-py>=2.1",
        "tqdm>=4.66",
        "tensorboard>=2.19",  # tf.summary needs it; TensorFlow 2.21 no longer installs it
    ],
    extras_require={
        "cpu": [f"tensorflow-cpu=={TF_VERSION}"],
        "gpu": [f"tensorflow[and-cuda]=={TF_VERSION}"],
        "plots": ["matplotlib>=3.8"],
        "dev": [
            "pytest>=8",
            "ruff==0.17.*",
            "matplotlib>=3.8",
            "psutil>=5.9",
            "opencv-python-headless>=4.9",  # tests: the release tools' cv.imread/cv.resize as the reference
        ],
    },
)
