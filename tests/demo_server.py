"""``zsad demo`` in a subprocess on a loopback port, for the tests that talk to a real server (browser, soak)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def running_demo(port: int, log_path: Path, extra: Sequence[str] = (), env: dict[str, str] | None = None,
                 start_s: float = 60.0) -> Iterator[tuple[str, subprocess.Popen]]:
    """Start ``zsad demo --backbone tiny-random`` on 127.0.0.1:``port``; yield its URL and process; always stop it."""
    log = open(log_path, "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "zsad", "demo", "--backbone", "tiny-random", "--image-size", "112", "--device", "cpu",
         "--host", "127.0.0.1", "--port", str(port), *extra],
        stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", **(env or {})})
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + start_s
        while True:
            if process.poll() is not None:
                pytest.fail(f"zsad demo exited with {process.returncode}: "
                            f"{log_path.read_text(errors='replace')[-2000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"zsad demo did not answer within {start_s:.0f} s")
            time.sleep(0.3)
        yield url, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
