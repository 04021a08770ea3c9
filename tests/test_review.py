"""Reviewer feedback without a browser: a review is checked (each malformed one is a 400 with
one line, an oversized one before its body is read), written atomically under the run folder
as QuPath GeoJSON, ASAP XML and its own record, served back, safe from traversal, and read by
the annotation reader and the tiling stage as the corrected tumor: confirmed + drawn lesions."""

from __future__ import annotations

import http.client
import io
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import shapely
import yaml
from conftest import CONF, compose_tiling
from shapely.geometry import Polygon
from test_viewer import HEIGHT, LESION, WIDTH, build_run

from vistumor.tasks import tile
from vistumor.viewer import review as review_module
from vistumor.viewer.review import MAX_BYTES, MAX_DRAWN, Review, fill_shared_holes, outlines, review_geojson, review_xml
from vistumor.viewer.run import RunFolder
from vistumor.viewer.server import ViewerApp, ViewerServer
from vistumor.wsi.annotations import DEFAULT_GROUPS, read_annotations

#: a second annotated lesion (a circle), so the tumor slide has two predicted lesions
SECOND = [(1400 + 170 * np.cos(t), 1000 + 170 * np.sin(t)) for t in np.linspace(0, 2 * np.pi, 24, endpoint=False)]
#: a missed lesion the reviewer draws (on tissue, away from both)
DRAWN = [[1150.0, 300.0], [1450.0, 300.0], [1450.0, 560.0], [1150.0, 560.0]]
ORIGIN = {"Host": "127.0.0.1:8000", "Origin": "http://127.0.0.1:8000"}
TARGET = "/api/review/oracle/tumor_001"


def build_review_run(folder: Path) -> Path:
    """The viewer's tiny run with two annotated, hence two predicted, lesions on tumor_001."""
    return build_run(folder, (LESION, SECOND))


@pytest.fixture(scope="session")
def review_run(tmp_path_factory) -> Path:
    """The run, never reviewed (read-only: copy it before saving)."""
    return build_review_run(tmp_path_factory.mktemp("review"))


@pytest.fixture
def app(review_run, tmp_path) -> ViewerApp:
    """A viewer of a fresh copy of the run."""
    return ViewerApp(shutil.copytree(review_run, tmp_path / "run"))


def lesion_ids(app: ViewerApp) -> list[str]:
    return [lesion["id"] for lesion in app.run.lesions("oracle", "tumor_001")]


def predicted(run: Path) -> list[Polygon]:
    features = json.loads((run / "models" / "oracle" / "lesions" / "tumor_001.geojson").read_text())["features"]
    return [Polygon(f["geometry"]["coordinates"][0], f["geometry"]["coordinates"][1:]) for f in features]


def a_review(app: ViewerApp, **changes) -> dict:
    first, second = lesion_ids(app)
    return {"reviewer": "A. Pathologist", "comment": "one missed focus, top right",
            "lesions": {first: "confirmed", second: "rejected"}, "drawn": [{"points": DRAWN}], **changes}


def saved_version(app: ViewerApp, target: str = TARGET) -> int:
    """The version a page that just loaded ``target`` would base its save on (0: none saved)."""
    try:
        answer = json.loads(app.handle(target).body)
        return answer["review"].get("version", 1) if answer.get("saved") else 0
    except (ValueError, KeyError, AttributeError):
        return 0


def post(app: ViewerApp, body: dict | bytes, target: str = TARGET, **headers: str):
    """POST ``body``; a dict without ``based_on`` is based on the saved version."""
    if isinstance(body, dict) and "based_on" not in body:
        body = {**body, "based_on": saved_version(app, target)}
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {**ORIGIN, "Content-Type": "application/json", "Content-Length": str(len(data)), **headers}
    return app.post(target, headers, io.BytesIO(data))


def review_files(app: ViewerApp) -> dict[str, Path]:
    return app.reviews.paths("oracle", "tumor_001")


# -- saving and reading back -------------------------------------------------------------------


