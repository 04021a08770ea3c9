"""``python -m vistumor.viewer RUN_DIR``: serve an inference run folder to a web browser.

    python -m vistumor.viewer outputs/demo/infer            # http://127.0.0.1:8000/
    python -m vistumor.viewer RUN --port 0                  # any free port

Binds to 127.0.0.1 unless ``--host`` says otherwise (the viewer has no login: serving it on
another interface shows the slides to that network, and lets it save reviews under
``RUN/reviews/``). A user error is one line ``error: ...`` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from vistumor.errors import VisTumorError
from vistumor.viewer.server import ViewerApp, ViewerServer

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vistumor.viewer",
        description="See an inference run on the slide: Deep Zoom slide tiles, tumor-probability and "
                    "Grad-CAM++ heatmaps, ground truth and predicted lesions, in the browser; reviews of the "
                    "lesions are saved under RUN/reviews/<model>/.")
    parser.add_argument("run_dir", type=Path, help="the inference run folder (holds run.json)")
    parser.add_argument("--port", type=int, default=8000, help="port (default %(default)s; 0: any free one)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default %(default)s)")
    parser.add_argument("--cache-mb", type=int, default=256, help="tile cache size (default %(default)s MiB)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    try:
        server = ViewerServer(ViewerApp(args.run_dir, args.cache_mb), args.host, args.port)
    except (VisTumorError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
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
