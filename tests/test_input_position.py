"""The training input's saved position (#22 item 1): an order that is a function of the position (a
stateless window shuffle, seeded file orders per epoch), a position saved as a count of elements (a few
hundred bytes, not the buffers' JPEGs) from which the stream is rebuilt exactly, and a run state that only
the chief reads on resume."""

import json
import types

import numpy as np
import pytest
import tensorflow as tf

from models import resnet
from tests import datasets, tiny_runs
from training import checkpoints, distributed, input_pipeline, resume


def test_the_window_shuffle_permutes_each_window_by_its_seed():
    ds = tf.data.Dataset.range(20)
    first = list(input_pipeline.window_shuffle(ds, 8, seed=3).as_numpy_iterator())
    again = list(input_pipeline.window_shuffle(ds, 8, seed=3).as_numpy_iterator())
    other = list(input_pipeline.window_shuffle(ds, 8, seed=4).as_numpy_iterator())
    assert first == again and first != other
    # An element stays in its window: what a shuffle buffer of 8 would mix, and nothing across windows.
    assert [sorted(first[i : i + 8]) for i in (0, 8, 16)] == [
        list(range(i, min(i + 8, 20))) for i in (0, 8, 16)
    ]
    assert first[:8] != list(range(8))
    # Taken up at window 1 (a restored position), the windows are permuted as in the whole stream.
    later = input_pipeline.window_shuffle(tf.data.Dataset.range(8, 20), 8, seed=3, first_window=1)
    assert list(later.as_numpy_iterator()) == first[8:]


def test_the_epochs_of_the_files_come_in_a_new_seeded_order_each():
    names = tf.constant([f"f{i}" for i in range(6)])
    ids = tf.range(6, dtype=tf.int64)
    ds = input_pipeline._epochs_in_seeded_order((names, ids), seed=1).take(18)
    order = [int(i) for _, i in ds.as_numpy_iterator()]
    epochs = [order[:6], order[6:12], order[12:]]
    assert all(sorted(e) == list(range(6)) for e in epochs)
    assert len({tuple(e) for e in epochs}) == 3
    later = input_pipeline._epochs_in_seeded_order((names, ids), seed=1, first=8).take(10)
    assert [int(i) for _, i in later.as_numpy_iterator()] == order[8:]


# Records per file: more files than a rank reads at once (8), uneven, one empty.
_COUNTS = (3, 7, 1, 5, 0, 9, 4, 6, 3, 8, 2, 5)


def _record_files(folder, counts):
    paths = []
    for i, count in enumerate(counts):
        path = str(folder / f"part-{i:02d}.tfrecord")
        with tf.io.TFRecordWriter(path) as writer:
            for j in range(count):
                writer.write(f"{i}:{j}".encode())
        paths.append(path)
    return tuple(paths)


def _origins(ds, n):
    return [int(origin) for _, origin in ds.take(n).as_numpy_iterator()]


@pytest.mark.parametrize(
    "num_shards,shard_index,counts",
    [
        (1, 0, "manifest"),  # 12 files, 8 open at a time, one of them empty
        (1, 0, "counted"),  # a release folder: the counts come from the record headers
        (1, 0, "read"),  # no counts (remote storage): the records before are read and dropped
        (2, 1, "manifest"),  # 6 files
        (20, 13, "manifest"),  # a file shared by 2 ranks, every 2nd record from record 1
    ],
)
def test_a_stream_started_at_a_position_is_the_rest_of_the_stream_from_0(
    tmp_path, monkeypatch, num_shards, shard_index, counts
):
    files = _record_files(tmp_path, _COUNTS)
    source = input_pipeline.RecordFiles(
        num_classes=2,
        record_label_format="int64",
        record_files=files,
        record_counts=_COUNTS if counts == "manifest" else (),
    )
    if counts == "read":
        monkeypatch.setattr(input_pipeline.RecordFiles, "_rank_counts", lambda *a, **k: None)
    kw = dict(num_shards=num_shards, shard_index=shard_index, training=True, seed=3)
    ids = range(shard_index, len(files), num_shards) if num_shards <= len(files) else [shard_index % 12]
    per_epoch = sum(_COUNTS[i] for i in ids) if num_shards <= len(files) else len(range(1, _COUNTS[1], 2))
    starts = {1, 5, per_epoch - 1, per_epoch, per_epoch + 2, 2 * per_epoch + 5, 3 * per_epoch - 1}
    full = _origins(source.records(**kw), max(starts) + 12)
    for start in sorted(starts):
        assert _origins(source.records(start=start, **kw), 12) == full[start : start + 12], start


