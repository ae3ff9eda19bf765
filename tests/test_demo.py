"""The web demo's handlers without a browser: safe names, limits, errors as messages, re-thresholding, sharing."""

import csv

import numpy as np
import pytest

pytest.importorskip("gradio")

from zsad.errors import AdapterError, UsageError  # noqa: E402


@pytest.fixture(scope="module")
def demo():
    import zsad.demo

    return zsad.demo


@pytest.fixture(scope="module")
def app(demo):
    app = demo.DemoApp(demo.DemoConfig(backbone="tiny-random", image_size=112, device="cpu", precision="fp32",
                                       max_files=6, max_file_mb=1, max_pixels=300 * 300))
    yield app
    app.close()


@pytest.fixture
def defect_png(tmp_path):
    from zsad.data.synthetic import make_sample

    sample = make_sample("weave", "hole", size=96, rng=np.random.default_rng(0))
    path = tmp_path / "part.png"
    sample.image.save(path)
    return path


@pytest.mark.parametrize("raw, expected", [
    ("../../etc/passwd", "passwd"),
    ("C:\\Users\\me\\evil name.png", "evil_name.png"),
    (".bashrc", "bashrc"),
    ("..", "image"),
    ("", "image"),
    ("=cmd|' +calc'!A0.png", "cmd_calc_A0.png"),
    ("défaut №1.jpg", "defaut_No1.jpg"),
    ("CON.png", "_CON.png"),
    ("a\x00b\nc.png", "a_b_c.png"),
])
def test_safe_name(raw, expected):
    from zsad.demo.names import safe_name

    assert safe_name(raw) == expected


def test_safe_name_bounds_length_and_keeps_extension():
    from zsad.demo.names import safe_name

    name = safe_name("x" * 500 + ".png")
    assert len(name) <= 80 and name.endswith(".png")


def test_unique_names():
    from zsad.demo.names import unique_names

    assert unique_names(["a.png", "A.png", "dir/a.png", "b"]) == ["a.png", "A-2.png", "a-3.png", "b"]


def test_scores_uploads_and_samples(app, defect_png):
    sample = next(iter(app.samples))
    session = app.analyse([str(defect_png)], [sample], "fabric", "clip", None, 0.5)
    view = app.render(session, 0.5)
    assert [row[0] for row in view.rows] == ["part.png", sample]
    assert len(view.gallery) == 2
    for path, caption in view.gallery:
        assert path.startswith(str(session.folder)) and caption.split(" · ")[0] in ("part.png", sample)
    with open(view.csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["name"] for r in rows] == ["part.png", sample]
    assert {r["label"] for r in rows} <= {"0", "1"} and all(r["error"] == "" for r in rows)


def test_uploaded_names_are_sanitised_on_disk(app, tmp_path):
    from zsad.data.synthetic import make_sample

    weird = tmp_path / "..evil; rm -rf ~.png"
    make_sample("weave", None, size=64, rng=np.random.default_rng(1)).image.save(weird)
    session = app.analyse([str(weird)], [], "", "clip", None, 0.5)
    view = app.render(session, 0.5)
    written = [p.name for p in session.folder.rglob("*") if p.is_file()]
    assert "evil_rm_-rf_.png" in written and all(demo_safe(n) for n in written)
    assert view.rows[0][0] == "evil_rm_-rf_.png"


def demo_safe(name: str) -> bool:
    return name[0].isalnum() and all(ch.isalnum() or ch in "._-" for ch in name)


def test_rethreshold_does_not_rescore(app, defect_png, monkeypatch):
    session = app.analyse([str(defect_png)], [], "", "clip", None, 0.5)
    score = session.items[0].kept.image_score

    def boom(*_args, **_kwargs):
        raise AssertionError("re-thresholding must not score again")

    monkeypatch.setattr(app.detector("clip").method, "extract", boom)
    low, high = app.render(session, 0.0), app.render(session, 1.0)
    assert low.rows[0][2] == 1 and low.rows[0][4] != ""  # everything is anomalous at 0: the mask has a region
    assert high.rows[0][2] == int(score >= 1.0)
    assert low.rows[0][1] == high.rows[0][1] == round(score, 4)
    assert len(list(session.folder.glob("view-*"))) == 1  # old renders are removed


