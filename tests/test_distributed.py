"""training/distributed.py: the single-process implementation, and 2 real Gloo ranks under horovodrun."""

import json
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from tests import hvd
from training import distributed


def test_single_process_is_identity():
    dist = distributed.init(use_horovod=False)
    assert (dist.size, dist.rank, dist.local_rank, dist.is_chief) == (1, 0, 0, True)
    v = tf.Variable([1.0, 2.0])
    dist.broadcast_variables([v])
    np.testing.assert_array_equal(v.numpy(), [1.0, 2.0])
    (g,) = dist.average_gradients([tf.constant([3.0])])
    np.testing.assert_array_equal(g.numpy(), [3.0])
    np.testing.assert_array_equal(dist.allreduce_sum(tf.constant([4.0])).numpy(), [4.0])


def test_auto_mode_without_horovodrun_is_single_process(monkeypatch):
    for var in ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert distributed.init().size == 1


@pytest.mark.horovod
def test_two_ranks(tmp_path, repo_root):
    worker = pathlib.Path(__file__).with_name("hvd_distributed_worker.py")
    hvd.run_two_ranks([str(worker), str(tmp_path)], cwd=repo_root, timeout=300)
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert (r0["is_chief"], r1["is_chief"]) == (True, False)
    # Broadcast: rank 1 holds rank 0's initial values (drawn from seed 100).
    rng = np.random.default_rng(100)
    expected = [rng.normal(size=(3, 4)), rng.normal(size=(5,))]
    for r in (r0, r1):
        for got, want in zip(r["variables"], expected, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-6)
    # Gradient averaging = mean of the per-rank gradients (1 and 2 -> 1.5).
    for r in (r0, r1):
        np.testing.assert_allclose(r["averaged"][0], np.full((3, 4), 1.5))
        np.testing.assert_allclose(r["averaged"][1], np.arange(5.0) * 1.5)
        np.testing.assert_allclose(r["metric"], [1.0 + 2.0, 0.0 + 10.0])
        assert r["mean"] == pytest.approx(1.0)