def test_a_restore_deep_in_a_later_epoch_opens_no_file_it_skips(tmp_path):
    """40 files of 3 records, read 8 at a time: at 30 records into epoch 3 the first 8 files of that epoch
    are done. One of them is deleted: the restored stream never opens it (reading the records before the
    position, as a restore without counts does, would fail on it)."""
    counts = (3,) * 40
    source = input_pipeline.RecordFiles(
        num_classes=2,
        record_label_format="int64",
        record_files=_record_files(tmp_path, counts),
        record_counts=counts,
    )
    kw = dict(num_shards=1, shard_index=0, training=True, seed=5)
    start = 3 * 120 + 30
    full = _origins(source.records(**kw), start + 20)
    file_of = [origin // input_pipeline._ORIGIN_STRIDE for origin in full]
    done = {f for f in file_of[3 * 120 : 3 * 120 + 24]}  # epoch 3's first 8 files, 3 records each
    assert len(done) == 8 and not done & set(file_of[start - 6 :])
    skipped = sorted(done)[0]
    (tmp_path / f"part-{skipped:02d}.tfrecord").unlink()
    assert _origins(source.records(start=start, **kw), 20) == full[start:]
    with pytest.raises(tf.errors.NotFoundError):  # what reading the skipped records would meet
        _origins(source.records(**kw), start)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return datasets.multilabel(tmp_path_factory.mktemp("data"), num_train=48, num_val=8)


def _assert_same_batches(got, expected):
    for (images, labels), (want_images, want_labels) in zip(got, expected, strict=True):
        np.testing.assert_array_equal(images.numpy(), want_images.numpy())
        np.testing.assert_array_equal(labels.numpy(), want_labels.numpy())


def test_the_saved_position_is_a_few_hundred_bytes_and_continues_with_exactly_the_next_batches(
    data, tmp_path
):
    source = input_pipeline.tfrecord_source(data.data_dir, "train", num_classes=data.num_classes)

    def make(start=0):
        return input_pipeline.train_dataset(
            source, batch_size=4, image_size=32, seed=7, shuffle_buffer=16, start=start
        )

    iterator = iter(make())
    for _ in range(5):
        next(iterator)
    meta = checkpoints.InputMeta(step=5, num_ranks=1, global_batch=4, input_seed=7, phase=0, elements=5 * 4)
    kw = dict(model_dir=str(tmp_path), rank=0, step=5)
    checkpoints.save_input_position(keep=2, meta=meta, **kw)
    expected = [next(iterator) for _ in range(20)]  # across two ends of the 48-record epoch
    folder = tmp_path / "input" / "rank-0"
    saved = sum(f.stat().st_size for f in folder.iterdir())
    assert saved < 1_000 and json.loads((folder / "ckpt-5.json").read_text())["elements"] == 20
    start = checkpoints.restore_input_position(phase=0, **kw)
    # Element 20: window 1 of 16 records taken up at record 16, its first 4 records dropped unparsed.
    assert start == 20
    restored = iter(make(start))
    _assert_same_batches([next(restored) for _ in range(20)], expected)


def test_a_position_of_an_earlier_version_or_another_phase_restarts_the_input(tmp_path, caplog):
    kw = dict(model_dir=str(tmp_path), rank=0, step=5)
    meta = checkpoints.InputMeta(step=5, num_ranks=1, global_batch=4, input_seed=7, phase=1, elements=20)
    checkpoints.save_input_position(keep=2, meta=meta, **kw)
    assert checkpoints.restore_input_position(phase=1, **kw) == 20
    assert checkpoints.restore_input_position(phase=0, **kw) == 0
    old = {"step": 5, "num_ranks": 1, "global_batch": 4, "input_seed": 7, "saved": True}
    (tmp_path / "input" / "rank-0" / "ckpt-5.json").write_text(json.dumps(old))
    assert checkpoints.input_position_problem(**kw) is None
    assert checkpoints.restore_input_position(phase=1, **kw) == 0
    (tmp_path / "input" / "rank-0" / "ckpt-5.json").write_text('{"step": 5, "num_r')
    assert "not a readable input position" in checkpoints.input_position_problem(**kw)


def test_a_tfds_stream_resumes_exactly(tmp_path):
    """TFDS sources (fine-tuning on imagenet2012) take up their position by reading and dropping the
    examples before it, still unparsed; the mock's 12 examples make the position cross an epoch."""
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12):
        source = input_pipeline.tfds_source("imagenet2012", "train", num_classes=1000)

        def make(start=0):
            return input_pipeline.train_dataset(
                source, batch_size=4, image_size=32, seed=2, shuffle_buffer=8, start=start
            )

        expected = list(make().take(6))[3:]
        _assert_same_batches(list(make(12).take(3)), expected)


