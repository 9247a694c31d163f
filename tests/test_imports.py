"""The packages and entry scripts import without parsing flags, defining them, or touching the network."""

import subprocess
import sys

CHECK = """
import socket
def no_network(*args, **kwargs):
    raise AssertionError("network access at import time")
socket.socket.connect = no_network
import data, models, training
import data.records.schema, data.tfrecord, data.pixels.preprocessing, data.demo, models.resnet, models.losses
import training.loop, training.cli, training.train_step, training.evaluation, training.distributed
import train, finetune, evaluate
from absl import flags
assert not flags.FLAGS.is_parsed()
defined = set(flags.FLAGS)
for name in ("recipe", "ckpt", "model_dir", "checkpoint", "image_list", "output_dir"):
    assert name not in defined, name
print("ok")
"""


def test_import_is_side_effect_free(repo_root):
    proc = subprocess.run(
        [sys.executable, "-c", CHECK], cwd=repo_root, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "ok"
