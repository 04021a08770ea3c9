"""The viewer without a browser: routes, refusals (traversal, unknown names, levels, tiles),
Deep Zoom geometry equal to OpenSlide's generator, heatmap tiles coloured as written by
hand, escaped HTML, evaluation panels, multi-model runs, and the real HTTP server."""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import openslide
import pytest
from conftest import write_asap_xml, write_tiff
from openslide.deepzoom import DeepZoomGenerator

from vistumor.infer.batch import merge_tables, process
from vistumor.infer.engine import OracleScorer
from vistumor.infer.inputs import SlideInput
from vistumor.infer.params import InferParams
from vistumor.infer.slide_run import ModelRun
from vistumor.viewer.cli import main
from vistumor.viewer.guards import loopback_hosts
from vistumor.viewer.layers import FADE, FLOOR, MapGrid, colour, lut, sample
from vistumor.viewer.run import RunFolder
from vistumor.viewer.server import ViewerApp, ViewerServer
from vistumor.viewer.tiles import ByteLRU, DziGeometry
from vistumor.wsi.annotations import TumorAnnotation, read_annotations

# -- a tiny inference run: two slides, two oracle models --------------------------------------

WIDTH, HEIGHT, MPP = 2048, 1536, 0.5
MODELS = ("oracle", "oracle_b")
LESION = [(700 + r * np.cos(t), 650 + 0.8 * r * np.sin(t))
          for t, r in zip(np.linspace(0, 2 * np.pi, 36, endpoint=False),
                          260 + 40 * np.sin(3 * np.linspace(0, 2 * np.pi, 36, endpoint=False)), strict=True)]
TILING = {
    "grid": {"patch_size": 128, "stride": None, "level": 0, "target_mpp": None, "min_tissue_fraction": 0.6},
    "tissue": {"downsample": 16, "blur": 5, "min_saturation": 0.07, "max_saturation": 0.3, "min_value": 0.12,
               "open_radius": 1, "close_radius": 3, "fill_holes": True, "min_area": 64},
    "labels": {"annotation_groups": {"_0": "tumor", "_1": "tumor", "_2": "exclude"}},
}


