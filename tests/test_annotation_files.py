"""Annotation files written and read back: ASAP XML and QuPath GeoJSON keep polygons, groups,
holes, properties and hostile names; the synthetic generator's XML reads as it was drawn."""

from __future__ import annotations

import json

import numpy as np
import pytest
from shapely.geometry import MultiPolygon, Polygon

from vistumor.errors import AnnotationError
from vistumor.synthetic.lesions import Outline
from vistumor.synthetic.writer import annotation_xml
from vistumor.wsi.annotations import read_annotations
from vistumor.wsi.asap import HOLE_GROUP, asap_xml, read_asap_xml
from vistumor.wsi.geojson import feature_collection, geojson_feature, read_geojson
from vistumor.wsi.shapes import Shape

HOSTILE = 'a<&"\'>b </Annotation><!-- ]]>'
SQUARE_WITH_HOLE = Polygon([(0, 0), (100, 0), (100, 100), (0, 100)], [[(20, 20), (60, 20), (60, 60), (20, 60)]])
TRIANGLE = Polygon([(200.25, 10.5), (300, 10.5), (250, 90.75)])
TWO_PARTS = MultiPolygon([Polygon([(400, 0), (410, 0), (410, 10)]),
                          Polygon([(500, 0), (520, 0), (520, 20), (500, 20)])])


def test_asap_round_trip_keeps_names_groups_and_holes(tmp_path):
    path = tmp_path / "a.xml"
    path.write_text(asap_xml([(HOSTILE, "Tumor", SQUARE_WITH_HOLE), ("t", 'g"&<2>', TRIANGLE)],
                             {"Tumor": "#C80000"}))
    shapes = read_asap_xml(path)
    assert [(s.name, s.group) for s in shapes] == [
        (HOSTILE, "Tumor"), (f"{HOSTILE} hole 1", HOLE_GROUP), ("t", 'g"&<2>')]
    assert shapes[0].polygon.equals(Polygon(SQUARE_WITH_HOLE.exterior))
    assert shapes[1].polygon.equals(Polygon(SQUARE_WITH_HOLE.interiors[0]))
    assert list(shapes[2].polygon.exterior.coords) == list(TRIANGLE.exterior.coords)  # 2 decimals: exact
    # the hole is a hole again once its group means exclusion; every group used is defined
    tumor = read_annotations(path, {"Tumor": "tumor", 'g"&<2>': "tumor", HOLE_GROUP: "exclude"})
    assert tumor.area == 100 * 100 - 40 * 40 + TRIANGLE.area
    assert tumor.geometry.symmetric_difference(SQUARE_WITH_HOLE.union(TRIANGLE)).area == 0


def test_asap_writes_multipolygon_parts_and_an_empty_file(tmp_path):
    path = tmp_path / "m.xml"
    path.write_text(asap_xml([Shape("two", "_0", TWO_PARTS)], decimals=0))
    assert [(s.name, s.polygon.area) for s in read_asap_xml(path)] == [("two part 1", 50), ("two part 2", 400)]
    empty = asap_xml([], {"_0": "#FF0000"})
    assert "\t<Annotations>\n\t</Annotations>" in empty and '<Group Name="_0"' in empty
    path.write_text(empty)
    assert read_asap_xml(path) == []


def test_asap_coordinates_round_to_the_decimals_asked(tmp_path):
    path = tmp_path / "r.xml"
    path.write_text(asap_xml([("r", "_0", Polygon([(0.004, -0.001), (10.126, 0), (10, 10.5)]))], decimals=2))
    text = path.read_text()
    assert 'X="0" Y="0"' in text and 'X="10.13" Y="0"' in text and 'X="10" Y="10.5"' in text


def test_geojson_round_trip_keeps_everything(tmp_path):
    measurements = {"tumor_probability": 0.91, "area_mm2": None, "note": HOSTILE}
    features = [
        geojson_feature("id-1", HOSTILE, SQUARE_WITH_HOLE, "Tumor", (200, 0, 0), measurements=measurements),
        geojson_feature("id-2", "two", TWO_PARTS, 'Str"oma<', (0, 200, 0), extra=[1, 2]),
    ]
    path = tmp_path / "a.geojson"
    path.write_text(json.dumps(feature_collection(features)))
    first, second = read_geojson(path)
    assert (first.id, first.name, first.group) == ("id-1", HOSTILE, "Tumor")
    assert dict(first.properties) == {"measurements": measurements}
    assert first.polygon.equals(SQUARE_WITH_HOLE) and len(first.polygon.interiors) == 1
    assert first.rings == [list(SQUARE_WITH_HOLE.exterior.coords), list(SQUARE_WITH_HOLE.interiors[0].coords)]
    assert (second.id, second.group, dict(second.properties)) == ("id-2", 'Str"oma<', {"extra": [1, 2]})
    assert isinstance(second.polygon, MultiPolygon) and second.polygon.equals(TWO_PARTS)
    tumor = read_annotations(path, {"Tumor": "tumor", 'Str"oma<': "ignore"})
    assert tumor.area == 100 * 100 - 40 * 40


def test_geojson_reader_takes_single_features_and_skips_points(tmp_path):
    path = tmp_path / "one.json"
    feature = geojson_feature("x", "x", TRIANGLE, "Tumor", (1, 2, 3))
    path.write_text(json.dumps([feature, {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}}]))
    assert [s.name for s in read_geojson(path)] == ["x"]
    path.write_text(json.dumps({**feature, "properties": {}}))  # no name, no class: id and Unclassified
    (shape,) = read_geojson(path)
    assert (shape.name, shape.group, dict(shape.properties)) == ("x", "Unclassified", {})


def test_the_synthetic_generator_xml_reads_as_drawn(tmp_path):
    angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    circle = np.round((3000 + 1234.567 * np.stack([np.cos(angles), np.sin(angles)], 1)) * 8) / 8  # 1/8 px
    outlines = [
        Outline(HOSTILE, "_0", "large", circle),
        Outline("Annotation 1", "_2", "exclusion", np.array([[0, 0], [8.125, 0], [8.125, 4.875]])),
    ]
    path = tmp_path / "s.xml"
    path.write_text(annotation_xml(outlines))
    text = path.read_text()
    assert text.startswith('<?xml version="1.0"?>\n<ASAP_Annotations>\n\t<Annotations>')
    assert text.count("<Group ") == 3 and text.count('Color="#F4FA58"') == 2
    shapes = read_asap_xml(path)
    assert [(s.name, s.group) for s in shapes] == [(o.name, o.group) for o in outlines]
    for shape, outline in zip(shapes, outlines, strict=True):
        assert np.array_equal(np.asarray(shape.polygon.exterior.coords)[:-1], outline.vertices)


@pytest.mark.parametrize("bad", ["<ASAP_Annotations><Annotations>", "not xml at all", ""])
def test_asap_reader_refuses_malformed_files_in_one_line(tmp_path, bad):
    path = tmp_path / "bad.xml"
    path.write_text(bad)
    with pytest.raises(AnnotationError, match="bad.xml: malformed XML"):
        read_asap_xml(path)
