"""The ``zsad`` command line: argparse and printing only; the work is done by the library below.

Exit codes: 0 every input has a scored row, 1 some rows are errors, 2 usage error (bad option, path, name,
weights), 3 internal error (one line on stderr, the traceback in ``OUT/zsad-error.log``).
User mistakes print one line (``zsad: error: ...``), never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import traceback
from collections.abc import Sequence
from pathlib import Path

from zsad.errors import ZsadError

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3
ERROR_LOG = "zsad-error.log"


def build_parser() -> argparse.ArgumentParser:
    from zsad.cli import adapters, ask, demo, evaluate, export, models, score, synthetic, train_dialogue, train_vfm

    parser = argparse.ArgumentParser(prog="zsad", description="Zero-shot anomaly detection with vision-language models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (score, evaluate, adapters, train_vfm, ask, train_dialogue, demo, models, synthetic, export):
        module.add_parser(sub)
    return parser


def _log_internal_error(args: argparse.Namespace) -> Path:
    """Write the traceback next to the command's outputs (``--out``), else into a temporary file."""
    text = traceback.format_exc()
    out = getattr(args, "out", None)
    if out:
        try:
            path = Path(out) / ERROR_LOG
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            return path
        except OSError:
            pass
    with tempfile.NamedTemporaryFile("w", prefix="zsad-error-", suffix=".log", delete=False) as handle:
        handle.write(text)
    return Path(handle.name)


def command_line_words(exc: ZsadError) -> str:
    """A library error as the command line says it: the flag to change where the library names an option."""
    from zsad.errors import BatchTooSmallError

    if isinstance(exc, BatchTooSmallError):
        return f"{exc.problem}; use --method clip for fewer images"
    return str(exc)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="zsad: %(levelname)s: %(message)s", stream=sys.stderr)
    try:
        return args.func(args)
    except ZsadError as exc:
        print(f"zsad: error: {command_line_words(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("zsad: interrupted; finished rows are kept (use --resume to continue)", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not the user's input: one line here, the traceback in a file
        where = _log_internal_error(args)
        first = str(exc).splitlines()[0][:300] if str(exc) else ""
        print(f"zsad: internal error: {type(exc).__name__}: {first} (traceback in {where}; please report it)",
              file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
