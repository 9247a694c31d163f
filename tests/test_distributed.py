"""training/distributed.py: the single-process implementation, and 2 real Gloo ranks under horovodrun."""

import json

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
def test_two_ranks(tmp_path_factory):
    out = hvd.worker_outputs(tmp_path_factory)  # tests/hvd_distributed_worker.py ran on 2 ranks
    r0 = json.loads((out / "distributed_rank0.json").read_text())
    r1 = json.loads((out / "distributed_rank1.json").read_text())
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


@pytest.mark.parametrize("local_rank", range(8))
def test_eight_gpus_one_per_local_rank(local_rank):
    plan = distributed.plan_devices(8, local_rank=local_rank, local_size=8)
    assert plan.gpu_index == local_rank
    assert f"GPU {local_rank} of 8" in plan.description


def test_fewer_ranks_than_gpus_use_the_first_ones():
    assert [distributed.plan_devices(8, local_rank=r, local_size=4).gpu_index for r in range(4)] == [
        0,
        1,
        2,
        3,
    ]


def test_more_ranks_than_gpus_is_a_one_line_error():
    with pytest.raises(ValueError, match="9 ranks on this host but only 8 GPU") as e:
        distributed.plan_devices(8, local_rank=8, local_size=9)
    assert "\n" not in str(e.value)


def test_launcher_that_gives_each_rank_one_gpu():
    # SLURM --gpus-per-task=1: every rank sees exactly its own GPU as GPU 0.
    for rank in range(4):
        plan = distributed.plan_devices(1, local_rank=rank, local_size=4, cuda_visible_devices=str(rank))
        assert plan.gpu_index == 0
    with pytest.raises(ValueError):  # one GPU shared by 4 ranks without a per-rank assignment
        distributed.plan_devices(1, local_rank=0, local_size=4)


def test_no_gpu_is_cpu():
    plan = distributed.plan_devices(0, local_rank=1, local_size=2)
    assert plan.gpu_index is None and plan.description.startswith("CPU")


def test_pin_devices_on_this_cpu_machine(monkeypatch):
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind: [])
    assert distributed.pin_devices(distributed.Distributed()).gpu_index is None


def test_pin_devices_sets_the_visible_gpu_and_memory_growth(monkeypatch):
    fake_gpus = [f"/physical_device:GPU:{i}" for i in range(8)]
    calls = []
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind: fake_gpus if kind == "GPU" else [])
    monkeypatch.setattr(
        tf.config, "set_visible_devices", lambda devices, kind: calls.append(("visible", devices))
    )
    monkeypatch.setattr(
        tf.config.experimental, "set_memory_growth", lambda device, on: calls.append(("growth", device, on))
    )
    dist = distributed.Distributed()
    dist.local_rank, dist.local_size, dist.rank = 5, 8, 13
    assert distributed.pin_devices(dist).gpu_index == 5
    assert calls == [("visible", [fake_gpus[5]]), ("growth", fake_gpus[5], True)]