def test_scoring_shows_the_runners_decision_without_deciding_again(app, defect_png, monkeypatch):
    from zsad.demo import service

    def boom(*_args, **_kwargs):
        raise AssertionError("the first view must be drawn from the runner's decisions")

    sample = next(iter(app.samples))
    with monkeypatch.context() as patch:
        patch.setattr(service, "decide", boom)
        session = app.analyse([str(defect_png)], [sample], "fabric", "clip", None, 0.3)
    first = session.view
    assert [row[0] for row in first.rows] == ["part.png", sample] and len(first.gallery) == 2
    assert "at threshold 0.30" in first.status and first.csv_path.startswith(str(session.folder))
    again = app.render(session, 0.3)  # the slider decides again from the kept maps: the same view
    assert again.rows == first.rows and [c for _, c in again.gallery] == [c for _, c in first.gallery]


def test_bad_files_become_rows_and_the_rest_is_scored(app, defect_png, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    big = tmp_path / "big.png"
    from PIL import Image

    Image.new("RGB", (400, 400)).save(big)  # over max_pixels (300 x 300)
    session = app.analyse([str(broken), str(defect_png), str(big)], [], "", "clip", None, 0.5)
    rows = {row[0]: row for row in app.render(session, 0.5).rows}
    assert "not an image" in rows["broken.png"][7]
    assert "over the limit" in rows["big.png"][7]
    assert rows["part.png"][7] == "" and rows["part.png"][1] is not None
    assert str(tmp_path) not in rows["broken.png"][7]  # the temporary upload path is not shown


def test_oversized_file_is_refused(app, tmp_path):
    huge = tmp_path / "huge.png"
    huge.write_bytes(b"\x89PNG" + bytes(2 * 1024 * 1024))  # over max_file_mb = 1
    with pytest.raises(UsageError, match="over the limit of 1 MB"):
        app.analyse([str(huge)], [], "", "clip", None, 0.5)


@pytest.mark.parametrize("files, samples, method, message", [
    ([], [], "clip", "no images"),
    (None, ["nope.png"], "clip", "unknown sample"),
    (["x.png"] * 7, [], "clip", "too many images: 7 given, at most 6"),
    ([], ["weave_good_0.png", "weave_good_1.png"], "musc", "needs at least 5"),
    ([], ["weave_good_0.png"], "anomalyclip", "needs learned prompts"),
    ([], ["weave_good_0.png"], "nope", "unknown method"),
])
def test_user_errors_are_zsad_errors(app, files, samples, method, message):
    with pytest.raises(UsageError, match=message):
        app.analyse(files, samples, "", method, None, 0.5)


def test_unknown_adapter_is_refused(app):
    with pytest.raises((UsageError, AdapterError), match="unknown adapter"):
        app.analyse(None, ["weave_good_0.png"], "", "anomalyclip", "../secret", 0.5)


def test_threshold_out_of_range(app, defect_png):
    with pytest.raises(UsageError, match="threshold"):
        app.analyse([str(defect_png)], [], "", "clip", None, 1.5)


def test_page_shows_messages_not_tracebacks():
    import gradio as gr

    from zsad.demo.page import on_page

    def user_mistake():
        raise UsageError("too many images: 40 given, at most 32 per run")

    def bug():
        raise KeyError("internal detail")

    with pytest.raises(gr.Error, match="too many images"):
        on_page(user_mistake)()
    with pytest.raises(gr.Error) as info:
        on_page(bug)()
    assert "internal detail" not in str(info.value) and "server log" in str(info.value)


def test_model_is_shared(app):
    clip_a, clip_b = app.detector("clip", "bottle"), app.detector("clip", " bottle ")
    assert clip_a is clip_b
    musc = app.detector("musc")
    # one set of weights for every detector of the same interpolation (musc runs a GELU view of it, issue 17)
    assert musc.backbone.model.visual.conv1.weight is clip_a.backbone.model.visual.conv1.weight
    assert (musc.backbone.activation, clip_a.backbone.activation) == ("gelu", "quick_gelu")
    assert musc is not clip_a


def test_detector_cache_is_bounded(demo):
    app = demo.DemoApp(demo.DemoConfig(backbone="tiny-random", image_size=112, device="cpu", max_detectors=2))
    try:
        first = app.detector("clip", "a")
        app.detector("clip", "b")
        app.detector("clip", "c")
        assert len(app.models.detectors) == 2 and app.detector("clip", "a") is not first
    finally:
        app.close()


def test_select_and_ask_need_a_scored_image(app):
    with pytest.raises(UsageError, match="score an image first"):
        app.ask(None, "where is the defect?")
    assert app.select(None, 0) == []


def test_ask_answers_about_the_selected_image(app, defect_png):
    from zsad.types import GRID_CELLS

    session = app.analyse([str(defect_png)], ["weave_good_0.png"], "fabric", "clip", None, 0.0)
    app.render(session, 0.0)
    app.select(session, 0)
    messages = app.ask(session, "  where is   the defect? ")
    assert messages[0] == {"role": "user", "content": "where is the defect?"}
    assert messages[1]["role"] == "assistant" and any(cell in messages[1]["content"] for cell in GRID_CELLS)
    assert app.ask(session, "   ") == messages  # an empty question changes nothing
    assert app.select(session, 1) == [] and app.select(session, 0) == messages


def test_cli_parses_demo_options():
    from zsad.cli import build_parser

    args = build_parser().parse_args(["demo", "--backbone", "tiny-random", "--port", "0", "--host", "0.0.0.0",
                                      "--image-size", "112", "--lvlm", "m", "--max-files", "4"])
    assert (args.command, args.port, args.host, args.lvlm, args.max_files) == ("demo", 0, "0.0.0.0", "m", 4)


def test_cli_refuses_bad_options(capsys):
    from zsad.cli import main

    assert main(["demo", "--backbone", "tiny-random", "--lvlm-adapter", "x"]) == 2
    assert "--lvlm-adapter needs --lvlm" in capsys.readouterr().err
    assert main(["demo", "--backbone", "tiny-random", "--port", "70000"]) == 2


def test_chat_label_names_the_selected_image(app, defect_png):
    assert app.chat_label(None) == "Ask about the selected image"
    session = app.analyse([str(defect_png)], ["weave_good_0.png"], "", "clip", None, 0.5)
    assert "part.png" in app.chat_label(session)
    app.select(session, 1)
    assert "weave_good_0.png" in app.chat_label(session)


def test_busy_port_is_a_usage_error(app):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        with pytest.raises(UsageError, match="cannot serve on 127.0.0.1"):
            app.launch("127.0.0.1", sock.getsockname()[1], block=False, quiet=True)


def test_chat_through_a_configured_lvlm(demo, defect_png):
    """``zsad demo --lvlm tiny-random``: the chat answers through the LVLM (noise with random weights)."""
    app = demo.DemoApp(demo.DemoConfig(backbone="tiny-random", image_size=112, device="cpu", precision="fp32",
                                       lvlm="tiny-random"))
    try:
        app.warm_up()
        session = app.analyse([str(defect_png)], [], "fabric", "clip", None, 0.0)
        app.render(session, 0.0)
        app.select(session, 0)
        messages = app.ask(session, "where is the defect?")
        assert messages[-1]["role"] == "assistant" and messages[-1]["content"].strip()
        assert app.chat.responder is not None and app.chat.responder.name == "lvlm:tiny-random"
    finally:
        app.close()


def test_start_up_adapters_are_checked_at_warm_up(demo, tmp_path):
    from zsad.adapters import save_adapter

    lora = save_adapter(tmp_path / "lora", "lvlm-lora", {"backbone": "tiny-random"}, {})
    app = demo.DemoApp(demo.DemoConfig(backbone="tiny-random", image_size=112, device="cpu", precision="fp32",
                                       adapters=(str(lora),)))
    try:
        with pytest.raises(AdapterError, match="kind is 'lvlm-lora', expected 'anomalyclip-prompts'"):
            app.warm_up()
    finally:
        app.close()


def test_a_replaced_session_is_not_rendered(app, defect_png):
    session = app.analyse([str(defect_png)], [], "fabric", "clip", None, 0.5)
    sid = app.sessions.add(session)
    app.render(session, 0.5)
    app.sessions.drop(sid)  # what a newer scoring run does to the visitor's previous session
    assert not session.folder.exists()
    with pytest.raises(UsageError, match="your session expired, score again"):
        app.render(session, 0.4)
    with pytest.raises(UsageError, match="your session expired, score again"):
        app.sessions.get(sid)
