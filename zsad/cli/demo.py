"""``zsad demo``: serve the gradio web demo (``demo/app.py``, shipped as ``zsad/_data/demo/app.py``)."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from types import ModuleType

from zsad.cli.options import add_model_options, warn_random_weights
from zsad.errors import UsageError


def load_demo_module() -> ModuleType:
    """Import the bundled ``demo/app.py`` by file path (``demo`` is data, not a package: the name is taken on PyPI)."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UsageError("the demo needs gradio: pip install 'zsad[demo]'") from None
    from zsad.resources import data_dir

    try:
        path = data_dir("demo", "app.py") / "app.py"
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    name = "zsad_demo_app"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="web page: upload images, see heat maps and masks, ask about a defect")
    add_model_options(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; 0.0.0.0 serves your network)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--lvlm", default=None, metavar="MODEL",
                   help="answer questions with this vision-language model instead of the grounded rules")
    p.add_argument("--lvlm-adapter", default=None, metavar="DIR", help="a LoRA adapter folder for --lvlm")
    p.add_argument("--max-files", type=int, default=32, help="images per run (default 32)")
    p.add_argument("--max-file-mb", type=int, default=20, help="size limit of one uploaded file in MB (default 20)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.lvlm_adapter and not args.lvlm:
        raise UsageError("--lvlm-adapter needs --lvlm MODEL")
    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be in 1..65535, got {args.port}")
    module = load_demo_module()
    config = module.DemoConfig(
        backbone=args.backbone, image_size=args.image_size, device=args.device, precision=args.precision,
        activation=args.activation,
        batch_size=args.batch_size, cache_dir=args.cache_dir, prompts=args.prompts,
        adapters=tuple([args.adapter] if args.adapter else []), class_name=args.class_name or "",
        threshold=args.threshold, lvlm=args.lvlm, lvlm_adapter=args.lvlm_adapter, max_files=args.max_files,
        max_file_mb=args.max_file_mb,
    )
    app = module.DemoApp(config)
    try:
        app.warm_up()
        warn_random_weights(app, args.backbone)  # the app knows it once the backbone is loaded
        print(f"zsad: demo on http://{args.host}:{args.port} (Ctrl+C stops it)", file=sys.stderr, flush=True)
        app.launch(args.host, args.port, block=True, quiet=True)
    finally:
        app.close()
    return 0