def test_a_review_is_saved_as_qupath_asap_and_its_record(app):
    first, second = lesion_ids(app)
    response = post(app, a_review(app))
    assert response.status == 200, response.body
    answer = json.loads(response.body)
    assert answer["files"] == ["reviews/oracle/tumor_001.geojson", "reviews/oracle/tumor_001.xml",
                               "reviews/oracle/tumor_001.review.json"]
    files = review_files(app)
    assert all(path.is_file() for path in files.values())
    assert not list(files["xml"].parent.glob(".*.tmp"))

    features = json.loads(files["geojson"].read_text())["features"]
    assert [f["id"] for f in features] == [first, "tumor_001-drawn-1"]  # the rejected one is left out
    confirmed, drawn = (f["properties"] for f in features)
    assert {p["classification"]["name"] for p in (confirmed, drawn)} == {"Tumor"}
    assert (confirmed["status"], confirmed["source"], confirmed["lesion_id"]) == ("confirmed", "predicted", first)
    assert confirmed["tumor_probability"] == pytest.approx(1.0) and confirmed["measurements"]["area_mm2"] > 0
    assert (drawn["status"], drawn["source"], drawn["tumor_probability"]) == ("confirmed", "drawn", None)
    assert drawn["measurements"]["area_mm2"] == pytest.approx(300 * 260 * 0.0005**2)  # 0.5 µm/px
    assert confirmed["reviewer"] == drawn["reviewer"] == "A. Pathologist"
    assert confirmed["reviewed_at"] == answer["review"]["reviewed_at"] and "+00:00" in confirmed["reviewed_at"]
    assert features[1]["geometry"]["coordinates"] == [[*DRAWN, DRAWN[0]]]

    xml = files["xml"].read_text()
    assert xml.count('PartOfGroup="Tumor"') == 2 and '<Group Name="Tumor"' in xml and '<Group Name="Exclusion"' in xml
    record = json.loads(files["review"].read_text())
    assert record["lesions"] == {first: "confirmed", second: "rejected"}
    assert record["counts"] == {"confirmed": 1, "rejected": 1, "unreviewed": 0, "drawn": 1}
    assert record["comment"] == "one missed focus, top right" and record["drawn"] == [{"points": DRAWN}]


@pytest.mark.parametrize("groups", ["default", "config"])
def test_the_reviewed_tumor_is_the_confirmed_and_drawn_lesions(app, groups):
    """Both files read back (default groups, and conf/data's) as lesion 1 + the drawn polygon;
    the rejected lesion 2 is no tumor."""
    mapping = (DEFAULT_GROUPS if groups == "default"
               else yaml.safe_load((CONF / "data" / "base" / "slides.yaml").read_text())["annotation_groups"])
    assert post(app, a_review(app)).status == 200
    first, second = predicted(app.run.root)
    expected = shapely.union_all([first, Polygon(DRAWN)])
    for kind in ("geojson", "xml"):
        tumor = read_annotations(review_files(app)[kind], mapping).geometry
        assert tumor.symmetric_difference(expected).area < 1.0, kind
        assert tumor.intersection(second).area == 0, kind


def test_unreviewed_lesions_are_no_tumor_and_an_empty_review_is_an_empty_annotation(app):
    assert post(app, {"reviewer": "B"}).status == 200
    record = json.loads(review_files(app)["review"].read_text())
    assert set(record["lesions"].values()) == {"unreviewed"} and record["comment"] == ""
    for kind in ("geojson", "xml"):
        assert read_annotations(review_files(app)[kind]).is_empty


def test_a_lesion_drawn_in_a_confirmed_lesions_hole_fills_it_in_both_files(tmp_path):
    """By hand: lesion A = [0, 100]^2 with hole [40, 60]^2, and a lesion drawn inside that hole:
    the hole is filled (10 000 px^2); lesion C = [200, 300]^2 with hole [240, 260]^2 keeps it
    (9 600 px^2). ASAP subtracts every Exclusion from every Tumor polygon: with the hole kept,
    the XML would cut the drawn lesion away while the GeoJSON would not."""
    square = lambda x0, y0, x1, y1: [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]  # noqa: E731
    lesions = [{"id": "A", "rings": [square(0, 0, 100, 100), square(40, 40, 60, 60)], "tumor_probability": 0.9},
               {"id": "C", "rings": [square(200, 0, 300, 100), square(240, 40, 260, 60)], "tumor_probability": 0.8}]
    review = Review("R", "", {"A": "confirmed", "C": "confirmed"}, [[(45, 45), (55, 45), (55, 55), (45, 55)]])
    found = outlines("s", review, lesions, "2024-01-01T00:00:00+00:00", None)
    assert [len(o.polygon.interiors) for o in found] == [0, 1, 0]
    (tmp_path / "s.geojson").write_text(json.dumps(review_geojson(found)))
    (tmp_path / "s.xml").write_text(review_xml(found))
    for suffix in (".geojson", ".xml"):
        annotation = read_annotations(tmp_path / f"s{suffix}")
        assert annotation.area == pytest.approx(10_000 + 9_600), suffix
    assert fill_shared_holes([Polygon(*lesions[1]["rings"][:1], lesions[1]["rings"][1:])])[0].area == 9_600


