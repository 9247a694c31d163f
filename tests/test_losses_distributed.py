"""AdaptiveMultiLabelLoss on 2 Horovod ranks equals one process on the concatenated batch.

Each rank holds half of every batch; the class status is summed across ranks, the negative draw comes from
the same seeded generator, and gradients and losses are averaged. Counters, class weights, the averaged
loss and the averaged gradients must equal a single-process run on the whole batches (fp32 tolerance).
"""

import json

import numpy as np
import pytest

from tests import hvd, hvd_loss_worker


def test_the_batches_need_the_cross_rank_sum():
    # Some classes are positive in only one rank's half: without the all-reduce the ranks would disagree.
    x, labels = hvd_loss_worker.batch(0)
    half = hvd_loss_worker.BATCH // 2
    pos0 = (labels[:half] >= 0.7).any(axis=0)
    pos1 = (labels[half:] >= 0.7).any(axis=0)
    assert (pos0 != pos1).any()
    assert (labels == -1).any()


def test_local_half_alone_differs_from_the_global_batch():
    # Guards the comparison below: a rank that ignored the other rank would produce different counters.
    half = hvd_loss_worker.BATCH // 2
    local = hvd_loss_worker.run_steps(slice(0, half))
    whole = hvd_loss_worker.run_steps(slice(None))
    assert local["pos_count"] != whole["pos_count"]


@pytest.mark.horovod
def test_two_ranks_equal_one_process_on_the_concatenated_batch(tmp_path_factory):
    out = hvd.worker_outputs(tmp_path_factory)  # tests/hvd_loss_worker.py ran on 2 ranks
    expected = hvd_loss_worker.run_steps(slice(None))
    for rank in (0, 1):
        got = json.loads((out / f"loss_rank{rank}.json").read_text())
        for key in ("pos_count", "neg_count"):
            np.testing.assert_array_equal(got[key], expected[key], err_msg=f"rank {rank} {key}")
        np.testing.assert_allclose(got["weights"], expected["weights"], rtol=1e-6, err_msg=f"rank {rank}")
        np.testing.assert_allclose(got["loss"], expected["loss"], rtol=1e-5, err_msg=f"rank {rank} loss")
        for step, (g, e) in enumerate(zip(got["grads"], expected["grads"], strict=True)):
            for got_grad, want_grad in zip(g, e, strict=True):
                np.testing.assert_allclose(
                    got_grad, want_grad, rtol=1e-4, atol=1e-6, err_msg=f"rank {rank} step {step}"
                )
