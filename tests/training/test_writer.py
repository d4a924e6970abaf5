"""The background writer of epoch outputs: snapshots, order, errors."""

import threading
import time

import pytest
import torch

from medmamba.training.writer import BackgroundWriter, host_snapshot


def test_snapshot_is_independent_of_later_training():
    weight = torch.ones(3)
    state = {"model": {"w": weight}, "log": [{"epoch": 1}], "pair": (weight, 2), "name": "x"}
    snapshot = host_snapshot(state)
    weight.add_(1)
    state["log"][0]["epoch"] = 99
    assert torch.equal(snapshot["model"]["w"], torch.ones(3))
    assert snapshot["log"] == [{"epoch": 1}] and snapshot["name"] == "x"
    assert isinstance(snapshot["pair"], tuple) and torch.equal(snapshot["pair"][0], torch.ones(3))


@pytest.mark.parametrize("background", [True, False])
def test_writes_run_one_at_a_time_in_order(background):
    done, threads = [], set()

    def write(index):
        time.sleep(0.02 if index == 0 else 0)
        done.append(index)
        threads.add(threading.current_thread().name)

    writer = BackgroundWriter(background)
    for index in range(4):
        writer.submit(write, index)
    writer.close()
    assert done == [0, 1, 2, 3]
    assert (threading.current_thread().name in threads) is not background


def test_an_error_in_the_thread_reaches_the_caller():
    writer = BackgroundWriter()

    def fail():
        raise OSError("disk full")

    writer.submit(fail)
    with pytest.raises(OSError, match="disk full"):
        writer.submit(lambda: None)
    writer.close()
