"""The demo's memory bounds without a server: the session store (cap, idle time, folders), the memory budget
(admission, waiting, refusal), what a session keeps per image, and the app refusing work beyond its budget."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gradio")

from zsad.errors import UsageError  # noqa: E402


@pytest.fixture(scope="module")
def demo_modules():
    import zsad.demo
    from zsad.demo import kept, memory, sessions

    return {"app": zsad.demo, "sessions": sessions, "memory": memory, "kept": kept}


class FakeSession:
    def __init__(self, folder: Path, nbytes: int = 100) -> None:
        self.folder, self.nbytes, self.closed, self.lock = folder, nbytes, False, threading.Lock()
        folder.mkdir()

    def busy(self) -> bool:
        return self.lock.locked()

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.folder.rmdir()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# ------------------------------------------------------------------------------------------------ session store


def test_store_evicts_the_least_recently_used_beyond_the_cap(demo_modules, tmp_path):
    sessions = demo_modules["sessions"]
    store = sessions.SessionStore(max_sessions=2, ttl_s=60)
    a, b, c = (FakeSession(tmp_path / name) for name in "abc")
    ids = [store.add(a), store.add(b)]
    assert store.get(ids[0]) is a  # a is now the most recently used: b goes first
    store.add(c)
    assert b.closed and not b.folder.exists() and not a.closed and len(store) == 2
    with pytest.raises(UsageError, match="your session expired, score again"):
        store.get(ids[1])
    assert store.stats().evicted == 1 and store.kept_bytes() == 200


def test_store_expires_idle_sessions(demo_modules, tmp_path):
    clock = Clock()
    store = demo_modules["sessions"].SessionStore(max_sessions=10, ttl_s=60, clock=clock)
    old, fresh = FakeSession(tmp_path / "old"), FakeSession(tmp_path / "fresh")
    old_id = store.add(old)
    clock.now = 50
    fresh_id = store.add(fresh)
    clock.now = 100  # old idle 100 s, fresh 50 s
    assert store.get(fresh_id) is fresh
    assert old.closed and not old.folder.exists()
    with pytest.raises(demo_modules["sessions"].SessionExpired):
        store.get(old_id)
    clock.now = 200
    assert store.sweep() == 1 and fresh.closed and store.stats().expired == 2


def test_store_makes_room_from_idle_sessions_only(demo_modules, tmp_path):
    store = demo_modules["sessions"].SessionStore(max_sessions=10, ttl_s=60)
    busy, idle, newest = (FakeSession(tmp_path / n, nbytes=100) for n in ("busy", "idle", "newest"))
    for session in (busy, idle, newest):
        store.add(session)
    with busy.lock:  # a request is drawing it
        assert store.make_room(150) == 200
    assert not busy.closed and idle.closed and newest.closed and len(store) == 1
    store.drop(None)  # a page that never scored: nothing to drop
    store.close_all()
    assert busy.closed and len(store) == 0


def test_store_is_thread_safe(demo_modules, tmp_path):
    store = demo_modules["sessions"].SessionStore(max_sessions=5, ttl_s=60)

    def churn(t: int) -> None:
        for i in range(30):
            sid = store.add(FakeSession(tmp_path / f"{t}-{i}", nbytes=1))
            try:
                store.get(sid)
            except UsageError:
                pass  # evicted by another thread already
            assert len(store) <= 5

    threads = [threading.Thread(target=churn, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(store) == 5 and len(list(tmp_path.iterdir())) == 5  # every evicted folder is gone


# ------------------------------------------------------------------------------------------------ memory budget


def test_budget_admits_within_the_limit_and_refuses_what_can_never_fit(demo_modules):
    memory = demo_modules["memory"]
    budget = memory.MemoryBudget(1000, baseline=400, kept=lambda: 100, measure=lambda: 450, wait_s=0)
    with budget.reserve(500):
        assert budget.usage().reserved == 500 and budget.usage().running == 1
    assert budget.usage().reserved == 0
    with pytest.raises(memory.MemoryRefused, match="more than this demo's memory budget"):
        with budget.reserve(700):  # 400 + 700 > 1000 even with nothing kept
            pass
    assert budget.usage().refused == 1


def test_budget_counts_measured_memory_beyond_its_accounts(demo_modules):
    memory = demo_modules["memory"]
    resident = [950]  # e.g. a leak or fragmentation the estimates do not know
    budget = memory.MemoryBudget(1000, baseline=400, measure=lambda: resident[0], wait_s=0)
    with pytest.raises(memory.MemoryRefused, match="out of memory right now"):
        with budget.reserve(100):
            pass
    resident[0] = 500
    with budget.reserve(100):
        pass


def test_budget_evicts_sessions_before_refusing(demo_modules):
    memory = demo_modules["memory"]
    kept, asked = [500], []

    def make_room(nbytes: int) -> int:
        asked.append(nbytes)
        kept[0] = 0
        return 500

    budget = memory.MemoryBudget(1000, baseline=400, kept=lambda: kept[0], make_room=make_room, measure=lambda: 0,
                                 wait_s=0)
    with budget.reserve(300):
        pass
    assert asked == [200]  # 400 + 500 + 300 - 1000


def test_budget_queues_until_a_running_request_finishes(demo_modules):
    memory = demo_modules["memory"]
    budget = memory.MemoryBudget(1000, baseline=200, measure=lambda: 0, wait_s=10)
    started, waited, order = threading.Event(), threading.Event(), []

    def first() -> None:
        with budget.reserve(600):
            started.set()
            waited.wait(10)
            time.sleep(0.1)
            order.append("first done")

    def second() -> None:
        with budget.reserve(600, on_wait=waited.set):
            order.append("second ran")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    threads[0].start()
    started.wait(10)
    threads[1].start()
    for thread in threads:
        thread.join(20)
    assert order == ["first done", "second ran"] and budget.usage().refused == 0


def test_budget_refuses_after_waiting(demo_modules):
    memory = demo_modules["memory"]
    budget = memory.MemoryBudget(1000, baseline=200, measure=lambda: 0, wait_s=0.3)
    with budget.reserve(600):
        started = time.monotonic()
        with pytest.raises(memory.MemoryRefused, match="try again in a minute"):
            with budget.reserve(600):
                pass
        assert 0.25 < time.monotonic() - started < 5
    assert budget.usage().waiting == 0 and budget.usage().reserved == 0


def test_costs_grow_with_pixels_and_tokens(demo_modules):
    costs = demo_modules["memory"].Costs(tokens_per_image=1370, width=1024)
    one, two = costs.scoring([2048 * 2048]), costs.scoring([2048 * 2048] * 2)
    assert two - one == one - costs.overhead
    assert costs.scoring([100]) > 24 * 100 + 1370 * 1024 * 4
    assert costs.render([10, 4096 * 4096]) == costs.overhead + 16 * 4096 * 4096


def test_machine_memory_and_resident_size_are_plausible(demo_modules):
    memory = demo_modules["memory"]
    assert 2**28 < memory.machine_memory() < 2**50
    assert 2**20 < memory.resident_bytes() < memory.machine_memory()
    assert memory.default_limit() == int(0.75 * memory.machine_memory())
    memory.trim_heap()  # a no-op without glibc, never an error


# ------------------------------------------------------------------------------------------------ kept images


def test_a_kept_image_holds_display_size_in_memory_and_the_full_map_on_disk(demo_modules, tmp_path):
    from PIL import Image

    from zsad.decisions import Thresholds, decide
    from zsad.types import RawOutput

    kept_module = demo_modules["kept"]
    rng = np.random.default_rng(0)
    amap = rng.random((600, 1000), dtype=np.float32) * 0.4
    amap[300, 500] = 0.95  # a one-pixel defect must stay visible at display size
    raw = RawOutput(image_score=0.7, anomaly_map=amap, method="clip", defect_probs={"hole": 0.8})
    result = decide(raw, Thresholds(0.5))
    image = Image.fromarray((rng.random((600, 1000, 3)) * 255).astype(np.uint8))
    kept = kept_module.KeptImage.keep(result, image, tmp_path / "map.npy", side=128)

    assert kept.picture.shape == (77, 128, 3) and kept.heat.shape == (77, 128) and kept.heat.dtype == np.uint8
    assert kept.nbytes <= 128 * 77 * 4 + 512 and kept.size == (1000, 600) and kept.pixels == 600_000
    again = decide(kept.raw(), Thresholds(0.5))  # read back from disk: the same decision, bit for bit
    assert np.array_equal(again.anomaly_map, result.anomaly_map) and np.array_equal(again.pred_mask,
                                                                                     result.pred_mask)
    assert again.regions == result.regions and again.defect_type == "hole" and again.image_score == 0.7
    assert kept.display_mask(again.pred_mask).sum() == 1  # the one-pixel region is one display pixel
    assert kept_module.display_size((100, 50), 512) == (100, 50)  # never scaled up


# ------------------------------------------------------------------------------------------------ the app


@pytest.fixture(scope="module")
def app(demo_modules):
    demo = demo_modules["app"]
    app = demo.DemoApp(demo.DemoConfig(backbone="tiny-random", image_size=112, device="cpu", precision="fp32",
                                       max_sessions=2, display_side=64, memory_wait_s=0.2))
    yield app
    app.close()


@pytest.fixture
def big_png(tmp_path):
    from zsad.data.synthetic import make_sample

    path = tmp_path / "big.png"
    make_sample("weave", "hole", size=400, rng=np.random.default_rng(0)).image.save(path)
    return path


def test_sessions_keep_display_size_pictures_and_full_maps_on_disk(app, big_png):
    session = app.analyse([str(big_png)], [], "fabric", "clip", None, 0.5)
    (item,) = session.items
    assert item.kept.picture.shape == (64, 64, 3) and session.nbytes < 64 * 64 * 4 + 4096
    assert np.load(item.kept.map_file, mmap_mode="r").shape == (400, 400)
    view = app.render(session, 0.0)
    assert view.rows[0][5:7] == [400, 400] and view.rows[0][4] != ""  # regions found at full resolution
    from PIL import Image

    assert Image.open(view.gallery[0][0]).size == (64, 64)  # the overlay is drawn at display size
    session.close()
    assert not session.folder.exists()


def test_evicted_visitors_are_told_to_score_again(app, big_png):
    first = app.analyse([str(big_png)], [], "", "clip", None, 0.5)
    first_id = app.sessions.add(first)
    for _ in range(2):  # the cap is 2: the first session is evicted
        app.sessions.add(app.analyse([str(big_png)], [], "", "clip", None, 0.5))
    assert not first.folder.exists() and len(app.sessions) == 2
    for attempt in (lambda: app.sessions.get(first_id), lambda: app.render(first, 0.3),
                    lambda: app.ask(first, "where is the defect?")):
        with pytest.raises(UsageError, match="your session expired, score again"):
            attempt()
    health = app.health()
    assert health["sessions"] == 2 and health["max_sessions"] == 2 and health["evicted"] >= 1


def test_scoring_beyond_the_memory_budget_is_refused_with_a_message(app, big_png):
    saved, folders = app.budget.limit, len(list(app.root.glob("session-*")))
    try:
        app.budget.limit = app.budget.baseline + 2**20  # room for nothing but a trifle
        with pytest.raises(UsageError, match="more than this demo's memory budget"):
            app.analyse([str(big_png)], [], "", "clip", None, 0.5)
        assert len(list(app.root.glob("session-*"))) == folders  # refused before anything was decoded or written
    finally:
        app.budget.limit = saved
    assert app.health()["refused"] >= 1


def test_health_line(app):
    line = app.health_line()
    assert line.startswith("server: ") and "sessions" in line and "GB" in line and "waiting for memory" in line


def test_cli_passes_the_memory_options():
    from zsad.cli import build_parser

    args = build_parser().parse_args(["demo", "--max-sessions", "5", "--session-ttl", "60", "--max-memory-gb",
                                      "2.5"])
    assert (args.max_sessions, args.session_ttl, args.max_memory_gb) == (5, 60, 2.5)
    defaults = build_parser().parse_args(["demo"])
    assert (defaults.max_sessions, defaults.session_ttl, defaults.max_memory_gb) == (64, 900, None)


@pytest.mark.parametrize("change, message", [({"max_sessions": 0}, "max_sessions"),
                                             ({"max_memory_gb": 0}, "max_memory_gb"),
                                             ({"session_ttl_s": 0}, "session_ttl_s")])
def test_bad_memory_options_are_refused(demo_modules, change, message):
    demo = demo_modules["app"]
    with pytest.raises(UsageError, match=message):
        demo.DemoApp(demo.DemoConfig(backbone="tiny-random", **change))
