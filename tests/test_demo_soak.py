"""A short soak of ``zsad demo``: 60 scoring requests from independent visitors (clip on one image, musc on six, bad
uploads), four at a time, against a server capped at 8 sessions. Every request is answered, the live sessions never
exceed the cap, evicted sessions' folders are gone (and their visitors are told to score again), and the server's
resident memory after warm-up grows by less than :data:`RSS_GROWTH_BOUND`.

The bound: after warm-up the server keeps at most 8 small sessions and gradio's per-visitor page state (about 25 kB
each); 40 more requests add about 1 MB. Before the memory work the same requests grew it by 2-5 MB each (sessions
held full-size maps for an hour, and freed maps stayed resident in glibc's per-thread arenas).
"""

from __future__ import annotations

import json
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from demo_server import running_demo

pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")
pytestmark = [pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*"),
              pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the server's RSS in /proc")]

MAX_SESSIONS = 8
ROUNDS, PER_ROUND, WARM_UP_ROUNDS = 6, 10, 2  # 60 requests; RSS is compared from the end of warm-up
RSS_GROWTH_BOUND = 48 * 2**20


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line")


def health(url: str) -> dict:
    with urllib.request.urlopen(url + "health", timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture
def images(tmp_path):
    from zsad.data.synthetic import make_sample

    paths = []
    for i in range(6):
        path = tmp_path / f"part_{i}.png"
        make_sample("weave", "hole" if i % 2 else None, size=160, rng=np.random.default_rng(i)).image.save(path)
        paths.append(str(path))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    return paths, str(bad)


def test_soak(tmp_path, loopback_port, images):
    paths, bad = images
    work = tmp_path / "server-tmp"  # the server's temporary folders (session folders) land here
    work.mkdir()
    extra = ("--max-sessions", str(MAX_SESSIONS), "--session-ttl", "600")
    with running_demo(loopback_port, tmp_path / "server.log", extra, env={"TMPDIR": str(work)}) as (url, process):

        def visit(k: int) -> str:
            """One visitor, its own client (session); returns what became of its scoring request."""
            client = gradio_client.Client(url, verbose=False, download_files=False)
            kind = k % 4
            try:
                if kind == 1:
                    _, table, *_ = client.predict([gradio_client.handle_file(p) for p in paths], [], "fabric",
                                                  "musc", None, 0.5, api_name="/score")
                    assert len(table["data"]) == 6 and all(row[-1] == "" for row in table["data"])
                elif kind == 3:  # a bad upload beside a good one: the bad one is a row with its error
                    _, table, *_ = client.predict([gradio_client.handle_file(bad), gradio_client.handle_file(paths[0])],
                                                  [], "", "clip", None, 0.5, api_name="/score")
                    assert "not an image" in table["data"][0][-1] and table["data"][1][-1] == ""
                else:
                    _, table, *_ = client.predict([gradio_client.handle_file(paths[k % 6])], [], "fabric", "clip",
                                                  None, 0.5, api_name="/score")
                    gallery, table, _csv, status = client.predict(0.2, api_name="/rethreshold")
                    assert len(gallery) == 1 and "at threshold 0.20" in status
                return "ok"
            except gradio_client.exceptions.AppError as exc:  # answered, with a message for the visitor
                return f"message: {exc}"

        first = gradio_client.Client(url, verbose=False, download_files=False)
        first.predict([gradio_client.handle_file(paths[0])], [], "", "clip", None, 0.5, api_name="/score")
        answers, live, resident, folders = [], [], [], []
        with ThreadPoolExecutor(4) as pool:
            for r in range(ROUNDS):
                futures = [pool.submit(visit, k) for k in range(r * PER_ROUND, (r + 1) * PER_ROUND)]
                while not all(f.done() for f in futures):  # the cap holds while requests run, not only between
                    live.append(health(url)["sessions"])
                    time.sleep(0.2)
                answers += [f.result(timeout=120) for f in futures]
                live.append(health(url)["sessions"])
                resident.append(rss(process.pid))
                folders.append(len(list(work.glob("zsad-demo-*/session-*"))))

        # every request answered, and answered with results (nothing was refused or failed)
        assert answers == ["ok"] * ROUNDS * PER_ROUND
        assert max(live) <= MAX_SESSIONS and live[-1] == MAX_SESSIONS
        # the folders of the 52 evicted sessions are gone: only the live sessions' folders remain
        assert folders[-1] == health(url)["sessions"] == MAX_SESSIONS and max(folders) <= MAX_SESSIONS
        with pytest.raises(gradio_client.exceptions.AppError, match="your session expired, score again"):
            first.predict(0.3, api_name="/rethreshold")  # the first visitor's session was evicted long ago
        growth = max(resident[WARM_UP_ROUNDS:]) - resident[WARM_UP_ROUNDS - 1]
        curve = ", ".join(f"{b / 2**20:.0f}" for b in resident)
        assert growth < RSS_GROWTH_BOUND, f"RSS grew by {growth / 2**20:.1f} MiB after warm-up (MiB: {curve})"
        state = health(url)
        assert state["refused"] == 0 and state["requests"] == ROUNDS * PER_ROUND + 1
