"""``zsad demo``: serve the gradio web demo (:mod:`zsad.demo`)."""

from __future__ import annotations

import argparse
import logging
import sys

from zsad.cli.options import add_model_options, warn_random_weights
from zsad.errors import UsageError


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
    p.add_argument("--max-sessions", type=int, default=64,
                   help="visitor sessions kept at once; the least recently used is evicted beyond it (default 64)")
    p.add_argument("--session-ttl", type=int, default=900, metavar="SECONDS",
                   help="an idle session expires after this long, its files removed (default 900)")
    p.add_argument("--max-memory-gb", type=float, default=None, metavar="GB",
                   help="memory budget of the whole demo: requests beyond it wait, then are refused with a message "
                        "(default: 75%% of the machine's memory or the container's limit)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.lvlm_adapter and not args.lvlm:
        raise UsageError("--lvlm-adapter needs --lvlm MODEL")
    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be in 1..65535, got {args.port}")
    from zsad.demo import DemoApp, DemoConfig, page
    from zsad.demo.memory import limit_malloc_arenas

    page.gradio()  # a missing extra is a message before the model loads
    config = DemoConfig(
        backbone=args.backbone, image_size=args.image_size, device=args.device, precision=args.precision,
        activation=args.activation,
        batch_size=args.batch_size, cache_dir=args.cache_dir, prompts=args.prompts,
        adapters=tuple([args.adapter] if args.adapter else []), class_name=args.class_name or "",
        threshold=args.threshold, lvlm=args.lvlm, lvlm_adapter=args.lvlm_adapter, max_files=args.max_files,
        max_file_mb=args.max_file_mb, max_sessions=args.max_sessions, session_ttl_s=args.session_ttl,
        max_memory_gb=args.max_memory_gb,
    )
    # a server process: fewer malloc arenas keep freed maps from staying resident across worker threads
    limit_malloc_arenas()
    logging.getLogger("zsad.demo").setLevel(logging.INFO)  # its health line every N requests
    app = DemoApp(config)
    try:
        app.warm_up()
        warn_random_weights(app, args.backbone)  # the app knows it once the backbone is loaded
        print(f"zsad: demo on http://{args.host}:{args.port} (Ctrl+C stops it)", file=sys.stderr, flush=True)
        app.launch(args.host, args.port, block=True, quiet=True)
    finally:
        app.close()
    return 0
