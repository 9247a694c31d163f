"""tools/benchmark.py overlap at toy size on one process (in this process): its JSON lines and what they
contain, and the socket pacing behind ``--link_gbits``."""

import json
import socket
import threading
import time

from tools import benchmark
from tools.benchmarks import overlap


def test_overlap_reports_bytes_exposed_time_and_host_wait(capsys):
    benchmark.run(
        [
            "overlap",
            "--depth=14",
            "--base_width=4",
            "--num_classes=10",
            "--batch_size=2",
            "--image_size=32",
            "--steps=1",
            "--warmup=1",
            "--allreduce_dtypes=fp32,fp16",
        ]
    )
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    steps = [x for x in lines if x["benchmark"] == "overlap/step"]
    assert [(x["segments"], x["wire"]) for x in steps] == [(1, "fp32"), (4, "fp32"), (1, "fp16"), (4, "fp16")]
    fp32, fp16 = steps[0]["gradient_mb_per_step"], steps[2]["gradient_mb_per_step"]
    assert fp16 == round(fp32 / 2, 2) or abs(fp16 - fp32 / 2) <= 0.01  # half the bytes on the wire
    assert all(x["step_ms"] > 0 and x["no_allreduce_ms"] > 0 and x["comm_ms"] > 0 for x in steps)
    wait = [x for x in lines if x["benchmark"] == "overlap/host_wait"]
    assert len(wait) == 1 and wait[0]["check_every_step_ms"] > 0 and wait[0]["check_when_logging_ms"] > 0
    machine = [x for x in lines if x["benchmark"] == "overlap/machine"]
    assert machine[0]["link_gbits"] == 0 and machine[0]["paced_sockets"] == 0


def _send_seconds(sender: socket.socket, receiver: socket.socket, nbytes: int) -> float:
    """Seconds to push `nbytes` from `sender` to `receiver` (read on a thread)."""

    def drain():
        got = 0
        while got < nbytes:
            got += len(receiver.recv(1 << 20))

    reader = threading.Thread(target=drain)
    reader.start()
    start = time.perf_counter()
    sender.sendall(b"x" * nbytes)
    reader.join()
    return time.perf_counter() - start


def test_paced_sockets_send_at_the_link_rate():
    listener = socket.create_server(("127.0.0.1", 0))
    sender = socket.create_connection(listener.getsockname())
    receiver, _ = listener.accept()
    unix_a, unix_b = socket.socketpair()  # not TCP: left alone
    try:
        assert overlap.pace_tcp_sockets(0.2) >= 3  # listener, sender, receiver (pytest may hold more)
        assert unix_a.getsockopt(socket.SOL_SOCKET, overlap.SO_MAX_PACING_RATE) != 0.2e9 / 8
        assert sender.getsockopt(socket.SOL_SOCKET, overlap.SO_MAX_PACING_RATE) == int(0.2e9 / 8)
        # 5 MB at 0.2 Gbit/s take 0.2 s; loopback alone moves them in a few ms.
        assert _send_seconds(sender, receiver, 5_000_000) > 0.1
    finally:
        for s in (listener, sender, receiver, unix_a, unix_b):
            s.close()