class _FakeRank(distributed.Distributed):
    """Rank `rank` of 2 whose collectives see `chief_refused` as the chief's contribution."""

    size = 2

    def __init__(self, rank: int, chief_refused: int = 0):
        self.rank = rank
        self._chief = chief_refused

    def allreduce_sum(self, tensor):
        return tf.convert_to_tensor(tensor) + (self._chief if self.rank else 0)


@pytest.mark.parametrize("rank,reads", [(0, 1), (1, 0)])
def test_only_the_chief_reads_the_run_state_on_resume(tmp_path, monkeypatch, rank, reads):
    fake_data = types.SimpleNamespace(num_classes=3, data_dir=str(tmp_path))
    config = tiny_runs.config(fake_data, tmp_path, per_rank_batch=4)
    model = resnet.build_resnet(14, 3, base_width=4)
    path = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt-2"))
    counted = []
    real_read = tf.train.Checkpoint.read
    monkeypatch.setattr(tf.train.Checkpoint, "read", lambda self, p: counted.append(p) or real_read(self, p))
    real_mismatch = checkpoints.model_mismatch
    monkeypatch.setattr(checkpoints, "model_mismatch", lambda *a: counted.append(a[0]) or real_mismatch(*a))
    found = resume.Resume(path, 2, 2, config.schedule.per_rank_batch * 2, config.runtime.seed, True)
    plan = resume.restore(
        found,
        checkpoint=tf.train.Checkpoint(model=model),
        model=model,
        global_step=tf.Variable(2, dtype=tf.int64),
        config=config,
        dist=_FakeRank(rank),
    )
    assert plan.restore and len(counted) == 2 * reads  # the chief: the architecture check and the read


def test_the_other_ranks_stop_when_the_chief_cannot_read_the_run_state(tmp_path):
    fake_data = types.SimpleNamespace(num_classes=3, data_dir=str(tmp_path))
    config = tiny_runs.config(fake_data, tmp_path, per_rank_batch=4)
    model = resnet.build_resnet(14, 3, base_width=4)
    found = resume.Resume(str(tmp_path / "ckpt-2"), 2, 2, 8, config.runtime.seed, True)
    kw = dict(checkpoint=tf.train.Checkpoint(model=model), model=model, config=config)
    with pytest.raises(ValueError, match=r"ckpt-2: the chief could not read it"):
        resume.restore(found, global_step=tf.Variable(2, tf.int64), dist=_FakeRank(1, chief_refused=1), **kw)
    with pytest.raises(ValueError, match=r"cannot read the checkpoint .*ckpt-2: it is gone"):
        resume.restore(found, global_step=tf.Variable(2, tf.int64), dist=_FakeRank(0), **kw)