def test_only_an_outline_overlapping_a_hole_fills_it():
    """By hand: a square [0, 100]^2 with hole [40, 60]^2; an outline touching the hole along
    its edge x = 40 (no area in common) leaves it, one reaching 1 px into it fills it; outlines
    far away, and the polygon's own outline, never do. Equal to the union of all others."""
    square = lambda x0, y0, x1, y1: [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]  # noqa: E731
    holed = Polygon(square(0, 0, 100, 100), [square(40, 40, 60, 60)])
    far = [Polygon(square(200 + 10 * k, 0, 205 + 10 * k, 5)) for k in range(50)]
    touching = Polygon(square(35, 45, 40, 55))
    reaching = Polygon(square(35, 45, 41, 55))
    assert [len(p.interiors) for p in fill_shared_holes([holed, *far, touching])] == [1] + [0] * 51
    assert [len(p.interiors) for p in fill_shared_holes([*far, reaching, holed])][-1] == 0
    assert fill_shared_holes([holed])[0].equals(holed)


# -- refusals ------------------------------------------------------------------------------------

BOW_TIE = [[1100, 300], [1300, 500], [1300, 300], [1100, 500]]
MALFORMED = {
    "not JSON": (b"{not json", "not JSON"),
    "not UTF-8": (b'{"reviewer": "\xff"}', "not UTF-8"),
    "a list": (b"[]", "JSON object, not list"),
    "NaN": (b'{"reviewer": "R", "based_on": 0, "drawn": [{"points": [[NaN, 1], [2, 3], [4, 5]]}]}',
            "NaN is not a number"),
    "Infinity": (b'{"reviewer": "R", "based_on": 0, "drawn": [{"points": [[1e999, 1], [2, 3], [4, 5]]}]}',
                 "drawn[0].points[0][0]: Input should be a finite number (got inf)"),
    "unknown field": ({"reviewer": "R", "status": "ok"}, "unknown field 'status'; a review has ['reviewer', "),
    "no reviewer": ({"comment": "x"}, "reviewer is required"),
    "no version": (b'{"reviewer": "R"}', "based_on is required (the saved version this review changes; 0 for"),
    "negative version": ({"reviewer": "R", "based_on": -1}, "based_on: Input should be greater than or equal to 0"),
    "blank reviewer": ({"reviewer": "   "}, "reviewer: String should have at least 1 character"),
    "control reviewer": ({"reviewer": "R\x07"}, "reviewer: holds control characters (got 'R\\x07')"),
    "long reviewer": ({"reviewer": "R" * 101}, "reviewer: String should have at most 100 characters"),
    "long comment": ({"reviewer": "R", "comment": "c" * 2001}, "comment: String should have at most 2000 characters"),
    "comment not text": ({"reviewer": "R", "comment": 3}, "comment: Input should be a valid string (got 3)"),
    "unknown lesion": ({"reviewer": "R", "lesions": {"tumor_001-lesion-9": "confirmed"}},
                       "unknown lesion id 'tumor_001-lesion-9'"),
    "bad status": ({"reviewer": "R", "lesions": {"tumor_001-lesion-1": "maybe"}},
                   "lesions['tumor_001-lesion-1']: Input should be 'confirmed', 'rejected' or 'unreviewed' "
                   "(got 'maybe')"),
    "two vertices": ({"reviewer": "R", "drawn": [{"points": DRAWN[:2]}]}, "has 2 vertices; a polygon needs at least 3"),
    "closed triangle of two": ({"reviewer": "R", "drawn": [{"points": [*DRAWN[:2], DRAWN[0]]}]}, "has 2 vertices"),
    "outside": ({"reviewer": "R", "drawn": [{"points": [*DRAWN[:3], [WIDTH + 1, 560]]}]}, "lies outside the slide"),
    "negative": ({"reviewer": "R", "drawn": [{"points": [[-1, 10], [30, 10], [30, 40]]}]}, "lies outside the slide"),
    "below": ({"reviewer": "R", "drawn": [{"points": [[1, 10], [30, HEIGHT + 0.5], [30, 40]]}]}, "outside the slide"),
    "on a line": ({"reviewer": "R", "drawn": [{"points": [[10, 10], [20, 20], [30, 30]]}]}, "has no area"),
    "crossing": ({"reviewer": "R", "drawn": [{"points": BOW_TIE}]}, "drawn lesion 1 crosses itself"),
    "text vertex": ({"reviewer": "R", "drawn": [{"points": [[1, 2], ["1", 2], [5, 6]]}]},
                    "drawn[0].points[1][0]: Input should be a valid number (got '1')"),
    "bool vertex": ({"reviewer": "R", "drawn": [{"points": [[True, 2], [3, 4], [5, 6]]}]},
                    "drawn[0].points[0][0]: Input should be a valid number (got True)"),
    "three numbers": ({"reviewer": "R", "drawn": [{"points": [[1, 2, 3], [3, 4], [5, 6]]}]},
                      "drawn[0].points[0]: List should have at most 2 items, not 3 (got [1, 2, 3])"),
    "second polygon": ({"reviewer": "R", "drawn": [{"points": DRAWN}, {"points": []}]}, "drawn lesion 2 has 0"),
    "drawn not a list": ({"reviewer": "R", "drawn": {"points": DRAWN}}, "drawn: Input should be a valid list"),
    "extra key": ({"reviewer": "R", "drawn": [{"points": DRAWN, "colour": "red"}]},
                  "unknown field 'drawn[0].colour'; a drawn lesion has ['points']"),
    "lesions not a map": ({"reviewer": "R", "lesions": ["tumor_001-lesion-1"]},
                          "lesions: Input should be a valid dictionary"),
    "5,000-digit integer": (b'{"reviewer": "R", "based_on": 0, "drawn": [{"points": [[' + b"1" * 5000
                            + b', 1], [2, 3], [4, 5]]}]}',
                            "has 5000 digits; a coordinate has at most 20"),
    "too many polygons": ({"reviewer": "R", "drawn": [{"points": DRAWN}] * (MAX_DRAWN + 1)},
                          f"drawn: List should have at most {MAX_DRAWN} items, not {MAX_DRAWN + 1}"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_review_is_400_with_one_line_and_writes_nothing(app, case):
    body, reason = MALFORMED[case]
    response = post(app, body)
    text = response.body.decode()
    assert response.status == 400 and text.startswith("400 ") and reason in text, text
    assert text.count("\n") == 1 and response.headers["Connection"] == "close"
    assert not (app.run.root / "reviews").exists()


class Unreadable(io.BytesIO):
    """A body that must not be read."""

    def read(self, *args):
        raise AssertionError("the body was read")


@pytest.mark.parametrize(("headers", "reason"), [
    ({"Content-Length": str(MAX_BYTES + 1)}, f"is {MAX_BYTES + 1} bytes; the limit is {MAX_BYTES}"),
    ({"Content-Length": "99999999999999999999999"}, "bad Content-Length"),
    ({"Content-Length": ""}, "a Content-Length is required"),
    ({"Content-Length": "-5"}, "bad Content-Length '-5'"),
    ({"Content-Length": "10", "Transfer-Encoding": "chunked"}, "chunked bodies are not accepted"),
    ({"Content-Length": "10", "Content-Type": "text/plain"}, "sent as application/json, not 'text/plain'"),
])
def test_an_oversized_or_unsized_body_is_refused_before_it_is_read(app, headers, reason):
    response = app.post(TARGET, {**ORIGIN, "Content-Type": "application/json", **headers}, Unreadable())
    assert response.status == 400 and reason in response.body.decode(), response.body


def test_a_body_shorter_than_its_length_is_refused(app):
    response = app.post(TARGET, {**ORIGIN, "Content-Type": "application/json", "Content-Length": "100"},
                        io.BytesIO(b'{"reviewer": "R"}'))
    assert response.status == 400 and b"shorter than its Content-Length" in response.body


@pytest.mark.parametrize(("headers", "loopback_only"), [
    ({"Origin": "http://evil.example"}, True),
    ({"Origin": "null"}, True),
    ({"Host": "evil.example:8000", "Origin": "http://evil.example:8000"}, True),  # DNS rebinding
    ({"Host": "evil.example:8000"}, True),
    ({"Host": "10.0.0.5:8000", "Origin": "http://127.0.0.1:8000"}, False),
])
def test_a_review_from_another_origin_is_403(app, headers, loopback_only):
    app.loopback_only = loopback_only
    response = post(app, a_review(app), **headers)
    assert response.status == 403 and response.body.startswith(b"403 "), response.body
    assert not (app.run.root / "reviews").exists()


def test_another_interface_takes_reviews_from_its_own_host(app):
    app.loopback_only = False
    assert post(app, a_review(app), Host="10.0.0.5:8000", Origin="http://10.0.0.5:8000").status == 200


TRAVERSALS = [
    "/api/review/oracle/..%2F..%2Frun.json", "/api/review/oracle/..", "/api/review/oracle/%2e%2e",
    "/api/review/..%2Fmodels/tumor_001", "/api/review/oracle/tumor_001%2F..%2F..%2Fx", "/api/review/oracle/%00",
    "/api/review/oracle/tumor_999", "/api/review/nobody/tumor_001", "/api/review/oracle/tumor_001/x",
    "/api/review/oracle", "/api/review/oracle/..%5Crun.json", "/api/review//tumor_001",
]


@pytest.mark.parametrize("target", TRAVERSALS)
def test_traversal_and_unknown_names_are_404_for_get_and_post(app, target, tmp_path):
    before = sorted(tmp_path.rglob("*"))
    assert app.handle(target).status == 404
    response = post(app, a_review(app), target=target)
    assert response.status == 404 and response.headers["Connection"] == "close"
    assert sorted(tmp_path.rglob("*")) == before


def test_only_reviews_are_posted(app):
    assert post(app, a_review(app), target="/api/lesions/oracle/tumor_001").status == 404
    assert not (app.run.root / "reviews").exists()


# -- atomic writes ------------------------------------------------------------------------------


def snapshot(app: ViewerApp) -> dict[str, bytes]:
    return {kind: path.read_bytes() for kind, path in review_files(app).items()}


def test_a_failed_save_leaves_the_earlier_review_whole(app, monkeypatch, caplog):
    """The first review is saved; the second fails while its third file is written (two
    temporaries already full): nothing of it reaches the three files, no temporary is left."""
    assert post(app, a_review(app)).status == 200
    before = snapshot(app)
    real = review_module.atomic_path
    entered = []

    def failing(path):
        entered.append(path)
        if len(entered) == 3:
            raise OSError(28, "No space left on device")
        return real(path)

    monkeypatch.setattr(review_module, "atomic_path", failing)
    response = post(app, a_review(app, comment="a second opinion", drawn=[]))
    assert response.status == 500 and b"No space" not in response.body
    assert "No space left on device" in caplog.text
    assert snapshot(app) == before
    folder = review_files(app)["xml"].parent
    assert sorted(p.name for p in folder.iterdir()) == ["tumor_001.geojson", "tumor_001.review.json", "tumor_001.xml"]
    monkeypatch.setattr(review_module, "atomic_path", real)
    assert post(app, a_review(app, comment="a second opinion", drawn=[])).status == 200
    assert json.loads(review_files(app)["review"].read_text())["comment"] == "a second opinion"


def test_a_failure_before_writing_keeps_the_earlier_review(app, monkeypatch):
    assert post(app, a_review(app)).status == 200
    before = snapshot(app)

    def broken(found):
        raise RuntimeError("disk full")

    monkeypatch.setattr(review_module, "review_xml", broken)
    assert post(app, a_review(app, comment="changed")).status == 500
    assert snapshot(app) == before


# -- concurrent reviews -------------------------------------------------------------------------


def test_a_save_based_on_an_older_version_is_409_and_writes_nothing(app):
    """Two pages load the unsaved review (version 0). The first saves version 1; the second,
    also based on 0, is refused with 409 naming who saved and when, and nothing of it is
    written; based on version 1 it saves version 2."""
    first = post(app, a_review(app, based_on=0))
    assert first.status == 200 and json.loads(first.body)["review"]["version"] == 1
    before = snapshot(app)
    second = post(app, a_review(app, reviewer="B. Colleague", comment="another opinion", based_on=0))
    text = second.body.decode()
    assert second.status == 409 and text.startswith("409 ") and text.count("\n") == 1, text
    assert "you changed version 0, the saved one is version 1 by A. Pathologist at 20" in text
    assert "reload the page" in text and second.headers["Connection"] == "close"
    assert snapshot(app) == before
    third = post(app, a_review(app, reviewer="B. Colleague", based_on=1))
    assert third.status == 200 and json.loads(third.body)["review"]["version"] == 2
    assert json.loads(app.handle(TARGET).body)["review"]["version"] == 2
    assert post(app, a_review(app, based_on=7)).status == 409  # a version never saved


def test_of_simultaneous_saves_from_one_version_exactly_one_is_written(app):
    statuses = []

    def save(k: int) -> None:
        statuses.append(post(app, a_review(app, reviewer=f"R{k}", based_on=0)).status)

    threads = [threading.Thread(target=save, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(statuses) == [200] + [409] * 7
    assert json.loads(app.handle(TARGET).body)["review"]["version"] == 1


def test_a_review_saved_before_versions_is_version_1(app):
    assert post(app, a_review(app)).status == 200
    path = review_files(app)["review"]
    record = json.loads(path.read_text())
    del record["version"]
    path.write_text(json.dumps(record))
    assert post(app, a_review(app, based_on=0)).status == 409
    assert json.loads(post(app, a_review(app, based_on=1)).body)["review"]["version"] == 2


# -- served back ------------------------------------------------------------------------------


def test_the_saved_review_is_served_and_marked_stale_when_the_lesions_change(app):
    assert json.loads(app.handle(TARGET).body) == {"saved": False}
    saved = json.loads(post(app, a_review(app)).body)
    served = json.loads(app.handle(TARGET).body)
    assert served == {"saved": True, "review": saved["review"], "stale": False}
    assert json.loads(app.handle("/api/review/oracle_b/tumor_001").body) == {"saved": False}  # per model
    lesions = app.run.root / "models" / "oracle" / "lesions" / "tumor_001.geojson"
    lesions.write_text(lesions.read_text().replace("lesion 1", "lesion one"))
    assert json.loads(app.handle(TARGET).body)["stale"] is True


def test_an_unreadable_saved_review_is_404_and_a_new_save_replaces_it(app, caplog):
    assert post(app, a_review(app)).status == 200
    review_files(app)["review"].write_text("{half a file")
    response = app.handle(TARGET)
    assert response.status == 404 and b"cannot be read" in response.body and "unreadable review" in caplog.text
    assert post(app, a_review(app)).status == 200 and json.loads(app.handle(TARGET).body)["saved"]


def test_the_server_answers_a_save_and_refuses_an_oversized_one_unread(app):
    server = ViewerServer(app, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address[:2]
    try:
        body = json.dumps(a_review(app, based_on=0)).encode()
        connection = http.client.HTTPConnection(host, port, timeout=10)
        connection.request("POST", TARGET, body, {"Content-Type": "application/json",
                                                  "Origin": f"http://{host}:{port}"})
        response = connection.getresponse()
        assert response.status == 200 and json.loads(response.read())["saved"]
        connection.request("GET", TARGET)  # the same connection: kept alive after a save
        assert json.loads(connection.getresponse().read())["review"]["reviewer"] == "A. Pathologist"
        connection.close()

        # headers only, announcing 2 MB: the answer comes without the body being sent
        connection = http.client.HTTPConnection(host, port, timeout=10)
        connection.putrequest("POST", TARGET)
        for key, value in {"Content-Type": "application/json", "Content-Length": str(2 * MAX_BYTES)}.items():
            connection.putheader(key, value)
        connection.endheaders()
        response = connection.getresponse()
        assert response.status == 400 and response.getheader("Connection") == "close"
        assert b"the limit is 1048576" in response.read()
        connection.close()
    finally:
        server.shutdown()
        server.server_close()


# -- the tiling stage takes reviews as annotations ------------------------------------------------


def tile_with_reviews(run: Path, folder: Path, kinds: dict[str, str]) -> tuple[dict, dict[str, pd.DataFrame]]:
    """Tile the run's slides as a CAMELYON16-layout dataset (``kinds``: slide -> tumor|normal)
    whose annotation folder is the run's ``reviews/oracle`` (an absolute path)."""
    root = folder / "data"
    for slide, kind in kinds.items():
        (root / "training" / kind).mkdir(parents=True, exist_ok=True)
        shutil.copy(RunFolder(run).slide(slide).path, root / "training" / kind / f"{slide}.tif")
    cfg = compose_tiling(folder, root, f"data.layout.annotation_dir={run / 'reviews' / 'oracle'}",
                         "tiling.run.stage=tile")
    summary = tile(cfg)
    tables = {}
    for slide in kinds:
        path = Path(summary["slides_dir"]) / "slides" / f"{slide}.csv"
        tables[slide] = pd.read_csv(path) if path.is_file() else None
    return summary, tables


def labels_under(table: pd.DataFrame, polygon: Polygon) -> set[int]:
    """The labels of the patches lying wholly inside ``polygon``."""
    boxes = shapely.box(table.x0, table.y0, table.x0 + table.size0, table.y0 + table.size0)
    inside = shapely.within(boxes, polygon)
    assert inside.sum() >= 2, "no patch inside"
    return set(table.label[inside])


def assert_reviewed_labels(run: Path, table: pd.DataFrame, drawn: Polygon) -> None:
    """Patches under the confirmed lesion and the drawn one are tumor, under the rejected one
    normal (the ground truth says tumor there), and no tumor patch lies elsewhere."""
    first, second = predicted(run)
    assert labels_under(table, first) == {1}
    assert labels_under(table, drawn) == {1}
    assert labels_under(table, second) == {0}
    truth = read_annotations(RunFolder(run).slide("tumor_001").annotation)
    assert truth.tumor_fractions(table.x0[table.label == 0], table.y0[table.label == 0], 64, 64).max() == 1.0
    tumor = table[table.label == 1]
    boxes = shapely.box(tumor.x0, tumor.y0, tumor.x0 + tumor.size0, tumor.y0 + tumor.size0)
    assert shapely.intersects(boxes, shapely.union_all([first, drawn])).all()


def test_tiling_takes_the_reviews_as_annotations(app, tmp_path):
    """tumor_001: confirmed + drawn are tumor, rejected normal. normal_001 (a normal slide) with
    a drawn lesion: its annotation is read too, so its patches under that lesion become tumor
    patches, while the slide stays normal (its folder decides the kind). The review's XML is
    the annotation found, its checksum recorded."""
    assert post(app, a_review(app)).status == 200
    normal_lesion = [[700.0, 500.0], [1000.0, 500.0], [1000.0, 800.0], [700.0, 800.0]]
    assert post(app, {"reviewer": "R", "drawn": [{"points": normal_lesion}]},
                target="/api/review/oracle/normal_001").status == 200
    summary, tables = tile_with_reviews(app.run.root, tmp_path / "tiling",
                                        {"tumor_001": "tumor", "normal_001": "normal"})
    assert (summary["done"], summary["failed"]) == (2, 0)
    assert_reviewed_labels(app.run.root, tables["tumor_001"], Polygon(DRAWN))
    normal = tables["normal_001"]
    assert set(normal.kind) == {"normal"} and labels_under(normal, Polygon(normal_lesion)) == {1}
    status = json.loads((Path(summary["slides_dir"]) / "slides" / "tumor_001.json").read_text())
    assert status["annotation"] == str(review_files(app)["xml"])
    assert status["annotation_checksum"].startswith("sha256:")


def test_a_tumor_slide_whose_lesions_are_all_rejected_fails_tiling_in_one_line(app, tmp_path):
    first, second = lesion_ids(app)
    assert post(app, {"reviewer": "R", "lesions": {first: "rejected", second: "rejected"}}).status == 200
    summary, tables = tile_with_reviews(app.run.root, tmp_path / "tiling", {"tumor_001": "tumor"})
    assert summary["failed"] == 1 and tables["tumor_001"] is None
    status = json.loads((Path(summary["slides_dir"]) / "slides" / "tumor_001.json").read_text())
    assert "its annotation holds no tumor region" in status["reason"]
