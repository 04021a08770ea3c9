"""Annotations: exact tumor fractions, exact rasters, ASAP XML and GeoJSON, hostile input."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from conftest import REAL_XML, needs_real_fixtures, rectangle, write_asap_xml
from shapely.geometry import Polygon, box

from vistumor.errors import AnnotationError
from vistumor.labels import TUMOR as TUMOR_LABEL
from vistumor.tiling.grid import AMBIGUOUS, label_tiles
from vistumor.wsi.annotations import ROLE_EXCLUDE, ROLE_TUMOR, Region, TumorAnnotation, read_annotations


def annotation(*parts: tuple[str, object]) -> TumorAnnotation:
    return TumorAnnotation(Region(f"r{i}", "g", role, poly) for i, (role, poly) in enumerate(parts))


# -- exact fractions -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("x0", "y0", "w", "h", "expected"),
    [
        (0, 0, 10, 10, 1.0),
        (5, 5, 10, 10, 0.25),  # a 5 x 5 corner
        (-5, 0, 10, 10, 0.5),  # half outside, to the left
        (10, 0, 10, 10, 0.0),  # touching the edge only
        (2, 2, 4, 4, 1.0),  # inside
        (-10, -10, 40, 40, 100 / 1600),  # around
    ],
)
def test_square_fractions(x0, y0, w, h, expected):
    square = annotation((ROLE_TUMOR, box(0, 0, 10, 10)))
    assert square.tumor_fraction(x0, y0, w, h) == pytest.approx(expected, abs=1e-12)


def test_square_with_hole():
    ring = annotation((ROLE_TUMOR, Polygon(rectangle(0, 0, 10, 10), [rectangle(2, 2, 6, 6)])))
    assert ring.area == 100 - 16
    assert ring.tumor_fraction(0, 0, 10, 10) == pytest.approx(0.84)
    assert ring.tumor_fraction(2, 2, 4, 4) == 0.0  # the hole itself
    assert ring.tumor_fraction(0, 0, 4, 4) == pytest.approx(12 / 16)  # 2 x 2 of the hole inside


def test_exclusion_inside_lesion_is_subtracted(tmp_path):
    path = write_asap_xml(tmp_path / "t.xml", [
        ("lesion", "_0", rectangle(0, 0, 100, 100)),
        ("fat", "_2", rectangle(20, 20, 60, 60)),
    ])
    ann = read_annotations(path)
    assert ann.area == 10000 - 1600
    assert ann.tumor_fraction(20, 20, 40, 40) == 0.0
    assert ann.tumor_fraction(0, 0, 40, 40) == pytest.approx((1600 - 400) / 1600)
    assert [r.role for r in ann.regions] == [ROLE_TUMOR, ROLE_EXCLUDE]


def test_overlapping_tumor_polygons_not_double_counted(tmp_path):
    path = write_asap_xml(tmp_path / "t.xml", [
        ("a", "_0", rectangle(0, 0, 10, 10)),
        ("b", "_1", rectangle(5, 5, 15, 15)),
    ])
    ann = read_annotations(path)
    assert ann.area == 175  # 100 + 100 - 25
    assert ann.tumor_fraction(0, 0, 15, 15) == pytest.approx(175 / 225)
    assert ann.tumor_fraction(5, 5, 5, 5) == 1.0  # the overlap counts once, not twice


def test_exactly_five_percent_is_tumor(tmp_path):
    """A strip of 64 x 3.2 px covers exactly 5 % of a 64 px tile (float rounding aside)."""
    path = write_asap_xml(tmp_path / "t.xml", [
        ("five", "_0", rectangle(0, 0, 64, 3.2)),
        ("just under", "_0", rectangle(128, 0, 192, 3.19)),
    ])
    ann = read_annotations(path)
    fractions = ann.tumor_fractions([0, 128, 64], [0, 0, 0], 64, 64)
    assert fractions == pytest.approx([0.05, 3.19 / 64, 0.0], abs=1e-12)
    assert list(label_tiles(fractions, 0.05)) == [TUMOR_LABEL, AMBIGUOUS, 0]


def test_empty_annotation_has_zero_fractions():
    ann = TumorAnnotation()
    assert ann.is_empty
    assert list(ann.tumor_fractions([0, 10], [0, 0], 10, 10)) == [0.0, 0.0]
    assert not ann.rasterize(0, 0, 32, 32).any()
    with pytest.raises(AnnotationError, match="pass the slide dimensions"):
        ann.mask(4)


# -- rasters ---------------------------------------------------------------------------------


@pytest.mark.parametrize("downsample", [1, 4, 16])
def test_raster_area_equals_exact_area_for_aligned_shapes(downsample):
    ring = annotation(
        (ROLE_TUMOR, Polygon(rectangle(0, 0, 64, 64), [rectangle(16, 16, 48, 48)])),
        (ROLE_TUMOR, box(80, 16, 128, 112)),
    )
    raster = ring.mask(downsample, dimensions=(150, 130))  # no multiple of 4 or 16
    assert raster.shape == (np.ceil(130 / downsample), np.ceil(150 / downsample))
    assert raster.sum() * downsample**2 == ring.area == 64 * 64 - 32 * 32 + 48 * 96


def test_raster_pixels_are_downsample_wide():
    """Pixel column c covers level-0 x in [16 c, 16 c + 16) even when the width is no multiple."""
    strip = annotation((ROLE_TUMOR, box(80, 0, 96, 100)))  # exactly column 5 at downsample 16
    raster = strip.rasterize(0, 0, 100, 100, downsample=16)
    assert raster.shape == (7, 7)
    assert raster[:6, 5].all()  # row 6 has its centre at y = 104, below the strip
    assert raster.sum() == 6
    beyond = annotation((ROLE_TUMOR, box(101, 0, 112, 100)))  # in the last column's overhang
    assert beyond.rasterize(0, 0, 100, 100, downsample=16)[:6, 6].all()


def test_raster_of_a_window_with_offset():
    square = annotation((ROLE_TUMOR, box(100, 200, 120, 220)))
    window = square.rasterize(96, 196, 32, 32, downsample=4)
    expected = np.zeros((8, 8), bool)
    expected[1:6, 1:6] = True  # level-0 [100, 120) is window px [1, 6) at 4 px per px
    np.testing.assert_array_equal(window, expected)


@needs_real_fixtures
def test_real_tumor_001_raster_area_within_one_percent():
    ann = read_annotations(REAL_XML)
    assert len(ann.regions) == 2 and {r.group for r in ann.regions} == {"_0"}
    raster = ann.mask(16)
    x0, y0, x1, y1 = ann.geometry.bounds
    height, width = np.ceil(y1) + 1, np.ceil(x1) + 1  # the default extent: bounds from the origin
    assert raster.shape == (np.ceil(height / 16), np.ceil(width / 16))
    assert raster.sum() * 256 == pytest.approx(ann.area, rel=0.01)
    # a window around the lesions, at an offset that is no multiple of 16
    window = ann.rasterize(x0 - 3, y0 - 5, x1 - x0 + 50, y1 - y0 + 50, downsample=16)
    assert window.sum() * 256 == pytest.approx(ann.area, rel=0.01)


# -- GeoJSON ---------------------------------------------------------------------------------


def _feature(geometry: dict, name: str | None) -> dict:
    props = {"objectType": "annotation"}
    if name is not None:
        props["classification"] = {"name": name, "color": [200, 0, 0]}
    return {"type": "Feature", "geometry": geometry, "properties": props}


def _ring(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def test_geojson_polygons_multipolygons_holes_and_classes(tmp_path):
    features = [
        _feature({"type": "Polygon", "coordinates": [_ring(0, 0, 10, 10), _ring(2, 2, 4, 4)]},
                 "Tumor"),
        _feature({"type": "MultiPolygon", "coordinates": [
            [_ring(20, 0, 30, 10)],
            [_ring(40, 0, 50, 10), _ring(41, 1, 49, 9)],
        ]}, "Tumor"),
        _feature({"type": "Polygon", "coordinates": [_ring(20, 0, 25, 5)]}, "Exclusion"),
        _feature({"type": "Polygon", "coordinates": [_ring(100, 100, 200, 200)]}, "Stroma"),
        _feature({"type": "Point", "coordinates": [5, 5]}, "Tumor"),
    ]
    path = tmp_path / "slide.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    ann = read_annotations(path, {"Tumor": "tumor", "Exclusion": "exclude", "Stroma": "ignore"})
    assert ann.area == (100 - 4) + (100 - 25) + (100 - 64)
    assert ann.tumor_fraction(100, 100, 100, 100) == 0.0  # ignored
    assert ann.tumor_fraction(20, 0, 5, 5) == 0.0  # excluded


def test_geojson_unclassified_feature_must_be_mapped(tmp_path):
    path = tmp_path / "slide.json"
    square = _feature({"type": "Polygon", "coordinates": [_ring(0, 0, 5, 5)]}, None)
    path.write_text(json.dumps([square]))
    with pytest.raises(AnnotationError, match="'Unclassified'"):
        read_annotations(path)
    assert read_annotations(path, {"Unclassified": "tumor"}).area == 25


def test_malformed_geojson(tmp_path):
    path = tmp_path / "slide.geojson"
    path.write_text('{"type": "FeatureCollection", "features": [')
    with pytest.raises(AnnotationError, match="malformed JSON") as err:
        read_annotations(path)
    assert str(path) in str(err.value)


# -- bad XML ---------------------------------------------------------------------------------


def test_unmapped_group_names_file_and_group(tmp_path):
    path = write_asap_xml(tmp_path / "t.xml", [("odd", "_7", rectangle(0, 0, 5, 5))])
    with pytest.raises(AnnotationError) as err:
        read_annotations(path)
    message = str(err.value)
    assert str(path) in message and "'_7'" in message and "data.annotation_groups" in message


def test_malformed_xml(tmp_path):
    path = tmp_path / "t.xml"
    path.write_text('<ASAP_Annotations><Annotations><Annotation Name="a"')
    with pytest.raises(AnnotationError, match="malformed XML") as err:
        read_annotations(path)
    assert str(path) in str(err.value)


def test_not_an_asap_file(tmp_path):
    path = tmp_path / "t.xml"
    path.write_text("<svg><path/></svg>")
    with pytest.raises(AnnotationError, match="not an ASAP annotation file"):
        read_annotations(path)


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<ASAP_Annotations><Annotations>
<Annotation Name="&lol9;" Type="Polygon" PartOfGroup="_0"><Coordinates>
<Coordinate Order="0" X="0" Y="0"/><Coordinate Order="1" X="9" Y="0"/>
<Coordinate Order="2" X="9" Y="9"/>
</Coordinates></Annotation></Annotations></ASAP_Annotations>
"""

EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<ASAP_Annotations><Annotations>
<Annotation Name="&x;" Type="Polygon" PartOfGroup="_0"><Coordinates>
<Coordinate Order="0" X="0" Y="0"/><Coordinate Order="1" X="9" Y="0"/>
<Coordinate Order="2" X="9" Y="9"/>
</Coordinates></Annotation></Annotations></ASAP_Annotations>
"""


@pytest.mark.parametrize(
    "text", [BILLION_LAUGHS, EXTERNAL_ENTITY], ids=["billion-laughs", "external-entity"]
)
def test_hostile_xml_is_refused_fast(tmp_path, text):
    path = tmp_path / "hostile.xml"
    path.write_text(text)
    start = time.perf_counter()
    with pytest.raises(AnnotationError, match="refused hostile XML") as err:
        read_annotations(path)
    assert time.perf_counter() - start < 1.0
    assert str(path) in str(err.value)
    assert "root:" not in str(err.value)  # nothing of /etc/passwd leaks into the message


def test_fewer_than_three_vertices(tmp_path):
    path = write_asap_xml(tmp_path / "t.xml", [("line", "_0", [(0, 0), (5, 5)])])
    with pytest.raises(AnnotationError, match="'line' has fewer than 3 vertices"):
        read_annotations(path)


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_coordinates(tmp_path, value):
    path = write_asap_xml(tmp_path / "t.xml", [("bad", "_0", [(0, 0), (5, value), (5, 5)])])
    with pytest.raises(AnnotationError, match="'bad' has non-finite coordinates"):
        read_annotations(path)


def test_unparseable_coordinate(tmp_path):
    path = write_asap_xml(tmp_path / "t.xml", [("bad", "_0", [(0, 0), (5, "five"), (5, 5)])])
    with pytest.raises(AnnotationError, match="'bad' has a bad coordinate"):
        read_annotations(path)


def test_missing_file(tmp_path):
    with pytest.raises(AnnotationError, match="annotation file not found") as err:
        read_annotations(tmp_path / "tumor_009.xml")
    assert "tumor_009.xml" in str(err.value)


def test_unknown_role_in_mapping(tmp_path):
    path = write_asap_xml(tmp_path / "t.xml", [("a", "_0", rectangle(0, 0, 5, 5))])
    with pytest.raises(AnnotationError, match="unknown roles"):
        read_annotations(path, {"_0": "cancer"})


def test_vertex_order_follows_the_order_attribute(tmp_path):
    path = tmp_path / "t.xml"
    path.write_text(
        '<ASAP_Annotations><Annotations><Annotation Name="a" Type="Polygon" PartOfGroup="_0">'
        "<Coordinates>"
        '<Coordinate Order="2" X="10" Y="10"/><Coordinate Order="0" X="0" Y="0"/>'
        '<Coordinate Order="3" X="0" Y="10"/><Coordinate Order="1" X="10" Y="0"/>'
        "</Coordinates></Annotation></Annotations></ASAP_Annotations>"
    )
    assert read_annotations(path).area == 100  # in file order it would be a bow tie
