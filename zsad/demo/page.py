"""The gradio page: its layout and event wiring over a :class:`~zsad.demo.app.DemoApp`'s handlers. The only module
of the demo that imports gradio (an optional extra: ``pip install 'zsad[demo]'``), and only when called."""

# no ``from __future__ import annotations`` here: gradio reads the handlers' ``gr.SelectData`` annotation at run time

import functools
import logging
from collections.abc import Callable
from typing import Any

from zsad.demo.models import adapter_methods, method_choices
from zsad.demo.table import CSV_COLUMNS
from zsad.errors import UsageError, ZsadError, random_weights_message

log = logging.getLogger("zsad.demo")

GRADIO_MISSING = "the demo needs gradio: pip install 'zsad[demo]'"


def gradio():
    """The gradio module, or a :class:`UsageError` saying how to install it."""
    try:
        import gradio as gr
    except ImportError:
        raise UsageError(GRADIO_MISSING) from None
    return gr


def on_page(handler: Callable) -> Callable:
    """Wrap an event handler: user errors become a message on the page, bugs a short message and a log entry."""
    gr = gradio()

    @functools.wraps(handler)
    def wrapper(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except gr.Error:
            raise
        except ZsadError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        except Exception:
            log.exception("demo: unexpected error in %s", handler.__name__)
            raise gr.Error("internal error (details are in the server log)", print_exception=False) from None

    return wrapper


def build(app: Any):
    """The page of ``app`` (a :class:`~zsad.demo.app.DemoApp`). Handlers turn :class:`ZsadError` into a message on
    the page (never a traceback)."""
    gr = gradio()
    c = app.config
    # gradio copies every shown file into its cache: delete the copies once a session could have expired
    with gr.Blocks(title="zsad demo", delete_cache=(max(60, c.session_ttl_s // 4), c.session_ttl_s)) as blocks:
        # the page holds the session's id only; the session lives in the bounded store
        state = gr.State(None, time_to_live=c.session_ttl_s, delete_callback=app.sessions.drop)
        gr.Markdown("# zsad: zero-shot anomaly detection\nUpload images of one product (or pick the samples), "
                    "say what they show, and score. Click an image, then ask about it.")
        if app.random_weights:
            gr.Markdown(f"**Warning:** {random_weights_message(c.backbone, 'scores and maps are meaningless')}",
                        elem_id="zsad-random-warning")
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                files = gr.File(label=f"Images (up to {c.max_files}, {c.max_file_mb} MB each)",
                                file_count="multiple", file_types=["image"], elem_id="zsad-files")
                samples = gr.CheckboxGroup(list(app.samples), label="Bundled samples", show_select_all=True,
                                           elem_id="zsad-samples")
                class_name = gr.Textbox(value=c.class_name, label="What the images show",
                                        placeholder="object, e.g. bottle, fabric", max_lines=1,
                                        elem_id="zsad-class")
                method = gr.Radio(method_choices(), value="auto", label="Method", elem_id="zsad-method")
                adapters = app.models.adapters
                adapter = gr.Dropdown(list(adapters), value=next(iter(adapters), None),
                                      label=f"Adapter ({', '.join(adapter_methods())})", visible=bool(adapters),
                                      elem_id="zsad-adapter")
                threshold = gr.Slider(0.0, 1.0, value=c.threshold, step=0.01, label="Threshold",
                                      info="score >= threshold: anomalous; moving it does not re-score",
                                      elem_id="zsad-threshold")
                run = gr.Button("Score", variant="primary", elem_id="zsad-score")
                status = gr.Markdown(elem_id="zsad-status")
            with gr.Column(scale=2):
                gallery = gr.Gallery(label="Heat maps (mask contour in white)", columns=3, height=460,
                                     format="png", object_fit="contain", elem_id="zsad-gallery")
                table = gr.Dataframe(headers=list(CSV_COLUMNS), label="Results", interactive=False,
                                     elem_id="zsad-table")
                download = gr.File(label="Results as CSV", elem_id="zsad-csv")
        with gr.Row():
            with gr.Column():
                chat = gr.Chatbot(label="Ask about the selected image", height=260, elem_id="zsad-chat")
                with gr.Row():
                    question = gr.Textbox(placeholder="e.g. where is the defect?", show_label=False, scale=4,
                                          max_lines=1, elem_id="zsad-question")
                    ask = gr.Button("Ask", scale=1, elem_id="zsad-ask")
        footer = gr.Markdown(elem_id="zsad-health")

        # gradio finds the progress tracker by this default value (its documented idiom)
        def on_score(previous, files, samples, class_name, method, adapter, threshold,
                     progress=gr.Progress()):  # noqa: B008
            sid, session = app.score(previous, files, samples, class_name, method, adapter, threshold, progress)
            view = session.view
            return (sid, view.gallery, view.rows, view.csv_path, view.status,
                    gr.update(value=[], label=app.chat_label(session)), app.health_line())

        def on_threshold(sid, threshold):
            if sid is None:
                return gr.skip(), gr.skip(), gr.skip(), gr.skip()
            view = app.render(app.sessions.get(sid), threshold)
            return view.gallery, view.rows, view.csv_path, view.status

        def on_select(sid, evt: gr.SelectData):
            session = app.sessions.get(sid) if sid is not None else None
            messages = app.select(session, evt.index)
            return gr.update(value=messages, label=app.chat_label(session))

        def on_ask(sid, question):
            session = app.sessions.get(sid) if sid is not None else None
            return app.ask(session, question), ""

        run.click(on_page(on_score), [state, files, samples, class_name, method, adapter, threshold],
                  [state, gallery, table, download, status, chat, footer], api_name="score",
                  concurrency_limit=c.concurrency)
        threshold.change(on_page(on_threshold), [state, threshold], [gallery, table, download, status],
                         api_name="rethreshold", concurrency_limit=c.concurrency, trigger_mode="always_last")
        gallery.select(on_page(on_select), [state], [chat], api_name=False)
        for trigger in (ask.click, question.submit):
            trigger(on_page(on_ask), [state, question], [chat, question], api_name=False)
        blocks.load(app.health_line, None, footer, api_name=False)
    blocks.queue(default_concurrency_limit=c.concurrency, max_size=c.queue_size)
    return blocks


def queued(blocks: Any) -> int:
    """Events waiting in the page's queue (gradio's ``_queue`` is not public API: read defensively)."""
    queue = getattr(blocks, "_queue", None)
    try:
        return len(queue) if queue is not None else 0
    except TypeError:
        return 0


def launch(app: Any, blocks: Any, host: str, port: int, *, block: bool = True, quiet: bool = False):
    """Serve ``blocks`` (the page of ``app``) and ``GET /health``; with ``block=False`` return at once."""
    from fastapi.routing import APIRoute

    c = app.config
    try:
        blocks.launch(server_name=host, server_port=port, max_file_size=f"{c.max_file_mb}mb",
                      allowed_paths=[str(app.root)], show_error=False, prevent_thread_lock=not block,
                      quiet=quiet, footer_links=[], ssr_mode=False,
                      # gradio keeps a copy of the page's state per browser session: bound it too
                      state_session_capacity=max(256, 4 * c.max_sessions),
                      app_kwargs={"routes": [APIRoute("/health", app.health, methods=["GET"])]})
    except OSError as exc:
        raise UsageError(f"cannot serve on {host}:{port}: {exc}") from None
    return blocks
