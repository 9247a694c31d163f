"""The input contract of a trained network: the image size, the pre-processing and the class names it expects.

A network is only as good as the input it is fed: a demo model trained at 64 px on whole images (`full`)
gives poor scores on 224 px centre crops (`demo`), and nothing in its weights says so. The contract travels
with the network, the way keras-hub presets carry their preprocessor and timm models their data config:

- a run directory: training's `config.json` (written by training/run_dir.py before step 0) holds the image
  sizes by step and the evaluation transform (`data.eval_transform`); `class_names.txt` beside it (one per
  line; the demo writes it) the names. A checkpoint `ckpt-N` expects the size it was trained at by step N;
- a released TF1 checkpoint (or one converted from it): the release's tools' input, `demo` at 224
  (`RELEASE`); its class names are in the release's dictionaries, not next to the checkpoint;
- an export (tools/export.py): `export.json`, `class_names.txt`, the SavedModel's `input_contract`
  signature, and inside `model.keras` itself the zip member `input_contract.json` (Keras ignores members
  it does not know, so the file stays a plain Keras file: `json.load(zipfile.ZipFile(path).open(...))`).

`models.pretrained.load` attaches the contract to the model it returns (`model.input_contract`), and
`models.pretrained.preprocess(images, model)` and the inference tools use it unless told otherwise
(`settings` warns when asked for another image size than the network's).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

from absl import logging

from data import fileio
from data.pixels import preprocessing

__all__ = [
    "CLASS_NAMES_FILE",
    "KERAS_MEMBER",
    "RELEASE",
    "RUN_CONFIG_FILE",
    "InputContract",
    "check_class_names",
    "checkpoint_step",
    "from_run_dir",
    "read_class_names",
    "read_keras_file",
    "with_class_names",
    "write_keras_file",
]

# training/run_dir.py's CONFIG_FILE: models/ never imports training/, so the file name is stated here too.
RUN_CONFIG_FILE = "config.json"
CLASS_NAMES_FILE = "class_names.txt"
KERAS_MEMBER = "input_contract.json"
_STEP = re.compile(r"-(\d+)$")  # ckpt-N


@dataclasses.dataclass(frozen=True)
class InputContract:
    """What a network expects: square images of `image_size` made by `transform`, and its class names.

    Attributes:
      image_size: the side S of the network's input (the crop side of `demo`).
      transform: a name of `data.pixels.preprocessing.TRANSFORMS` (`reference`, `demo`, `full`).
      class_names: one name per class, by index; None where unknown.
      source: where the contract was read, for messages (e.g. `runs/demo/config.json`).
    """

    image_size: int = 224
    transform: str = "demo"
    class_names: tuple[str, ...] | None = None
    source: str = "the release's tools (demo transform at 224)"

    def __post_init__(self) -> None:
        preprocessing.get_transform(self.transform)  # an unknown name is a ValueError naming the known ones
        if self.image_size < 1:
            raise ValueError(f"image_size must be positive, got {self.image_size}")

    def to_json(self) -> dict[str, Any]:
        """The JSON form (without `source`): what an export stores."""
        return {
            "image_size": self.image_size,
            "transform": self.transform,
            "class_names": None if self.class_names is None else list(self.class_names),
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any], *, source: str) -> InputContract:
        """The contract `to_json` wrote.

        Raises:
          ValueError: a field is missing or has a bad value (naming `source`).
        """
        try:
            names = value.get("class_names")
            return cls(
                image_size=int(value["image_size"]),
                transform=str(value["transform"]),
                class_names=None if names is None else tuple(str(n) for n in names),
                source=source,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{source}: not an input contract ({e})") from None

    def settings(self, *, transform: str | None = None, image_size: int | None = None) -> tuple[str, int]:
        """(transform, image size) to use: the contract's, or what the caller asked for instead.

        A size other than the network's is allowed (the released ResNets were also evaluated at 299) but
        warned about: it is the usual way to get poor scores without an error. Another transform is
        logged.
        """
        if image_size is not None and image_size != self.image_size:
            logging.warning(
                "image size %d asked for, but the network expects %d (%s): its scores may be poor",
                image_size,
                self.image_size,
                self.source,
            )
        if transform is not None and transform != self.transform:
            logging.info(
                "transform %s asked for; the network's is %s (%s)", transform, self.transform, self.source
            )
        return transform or self.transform, image_size or self.image_size


RELEASE = InputContract()


def read_class_names(path: str | os.PathLike[str]) -> list[str]:
    """Class names, one per line, line i = class i (`class_names.txt`).

    Raises:
      ValueError: the file cannot be read.
    """
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read class names {os.fspath(path)}: {e}") from None


def from_run_dir(folder: str, *, step: int | None = None) -> InputContract | None:
    """The contract of a checkpoint in `folder` from training's `config.json`, or None without one.

    Args:
      folder: a run directory (its `config.json` and optional `class_names.txt`).
      step: the checkpoint's step (`ckpt-N`): the size of its image-size phase; None: the last phase's.
    """
    path = os.path.join(folder, RUN_CONFIG_FILE)
    config = fileio.read_json(path)
    if not isinstance(config, dict):
        return None
    # Grouped (training/config.py's parts) or, written before they were, at the top.
    image_sizes = (config.get("schedule") if isinstance(config.get("schedule"), dict) else {}).get(
        "image_sizes", config.get("image_sizes")
    )
    if image_sizes is None:
        return None
    try:
        sizes = sorted((int(start), int(size)) for start, size in image_sizes)
        # As the loop evaluates: ckpt-N was trained on steps 0..N-1, so its size is the one of step N - 1.
        trained = [size for start, size in sizes if step is None or start <= max(step - 1, 0)]
        transform = str(config.get("data", {}).get("eval_transform", RELEASE.transform))
    except (TypeError, ValueError, AttributeError):
        logging.warning("%s holds no usable image sizes; using the release's input contract", path)
        return None
    names_path = os.path.join(folder, CLASS_NAMES_FILE)
    names = tuple(read_class_names(names_path)) if os.path.isfile(names_path) else None
    return InputContract(image_size=trained[-1], transform=transform, class_names=names, source=path)


def checkpoint_step(prefix: str) -> int | None:
    """N of a checkpoint prefix `.../ckpt-N` (None for another name)."""
    match = _STEP.search(prefix)
    return int(match.group(1)) if match else None


def read_keras_file(path: str | os.PathLike[str]) -> InputContract | None:
    """The contract stored in a `.keras` file by `write_keras_file`; None for a file without one.

    Raises:
      ValueError: the member is there but is not a contract.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            if KERAS_MEMBER not in archive.namelist():
                return None
            value = json.loads(archive.read(KERAS_MEMBER).decode("utf-8"))
    except (zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{os.fspath(path)}: unreadable {KERAS_MEMBER} ({e})") from None
    return InputContract.from_json(value, source=f"{os.fspath(path)}:{KERAS_MEMBER}")


def write_keras_file(path: str | os.PathLike[str], contract: InputContract) -> None:
    """Adds `contract` to a `.keras` file (a zip) as the member `input_contract.json`, atomically.

    Keras' loader reads only the members it knows (`config.json`, `metadata.json`, the weights), so the
    file loads as before, with Keras alone.
    """
    path = os.fspath(path)
    with fileio.atomic_path(path) as temp:
        with zipfile.ZipFile(path) as source, zipfile.ZipFile(temp, "w", zipfile.ZIP_DEFLATED) as target:
            for item in source.infolist():
                if item.filename != KERAS_MEMBER:
                    target.writestr(item, source.read(item.filename))
            target.writestr(KERAS_MEMBER, json.dumps(contract.to_json(), indent=1))


def check_class_names(contract: InputContract, num_classes: int) -> InputContract:
    """`contract`, without its class names (with a warning) when their count is not the head's."""
    if contract.class_names is None or len(contract.class_names) == num_classes:
        return contract
    logging.warning(
        "%s names %d classes but the head has %d: the names are not used",
        contract.source,
        len(contract.class_names),
        num_classes,
    )
    return dataclasses.replace(contract, class_names=None)


def with_class_names(contract: InputContract, names: Sequence[str] | None) -> InputContract:
    """`contract` with `names` (when given) as its class names."""
    return contract if names is None else dataclasses.replace(contract, class_names=tuple(names))
