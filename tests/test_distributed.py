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
        # Both ranks claimed GPU "0" of this host: both refuse, naming the two ranks.
        assert r["shared_gpu_error"].startswith("several ranks on one GPU: ranks 0, 1 on GPU 0 of ")
        assert "\n" not in r["shared_gpu_error"]


def test_gpu_identity_is_the_physical_gpu_the_plan_picks():
    plan = distributed.plan_devices(1, local_rank=3, local_size=8, cuda_visible_devices="3")
    assert distributed.gpu_identity(plan, "3") == "3"  # SLURM --gpus-per-task=1: each rank its own
    plan = distributed.plan_devices(8, local_rank=5, local_size=8)
    assert distributed.gpu_identity(plan, None) == "5"
    assert distributed.gpu_identity(plan, "7,6,5,4,3,2,1,0") == "2"
    uuid = "GPU-8c1e3b3a-0000-1111-2222-333344445555"
    assert distributed.gpu_identity(distributed.plan_devices(1, local_rank=0, local_size=1), uuid) == uuid
    assert distributed.gpu_identity(distributed.plan_devices(0, local_rank=0, local_size=2), None) is None


def test_shared_gpus_names_the_ranks_in_one_line():
    # CUDA_VISIBLE_DEVICES=0 exported to all 8 ranks of node2: every one of them plans "GPU 0".
    devices = [("node1", str(i)) for i in range(8)] + [("node2", "0")] * 8
    problem = distributed.shared_gpus(devices)
    assert problem.startswith(
        "several ranks on one GPU: ranks 8, 9, 10, 11, 12, 13, 14, 15 on GPU 0 of node2;"
    )
    assert "\n" not in problem
    # The same GPU number on two hosts, and CPU ranks sharing a host, are fine.
    assert distributed.shared_gpus([("a", "0"), ("b", "0"), ("c", None), ("c", None)]) is None
    many = distributed.shared_gpus([(f"h{i}", "0") for i in range(6) for _ in range(2)])
    assert many.count("on GPU 0 of") == 4 and "(and 2 more GPUs)" in many


def test_check_distinct_gpus_on_one_process():
    distributed.check_distinct_gpus(distributed.Distributed(), "0")  # one rank cannot share


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
