"""README: `tensorboard --logdir WORKDIR` (from the tensorboard extra) shows a run's metrics."""
import json
import shutil
import subprocess
import time
import urllib.request

import portpicker
import pytest

from rdance.train.metrics import MetricWriter


@pytest.mark.skipif(shutil.which("tensorboard") is None, reason="the tensorboard extra is not installed")
def test_tensorboard_serves_a_runs_metrics(tmp_path):
    writer = MetricWriter(str(tmp_path))
    writer.write(1, {"loss": 2.0})
    writer.write(2, {"loss": 1.0})
    writer.close()
    port = portpicker.pick_unused_port()
    server = subprocess.Popen(["tensorboard", "--logdir", str(tmp_path), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        scalars = wait_for_json(f"http://localhost:{port}/data/plugin/scalars/scalars?run=tensorboard&tag=loss",
                                server, timeout_s=120)
        assert [(step, value) for _, step, value in scalars] == [(1, 2.0), (2, 1.0)]
    finally:
        server.terminate()
        server.wait(timeout=30)


def wait_for_json(url, server, timeout_s):
    """The server's answer once it has loaded the events (it reads them a moment after start)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert server.poll() is None, server.stderr.read()
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                data = json.loads(response.read())
            if data:
                return data
        except (OSError, ValueError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"tensorboard did not serve {url} within {timeout_s} s")
