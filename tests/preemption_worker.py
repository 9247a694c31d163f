"""Worker for tests/test_run_reliability.py: a tiny run that gets SIGTERM after step 5 and a second SIGTERM
while it saves that step (after part of ckpt-5's data is on disk), as an impatient scheduler would.

    python tests/preemption_worker.py DATA_DIR NUM_CLASSES MODEL_DIR

The second signal must end the process at once (status -SIGTERM), leaving ckpt-4 the latest.
"""

import os
import signal
import sys
import types

from tests import tiny_runs
from training import checkpoints, loop, train_step


def main(data_dir: str, num_classes: int, model_dir: str) -> None:
    data = types.SimpleNamespace(data_dir=data_dir, num_classes=num_classes)
    config = tiny_runs.config(data, model_dir, train_steps=8)
    step_call, save = train_step.TrainStep.__call__, checkpoints.save_run_state

    def call(self, images, labels, **kwargs):
        logs = step_call(self, images, labels, **kwargs)
        if int(self.global_step.numpy()) == 5:
            os.kill(os.getpid(), signal.SIGTERM)  # the first signal: save step 5 and stop
        return logs

    def save_run_state(manager, *, model_dir, step):
        if step == 5:
            with open(os.path.join(model_dir, "ckpt-5.data-00000-of-00001"), "wb") as f:
                f.write(b"\0" * 64)  # part of the data is written ...
            print("second signal sent during the save of ckpt-5", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGTERM)  # ... when the second signal arrives
        return save(manager, model_dir=model_dir, step=step)

    train_step.TrainStep.__call__ = call
    checkpoints.save_run_state = save_run_state
    loop.train(config)
    print("the run went on after the second signal", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
