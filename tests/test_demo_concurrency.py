"""Twenty visitors at once: concurrent scoring requests through gradio_client all succeed, share one model, and
get the same answer for the same image."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

N_REQUESTS = 20
# gradio's queue uses pandas options that pandas 3 deprecates: not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*")


@pytest.fixture
def served(tmp_path, loopback_port):
    from zsad.demo import DemoApp, DemoConfig

    app = DemoApp(DemoConfig(backbone="tiny-random", image_size=112, device="cpu", precision="fp32"))
    try:
        app.warm_up()
        port = loopback_port
        app.launch("127.0.0.1", port, block=False, quiet=True)
        yield app, f"http://127.0.0.1:{port}/"
    finally:
        app.close()


def test_concurrent_scoring_requests(served, tmp_path):
    from zsad.data.synthetic import make_sample

    app, url = served
    images = []
    for i, defect in enumerate(("hole", None, "scratch", "contamination")):
        path = tmp_path / f"part_{i}.png"
        make_sample("weave", defect, size=96, rng=np.random.default_rng(i)).image.save(path)
        images.append(path)
    client = gradio_client.Client(url, verbose=False, download_files=str(tmp_path / "downloads"))

    def request(i: int):
        return client.predict([gradio_client.handle_file(str(images[i % len(images)]))], [], "fabric", "clip", None,
                              0.5, api_name="/score")

    with ThreadPoolExecutor(N_REQUESTS) as pool:
        outputs = list(pool.map(request, range(N_REQUESTS)))

    scores: dict[int, set] = {}
    for i, (gallery, table, csv_path, status, _chat, _health) in enumerate(outputs):
        (row,) = table["data"]
        assert row[0] == f"part_{i % len(images)}.png" and row[-1] == "" and 0.0 <= row[1] <= 1.0
        assert len(gallery) == 1 and csv_path.endswith(".csv") and "1** image(s) scored" in status
        scores.setdefault(i % len(images), set()).add(row[1])
    assert all(len(s) == 1 for s in scores.values())  # the shared model gives every visitor the same answer
    assert list(app.models.detectors) == [("auto", "", None), ("clip", "fabric", None)]  # built once, then shared