def slide_image(seed: int) -> np.ndarray:
    """White glass, an elliptic pink tissue section, dark nuclei: not a flat picture."""
    rng = np.random.default_rng(seed)
    image = np.full((HEIGHT, WIDTH, 3), 243, np.uint8)
    cv2.ellipse(image, (WIDTH // 2, HEIGHT // 2), (880, 640), 0, 0, 360, (222, 140, 196), -1)
    for x, y in rng.integers((260, 200), (WIDTH - 260, HEIGHT - 200), size=(2500, 2)):
        if image[y, x, 1] < 200:
            cv2.circle(image, (int(x), int(y)), int(rng.integers(3, 7)), (90, 40, 130), -1)
    return image


def build_run(folder: Path, lesions: Sequence[Sequence[tuple[float, float]]] = (LESION,)) -> Path:
    """``folder/run``: a real run folder (infer's own writers, oracle scorers) over two slides;
    the tumor slide's annotation holds ``lesions`` (level-0 polygons)."""
    folder.mkdir(parents=True, exist_ok=True)
    tumor = write_tiff(folder / "slides" / "tumor_001.tif", slide_image(1), mpp=MPP, levels=3)
    normal = write_tiff(folder / "slides" / "normal_001.tif", slide_image(2), mpp=MPP, levels=3)
    regions = [("lesion" if i == 0 else f"lesion {i + 1}", "_0", points) for i, points in enumerate(lesions)]
    xml = write_asap_xml(folder / "slides" / "tumor_001.xml", regions)
    items = [SlideInput("normal_001", normal, 0, None), SlideInput("tumor_001", tumor, 1, xml)]
    out = folder / "run"
    params = InferParams()
    checkpoint = folder / "oracle.ckpt"  # the run fingerprints its checkpoints
    checkpoint.write_text("an oracle has no weights\n")
    for item in items:
        truth = read_annotations(item.annotation) if item.annotation else TumorAnnotation()
        models = [ModelRun(name, OracleScorer(truth, cells), str(checkpoint), TILING, 64, out / "models" / name)
                  for name, cells in zip(MODELS, (7, 4), strict=True)]
        record = process(item, models, params, out)
        assert record["status"] == "done", record["reason"]
    merge_tables(items, models, out)
    description = {
        "models": [{"name": m.name, "checkpoint": m.checkpoint, "input_size": 64, "tiling": TILING,
                    "folder": str(m.folder)} for m in models],
        "slides": [{"slide": s.slide_id, "path": str(s.path), "label": ["normal", "tumor"][s.label],
                    "annotation": str(s.annotation) if s.annotation else None} for s in items],
        "settings": asdict(params), "settings_hash": params.hash,
    }
    (out / "run.json").write_text(json.dumps(description, indent=2))
    return out


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """The tiny run folder (read-only: copy it before changing anything)."""
    return build_run(tmp_path_factory.mktemp("viewer"))


@pytest.fixture(scope="module")
def app(tiny_run) -> ViewerApp:
    return ViewerApp(tiny_run)


def get(app: ViewerApp, target: str):
    response = app.handle(target)
    assert b"Traceback" not in response.body
    return response


# -- routes ----------------------------------------------------------------------------------

ROUTES = {
    "/": "text/html", "/view/tumor_001": "text/html", "/api/run": "application/json",
    "/api/slide/tumor_001": "application/json", "/api/lesions/oracle/tumor_001": "application/json",
    "/api/truth/tumor_001": "application/json", "/slide/tumor_001.dzi": "application/xml",
    "/slide/tumor_001_files/11/0_0.jpeg": "image/jpeg", "/slide/tumor_001_files/5/0_0.jpeg": "image/jpeg",
    "/heat/oracle/probability/tumor_001.dzi": "application/xml",
    "/heat/oracle/probability/tumor_001_files/11/2_2.png": "image/png",
    "/heat/oracle_b/cam/tumor_001_files/9/0_0.png": "image/png", "/thumb/normal_001.jpeg": "image/jpeg",
    "/figure/oracle/tumor_001.png": "image/png", "/static/viewer.js": "text/javascript",
    "/static/openseadragon/openseadragon.min.js": "text/javascript",
    "/static/openseadragon/LICENSE.txt": "text/plain", "/static/openseadragon/images/home_rest.png": "image/png",
    "/view/tumor_001?x=1#frag": "text/html",
}


@pytest.mark.parametrize("target", ROUTES)
def test_every_route_answers(app, target):
    response = get(app, target)
    assert response.status == 200, response.body
    assert response.content_type.startswith(ROUTES[target])
    assert response.body


def test_a_slide_tile_is_deepzoomgenerators_tile(app, tiny_run):
    generator = DeepZoomGenerator(openslide.OpenSlide(str(app.run.slide("tumor_001").path)), 254, 1, False)
    served = cv2.imdecode(np.frombuffer(get(app, "/slide/tumor_001_files/10/1_1.jpeg").body, np.uint8), 1)
    direct = np.asarray(generator.get_tile(10, (1, 1)))[..., ::-1]
    assert served.shape == direct.shape
    assert np.abs(served.astype(int) - direct).mean() < 4  # JPEG


def test_the_api_describes_the_slide_and_both_models(app, tiny_run):
    info = json.loads(get(app, "/api/slide/tumor_001").body)
    assert (info["width"], info["height"], info["mpp"], info["label"]) == (WIDTH, HEIGHT, MPP, "tumor")
    assert info["annotation"] is True and set(info["models"]) == set(MODELS)
    model = info["models"]["oracle"]
    assert model["score"] == pytest.approx(1.0) and model["lesions"] >= 1
    assert model["layers"]["probability"]["available"] and model["layers"]["probability"]["vmax"] == 1.0
    cam = json.loads((tiny_run / "models" / "oracle" / "cams" / "tumor_001.json").read_text())
    assert model["layers"]["cam"]["vmax"] == pytest.approx(cam["scale"])  # cam.normalize=slide
    assert model["evaluation"] == {"evaluated": False}
    lesions = json.loads(get(app, "/api/lesions/oracle/tumor_001").body)["lesions"]
    geojson = json.loads((tiny_run / "models" / "oracle" / "lesions" / "tumor_001.geojson").read_text())
    assert [lesion["rings"] for lesion in lesions] == [f["geometry"]["coordinates"] for f in geojson["features"]]
    rings = json.loads(get(app, "/api/truth/tumor_001").body)["rings"]
    assert len(rings) == 1 and np.allclose(rings[0][:-1], LESION, atol=0.01)
    assert json.loads(get(app, "/api/truth/normal_001").body)["rings"] == []


def test_lesions_are_read_by_the_annotation_reader(tiny_run, tmp_path):
    """A hand-written lesions file: a two-part MultiPolygon lesion (one part with a hole) and a
    point (no area: skipped); its rings come back part by part, outline then hole. A file
    that is not GeoJSON is 404 "cannot be read", not a crash."""
    run = shutil.copytree(tiny_run, tmp_path / "run")
    square = lambda x0, y0, x1, y1: [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]  # noqa: E731
    parts = [[square(0, 0, 100, 100), square(40, 40, 60, 60)], [square(200, 0, 300, 100)]]
    features = [{"type": "Feature", "id": "tumor_001-lesion-1",
                 "geometry": {"type": "MultiPolygon", "coordinates": parts},
                 "properties": {"measurements": {"tumor_probability": 0.9, "area_mm2": 0.005}}},
                {"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 5]}, "properties": {}}]
    path = run / "models" / "oracle" / "lesions" / "tumor_001.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    lesions = json.loads(ViewerApp(run).handle("/api/lesions/oracle/tumor_001").body)["lesions"]
    assert [lesion["id"] for lesion in lesions] == ["tumor_001-lesion-1"]
    assert lesions[0]["rings"] == [ring for part in parts for ring in part]
    measured = tuple(lesions[0][k] for k in ("tumor_probability", "area_mm2", "mean_probability"))
    assert measured == (0.9, 0.005, None)
    path.write_text("{not json")
    response = ViewerApp(run).handle("/api/lesions/oracle/tumor_001")
    assert response.status == 404 and b"cannot be read" in response.body


# -- refusals --------------------------------------------------------------------------------

TRAVERSALS = [
    "/../run.json", "/static/../run.json", "/static/%2e%2e/run.json", "/static/%2E%2E%2Frun.json",
    "/static/..%2frun.json", "/static/..\\run.json", "/static/%5c..%5crun.json", "//etc/passwd",
    "/static//etc/passwd", "/static/%2Fetc%2Fpasswd", "/figure/oracle/..%2F..%2Frun.json",
    "/figure/..%2F..%2Fstatus/tumor_001.png", "/slide/%2Fetc%2Fpasswd.dzi", "/heat/oracle/probability/..%2Fx.dzi",
    "/api/slide/%00", "/api/slide/..", "/api/slide/.", "/static/C:\\Windows\\win.ini", "/static/%C0%AE%C0%AE/x",
    "/api/lesions/oracle/..%5C..%5Crun.json", "/view/%2e%2e%2f%2e%2e%2frun.json", "/figure/oracle/%2e%2e.png",
    "http://127.0.0.1/../run.json", "//static/viewer.js", "/static/viewer.js/..", "/static/./viewer.js",
]


@pytest.mark.parametrize("target", TRAVERSALS)
def test_traversal_is_refused(app, target):
    response = get(app, target)
    assert response.status == 404
    assert b"root" not in response.body and b"slides" not in response.body


UNKNOWN = [
    "/view/tumor_999", "/api/slide/tumor_999", "/api/lesions/nobody/tumor_001", "/slide/tumor_999.dzi",
    "/slide/tumor_001_files/12/0_0.jpeg", "/slide/tumor_001_files/11/9_0.jpeg", "/slide/tumor_001_files/11/0_7.jpeg",
    "/slide/tumor_001_files/11/-1_0.jpeg", "/slide/tumor_001_files/x/0_0.jpeg", "/slide/tumor_001_files/11/0_0.png",
    "/slide/tumor_001_files/99999999/0_0.jpeg", "/heat/nobody/probability/tumor_001.dzi",
    "/heat/oracle/saliency/tumor_001.dzi", "/heat/oracle/probability/tumor_001_files/12/0_0.png",
    "/heat/oracle/probability/tumor_001_files/0/1_0.png", "/heat/oracle/cam/tumor_999_files/0/0_0.png",
    "/figure/oracle/tumor_999.png", "/figure/nobody/tumor_001.png", "/thumb/tumor_999.jpeg",
    "/static/nothing.js", "/static/index.html", "/static/", "/nowhere", "/api", "/slide/.dzi",
]


@pytest.mark.parametrize("target", UNKNOWN)
def test_unknown_names_levels_and_tiles_are_404(app, target):
    assert get(app, target).status == 404


def test_a_crash_is_a_bare_500_logged_here(app, monkeypatch, caplog):
    def boom(*args):
        raise RuntimeError("secret detail")

    monkeypatch.setattr(app.heat, "tile", boom)
    response = get(app, "/heat/oracle/probability/tumor_001_files/11/0_0.png")
    assert response.status == 500 and b"secret" not in response.body
    assert "secret detail" in caplog.text and "Traceback" in caplog.text


# -- geometry --------------------------------------------------------------------------------


class OneLevel:
    """What DeepZoomGenerator asks of a slide to lay out its pyramid: a one-level image."""

    def __init__(self, width: int, height: int):
        self.dimensions = (width, height)
        self.level_dimensions = ((width, height),)
        self.level_downsamples = (1.0,)
        self.properties: dict[str, str] = {}

    def get_best_level_for_downsample(self, downsample: float) -> int:
        return 0


@pytest.mark.parametrize("size", [(1, 1), (254, 254), (255, 256), (1000, 700), (2048, 1536), (6144, 6144),
                                  (100_001, 77_777)])
def test_dzi_geometry_is_deepzoomgenerators(size):
    generator = DeepZoomGenerator(OneLevel(*size), 254, 1, limit_bounds=False)
    geometry = DziGeometry(*size)
    assert geometry.level_dimensions == generator.level_dimensions
    assert geometry.level_tiles == generator.level_tiles
    assert geometry.dzi("jpeg") == generator.get_dzi("jpeg")
    for level in range(geometry.level_count):
        cols, rows = geometry.level_tiles[level]
        for col in sorted({0, 1, cols // 2, cols - 1} & set(range(cols))):
            for row in sorted({0, 1, rows - 1} & set(range(rows))):
                x, y, w, h = geometry.tile_box(level, col, row)
                (x0, y0), _, _ = generator.get_tile_coordinates(level, (col, row))
                assert (w, h) == generator.get_tile_dimensions(level, (col, row))
                assert (x0, y0) == (int(x * geometry.downsample(level)), int(y * geometry.downsample(level)))


def test_the_served_dzi_is_the_slides(app):
    generator = DeepZoomGenerator(openslide.OpenSlide(str(app.run.slide("tumor_001").path)), 254, 1, False)
    assert get(app, "/slide/tumor_001.dzi").body.decode() == generator.get_dzi("jpeg")
    assert get(app, "/heat/oracle/cam/tumor_001.dzi").body.decode() == generator.get_dzi("png")


# -- heatmap tiles, by hand ----------------------------------------------------------------------


def test_a_cell_lands_in_its_tile_pixels():
    """A 256 px image, 64 px cells: cell (row 1, col 2) is 1, (0, 0) NaN, the rest 0. At full
    resolution (level 8) tile (0, 0) spans x, y 0-254, so the cell fills pixels [128, 192) x
    [64, 128); tile (1, 0) starts at x 253 (one px of overlap) and is 3 px wide."""
    values = np.zeros((4, 4), np.float32)
    values[1, 2], values[0, 0] = 1.0, np.nan
    geometry = DziGeometry(256, 256)
    assert geometry.level_count == 9 and geometry.tile_box(8, 1, 0) == (253, 0, 3, 255)
    tile = sample(values, MapGrid(0, 0, 64), geometry, 8, 0, 0)
    assert tile.shape == (255, 255)
    one = np.zeros_like(tile, bool)
    one[64:128, 128:192] = True
    assert np.all(tile[one] == 1.0) and np.all(np.isnan(tile[:64, :64]))
    assert np.all(tile[~one & ~np.isnan(tile)] == 0.0) and np.isnan(tile).sum() == 64 * 64
    rgba = colour(tile, 1.0, lut("inferno"))
    assert np.all(rgba[one] == [*lut("inferno")[255], 255])
    assert np.all(rgba[~one][:, 3] == 0)  # NaN and 0: transparent
    half = sample(values, MapGrid(0, 0, 64), geometry, 7, 0, 0)  # 128 px: 2 level-0 px per px
    assert half.shape == (128, 128) and np.all(half[32:64, 64:96] == 1.0) and np.isnan(half[:32, :32]).all()
    right = sample(values, MapGrid(0, 0, 64), geometry, 8, 1, 0)  # x 253-255: column 3 of the map
    assert right.shape == (255, 3) and np.all(right[:, :] == values[np.arange(255) // 64, 3][:, None])


def test_alpha_rises_from_the_floor_and_vmax_scales():
    values = np.array([[np.nan, 0.0, FLOOR, FLOOR + FADE / 2, FLOOR + FADE, 2.0]], np.float32)
    rgba = colour(values, 1.0, lut("inferno"))
    assert rgba[0, :, 3].tolist() == [0, 0, 0, 128, 255, 255]
    assert np.all(colour(values * 4, 4.0, lut("inferno")) == rgba)


def test_a_hand_written_map_is_served_where_it_lies(tiny_run, tmp_path):
    """The served PNG of a map written by hand: 64 px cells on the 2048 px slide (level 11 is
    full resolution); cell (row 2, col 5) = [320, 384) x [128, 192) lies in tile (1, 0), which
    starts at x 253."""
    run = shutil.copytree(tiny_run, tmp_path / "run")
    path = run / "models" / "oracle" / "heatmaps" / "tumor_001.npy"
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["cell_size_px"] == 64 and sidecar["origin_level0"] == [0, 0]
    values = np.zeros(sidecar["shape"], np.float32)
    values[2, 5], values[0, 0] = 1.0, np.nan
    np.save(path, values)
    png = ViewerApp(run).handle("/heat/oracle/probability/tumor_001_files/11/1_0.png")
    rgba = cv2.cvtColor(cv2.imdecode(np.frombuffer(png.body, np.uint8), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGRA2RGBA)
    assert rgba.shape == (255, 256, 4)
    hot = np.zeros(rgba.shape[:2], bool)
    hot[128:192, 320 - 253 : 384 - 253] = True
    assert np.all(rgba[hot] == [*lut("inferno")[255], 255]) and np.all(rgba[~hot][:, 3] == 0)
    first = cv2.imdecode(np.frombuffer(ViewerApp(run).handle(
        "/heat/oracle/probability/tumor_001_files/11/0_0.png").body, np.uint8), cv2.IMREAD_UNCHANGED)
    assert first.shape == (255, 255, 4) and not first[..., 3].any()  # NaN and zeros: all transparent


@pytest.mark.parametrize("normalize", ["slide", "run", "none"])
def test_the_cam_scale_follows_cam_normalize(tiny_run, tmp_path, normalize):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    description = json.loads((run / "run.json").read_text())
    description["settings"]["cam"]["normalize"] = normalize
    (run / "run.json").write_text(json.dumps(description))
    cams = run / "models" / "oracle" / "cams"
    for slide, scale in (("tumor_001", 0.5), ("normal_001", 2.0)):
        sidecar = json.loads((cams / f"{slide}.json").read_text())
        (cams / f"{slide}.json").write_text(json.dumps({**sidecar, "scale": scale}))
    info = json.loads(ViewerApp(run).handle("/api/slide/tumor_001").body)["models"]["oracle"]["layers"]
    assert info["cam"]["vmax"] == {"slide": 0.5, "run": 2.0, "none": 1.0}[normalize]
    assert info["probability"]["vmax"] == 1.0


def test_tiles_are_cached_and_the_cache_is_bounded(tiny_run):
    app = ViewerApp(tiny_run)
    target = "/heat/oracle/cam/tumor_001_files/10/1_1.png"
    first = app.handle(target).body
    assert app.handle(target).body is first and app.cache.hits == 1
    lru = ByteLRU(10)
    for i in range(5):
        lru.put((i,), b"abcd")
    assert len(lru) == 2 and lru.size == 8 and lru.get((0,)) is None and lru.get((4,)) == b"abcd"


# -- pages -------------------------------------------------------------------------------------


def test_html_escapes_slide_names(tiny_run, tmp_path):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    description = json.loads((run / "run.json").read_text())
    evil = '<img src=x onerror=alert(1)>"&'
    description["slides"].append({**description["slides"][0], "slide": evil})
    (run / "run.json").write_text(json.dumps(description))
    app = ViewerApp(run)
    index = app.handle("/").body.decode()
    assert "<img src=x" not in index and "&lt;img src=x onerror=alert(1)&gt;&#34;&amp;" in index
    assert "/view/%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E%22%26" in index
    page = app.handle("/view/%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E%22%26").body.decode()
    assert page.count("&lt;img src=x onerror=alert(1)&gt;&#34;&amp;") == 3 and "<img" not in page


def test_the_index_lists_every_slide_with_scores(app):
    index = get(app, "/").body.decode()
    for name in ("normal_001", "tumor_001"):
        assert f'href="/view/{name}"' in index and f'src="/thumb/{name}.jpeg"' in index
    assert index.count('data-sort="number"') == 4  # score and lesions per model
    assert 'data-value="1.000000"' in index and "not evaluated" in index


def test_the_evaluation_shows_this_slides_hits_and_misses(tiny_run, tmp_path):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    evaluation = {"mode": "official", "froc": 0.5, "auc": 1.0, "sensitivity_at_fp": {"0.25": 0.5},
                  "lesions": [{"slide": "tumor_001", "label": 1, "itc": False, "probability": 0.97, "x": 700,
                               "y": 650}, {"slide": "tumor_001", "label": 2, "itc": True, "probability": None,
                                           "x": None, "y": None},
                              {"slide": "tumor_002", "label": 1, "itc": False, "probability": 0.5}],
                  "false_positives": {"count": 3, "per_slide": {"tumor_001": 2, "normal_001": 1}}}
    folder = run / "models" / "oracle" / "evaluation"
    folder.mkdir()
    (folder / "evaluation.json").write_text(json.dumps(evaluation))
    info = json.loads(ViewerApp(run).handle("/api/slide/tumor_001").body)
    found = info["models"]["oracle"]["evaluation"]
    assert found["evaluated"] and found["hits"] == 1 and found["false_positives"] == 2
    assert found["counted"] == 1  # the ITC is not a lesion the FROC counts
    assert [lesion["label"] for lesion in found["lesions"]] == [1, 2]
    assert info["models"]["oracle_b"]["evaluation"] == {"evaluated": False}
    assert "oracle: FROC 0.500, slide AUC 1.000" in ViewerApp(run).handle("/").body.decode()


def test_relative_slide_paths_resolve_against_the_runs_working_directory(tiny_run, tmp_path):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    description = json.loads((run / "run.json").read_text())
    base = Path(description["slides"][0]["path"]).parent.parent
    for slide in description["slides"]:
        slide["path"] = str(Path(slide["path"]).relative_to(base))
    (run / "run.json").write_text(json.dumps(description))
    assert RunFolder(run).slide("tumor_001").path is None  # relative to nothing known
    (run / ".hydra").mkdir()
    (run / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  runtime:\n    cwd: {base}\n")
    assert RunFolder(run).slide("tumor_001").path == (base / "slides" / "tumor_001.tif").resolve()


# -- the server and the command ----------------------------------------------------------------


@contextmanager
def serving(app: ViewerApp, **options):
    """A :class:`ViewerServer` of ``app`` on a free loopback port, in a thread."""
    server = ViewerServer(app, "127.0.0.1", 0, **options)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        app.hosts = None  # the app answers direct calls again


def ask(server: ViewerServer, target: str, host: str | None = None, method: str = "GET") -> tuple[int, bytes]:
    """One request with ``Host: host`` (None: http.client's own, ``127.0.0.1:PORT``)."""
    connection = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
    try:
        connection.request(method, target, headers={"Host": host} if host is not None else {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_the_server_keeps_connections_alive_and_refuses_traversal(app):
    with serving(app) as server:
        assert server.server_address[0] == "127.0.0.1"
        connection = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
        answers = []
        for target in ("/", "/slide/tumor_001_files/9/0_0.jpeg", "/static/%2e%2e/run.json", "/../run.json",
                       "/heat/oracle/probability/tumor_001_files/9/1_1.png", "/api/slide/tumor_999"):
            connection.request("GET", target)
            response = connection.getresponse()
            answers.append((response.status, response.read(), response.getheader("X-Content-Type-Options")))
        connection.close()
        assert [a[0] for a in answers] == [200, 200, 404, 404, 200, 404]
        assert answers[1][1][:2] == b"\xff\xd8" and answers[4][1][:4] == b"\x89PNG"
        assert all(a[2] == "nosniff" for a in answers)


REBOUND = ["/api/run", "/", "/view/tumor_001", "/slide/tumor_001_files/9/0_0.jpeg", "/thumb/tumor_001.jpeg",
           "/api/lesions/oracle/tumor_001", "/api/review/oracle/tumor_001", "/api/slide/tumor_999",
           "/static/viewer.js"]


def test_a_request_for_another_host_is_421_on_loopback(app):
    """DNS rebinding: a hostile page whose name now points at 127.0.0.1 sends its own name as
    Host. Every route, known or not, is 421 for it; the loopback names with the port are served."""
    with serving(app) as server:
        port = server.server_address[1]
        for target in REBOUND:
            for host in (f"rebind.attacker.example:{port}", "rebind.attacker.example", f"127.0.0.1.evil:{port}",
                         "127.0.0.1", f"localhost:{port + 1}", f"10.0.0.5:{port}", ""):
                status, body = ask(server, target, host)
                assert status == 421 and body.startswith(b"421 "), (target, host, body)
                assert b"tumor" not in body and b"root" not in body
            expected = 404 if target == "/api/slide/tumor_999" else 200
            for host in (None, f"127.0.0.1:{port}", f"localhost:{port}", f"LocalHost:{port}", f"[::1]:{port}"):
                assert ask(server, target, host)[0] == expected, (target, host)
        assert ask(server, "/api/run", "evil.example", "HEAD")[0] == 421
        assert ask(server, "/api/review/oracle/tumor_001", f"evil.example:{port}", "POST")[0] == 421


def test_the_loopback_names_and_port_are_the_hosts(tiny_run):
    """Not served on loopback (``--host``), the Host is whatever name reaches the server."""
    app = ViewerApp(tiny_run)
    assert app.hosts is None and app.handle("/api/run", {"Host": "slides.lab.example"}).status == 200
    assert loopback_hosts(8000) == {"127.0.0.1:8000", "localhost:8000", "[::1]:8000"}
    assert loopback_hosts(80) >= {"localhost", "127.0.0.1", "[::1]", "localhost:80"}
    assert "localhost" not in loopback_hosts(8000)


def test_the_command_serves_on_localhost_and_prints_the_url(tiny_run):
    command = [sys.executable, "-m", "vistumor.viewer", str(tiny_run), "--port", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        lines = [process.stdout.readline(), process.stdout.readline()]
        url = lines[1].split("open ")[1].split()[0]
        assert url.startswith("http://127.0.0.1:") and "2 slides" in lines[0]
        with urllib.request.urlopen(url + "view/tumor_001", timeout=10) as response:
            assert response.status == 200 and b'data-slide="tumor_001"' in response.read()
    finally:
        process.terminate()
        process.wait(10)


def test_the_command_refuses_a_folder_without_a_run(tmp_path, capsys):
    assert main([str(tmp_path), "--port", "0"]) == 2
    assert "no run.json" in capsys.readouterr().err


def test_the_cam_layer_is_titled_by_the_method_its_canvas_recorded():
    from vistumor.viewer.layers import cam_title

    assert cam_title({"method": "rollout"}) == "attention rollout (probability-weighted)"
    assert cam_title({"method": "attention"}) == "class-token attention (probability-weighted)"
    assert cam_title({}) == "Grad-CAM++ (probability-weighted)"  # canvases from before cam.method
