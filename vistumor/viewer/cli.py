"""``python -m vistumor.viewer RUN_DIR``: serve an inference run folder to a web browser.

    python -m vistumor.viewer outputs/demo/infer            # http://127.0.0.1:8000/
    python -m vistumor.viewer RUN --port 0                  # any free port
    python -m vistumor.viewer RUN --slides /data/camelyon16 # slides moved since the run

Binds to 127.0.0.1 unless ``--host`` says otherwise (the viewer has no login: serving it on
another interface shows the slides to that network, and lets it save reviews under
``RUN/reviews/``). A user error is one line ``error: ...`` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from vistumor.errors import VisTumorError, user_error
from vistumor.viewer.pool import TIMEOUT
from vistumor.viewer.run import RunFolder
from vistumor.viewer.server import WORKERS, ViewerApp, ViewerServer

log = logging.getLogger(__name__)


def bounded(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer from ``low`` to ``high``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not in {low}..{high}")
        return value

    return parse


def positive(text: str) -> float:
    """An argparse type: a finite number of seconds above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds above 0")
    return value


class OneLineParser(argparse.ArgumentParser):
    """Refuses a bad argument in one line (``error: ...``, exit 2), the usage left to ``--help``."""

    def error(self, message: str) -> NoReturn:
        sys.exit(user_error(f"{message} (see --help)"))


def viewer_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m vistumor.viewer",
        description="See an inference run on the slide: Deep Zoom slide tiles, tumor-probability and "
                    "Grad-CAM++ heatmaps, ground truth and predicted lesions, in the browser; reviews of the "
                    "lesions are saved under RUN/reviews/<model>/.")
    parser.add_argument("run_dir", type=Path, help="the inference run folder (holds run.json)")
    parser.add_argument("--port", type=bounded(0, 65535), default=8000,
                        help="port (default %(default)s; 0: any free one)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default %(default)s)")
    parser.add_argument("--slides", type=Path, metavar="DIR",
                        help="find slides that moved since the run here (by name, in sub-folders too)")
    parser.add_argument("--cache-mb", type=bounded(0, 1 << 20), default=256,
                        help="tile cache size (default %(default)s MiB)")
    parser.add_argument("--workers", type=bounded(1, 256), default=WORKERS,
                        help="requests answered at once (default %(default)s)")
    parser.add_argument("--timeout", type=positive, default=TIMEOUT,
                        help="seconds before an idle connection, or a stalled read or write, is closed "
                             "(default %(default)s)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = viewer_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    try:
        app = ViewerApp(RunFolder(args.run_dir, slides=args.slides), args.cache_mb)
        server = ViewerServer(app, args.host, args.port, args.workers, args.timeout)
    except (VisTumorError, OSError) as err:
        return user_error(err)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: anyone who can reach this address sees the slides and can save reviews",
                    args.host)
    print(f"VisTumor viewer: {len(server.app.run.slides)} slides, models {list(server.app.run.models)} "
          f"from {server.app.run.root}\n  open {server.url}  (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
