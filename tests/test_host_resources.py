"""Per-host resources (#22 item 4): each rank's thread pools are its share of the host's cores."""

import pytest

from tests import datasets
from training import host_resources, input_pipeline


@pytest.mark.parametrize(
    "cpus,local_size,flags,expected",
    [
        (128, 8, {}, (16, 16, 16)),  # 8 GPUs of a 128-core host
        (128, 1, {}, (128, 128, 128)),  # one rank per host: every core, as before
        (8, 3, {}, (2, 2, 2)),  # rounded down: 2 cores left to Horovod's thread and the OS
        (4, 16, {}, (1, 1, 1)),  # more ranks than cores: at least one thread each
        (128, 8, {"intra_op_threads": 1}, (16, 1, 16)),  # a flag wins
        (128, 8, {"inter_op_threads": 2}, (16, 16, 2)),
        (128, 8, {"data_threads": 24}, (24, 16, 16)),
    ],
)
def test_the_pools_are_the_cores_divided_by_the_ranks_of_the_host(cpus, local_size, flags, expected):
    plan = host_resources.plan_threads(cpus, local_size, **flags)
    assert (plan.data, plan.intra_op, plan.inter_op) == expected


def test_the_training_input_gets_its_ranks_share(tmp_path, monkeypatch):
    data = datasets.multilabel(tmp_path, num_train=8, num_val=2)
    source = input_pipeline.tfrecord_source(data.data_dir, "train", num_classes=data.num_classes)
    monkeypatch.setattr(host_resources, "cpu_count", lambda: 64)
    share = host_resources.plan_threads(host_resources.cpu_count(), 8).data  # a fake local size of 8
    kw = dict(batch_size=2, image_size=32, seed=0, shuffle_buffer=4)
    ds = input_pipeline.train_dataset(source, threads=share, **kw)
    assert ds.options().threading.private_threadpool_size == 8
    assert input_pipeline.train_dataset(source, **kw).options().threading.private_threadpool_size == 64


def test_op_pools_cannot_change_once_tensorflow_runs_which_is_an_error_only_when_asked():
    import tensorflow as tf

    tf.constant(1.0) + 1.0  # TensorFlow has started
    plan = host_resources.plan_threads(8, 2)
    if host_resources.apply_op_pools(plan):
        pytest.skip("this TensorFlow still accepts new pool sizes")
    with pytest.raises(ValueError, match="intra_op_threads=4 cannot be applied: TensorFlow already started"):
        host_resources.apply_op_pools(plan, given=("intra_op",))
    with pytest.raises(ValueError, match="^intra_op_threads=4, inter_op_threads=4 cannot be applied"):
        host_resources.apply_op_pools(plan, given=("intra_op", "inter_op"))
