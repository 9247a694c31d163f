"""One 2-rank Horovod launch for the tests of training/distributed.py, the loss and TrainStep across ranks.

Run as `horovodrun --gloo -np 2 python -m tests.hvd_worker OUT` (tests/hvd.py `worker_outputs` does, once
per session). Each launch pays two TensorFlow imports and a Horovod init, so the parts share one: each
writes its own files to OUT, which tests/test_distributed.py, test_losses_distributed.py,
test_train_distributed.py and test_overlap_distributed.py read.
"""

import sys

from tests import hvd_distributed_worker, hvd_loss_worker, hvd_train_worker
from training import distributed


def main(out_dir: str) -> None:
    dist = distributed.init()
    for part in (hvd_distributed_worker, hvd_loss_worker, hvd_train_worker):
        part.run(dist, out_dir)


if __name__ == "__main__":
    main(sys.argv[1])
