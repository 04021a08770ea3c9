"""Stage 8, the viewer: an inference run in the browser.

``python -m vistumor.viewer RUN_DIR`` serves the run on 127.0.0.1: an index of its slides
(score, label, lesions, thumbnail) and, per slide, an OpenSeadragon view of the slide's
Deep Zoom tiles with the tumor-probability and Grad-CAM++ heatmaps as transparent tiled
layers, the ground-truth annotation and the predicted lesions as a vector overlay in
level-0 px, and a panel with the score, the model and the FROC hits and misses. A reviewer
confirms or rejects each predicted lesion, draws missed ones and saves the review under
``RUN/reviews/<model>/`` as a corrected annotation the tiling stage can read.

Modules: ``run`` (the run folder, looked up by name), ``tiles`` (Deep Zoom geometry, slide
tiles, the tile cache), ``layers`` (heatmap tiles from the saved maps), ``pages`` (HTML and
the slide's JSON), ``review`` (checking and saving reviews), ``server`` (routing, HTTP),
``pool`` (worker threads and idle connections), ``cli``. The pages are Jinja2 templates in
``templates/``; the browser side is in ``static/`` with a vendored OpenSeadragon (BSD-3,
``static/openseadragon/LICENSE.txt``).
"""

from vistumor.viewer.run import NotFound, RunFolder
from vistumor.viewer.server import ViewerApp, ViewerServer

__all__ = ["NotFound", "RunFolder", "ViewerApp", "ViewerServer"]
