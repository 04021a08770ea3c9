"""One slide catalog (vistumor/wsi/catalog.py): slides and annotations are found by one rule
(names match ignoring case; two files of one name are refused in one line naming both), and
tiling and whole-slide inference agree on every slide's annotation (issue 16.1, 17.2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vistumor.errors import ConfigError
from vistumor.infer import inputs
from vistumor.tiling.catalog import find_slides
from vistumor.wsi.catalog import (
    Annotations,
    find_annotation,
    glob_slides,
    index_folder,
    locate_slides,
    slide_files,
)


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_a_slide_finds_its_annotation_ignoring_case_in_tiling_and_in_inference(tmp_path):
    """On the old main tiling looked for ``Tumor_001.xml`` only (exact name) and inference also
    tried ``tumor_001.xml``: this slide had an annotation at inference but not at tiling."""
    slide = touch(tmp_path / "training" / "tumor" / "Tumor_001.tif")
    xml = touch(tmp_path / "training" / "lesion_annotations" / "tumor_001.xml")
    layout = {"slides": {"tumor": ["training/tumor/*.tif"]}, "annotation_dir": "training/lesion_annotations"}
    tiled = find_slides(tmp_path, layout["slides"], layout["annotation_dir"])
    inferred = inputs.from_layout(tmp_path, layout)
    assert [(r.slide_id, r.path, r.annotation) for r in tiled] == [("Tumor_001", slide, xml)]
    assert [(s.slide_id, s.path, s.annotation) for s in inferred] == [("Tumor_001", slide, xml)]
    assert inputs.from_files([slide], xml.parent)[0].annotation == xml


def test_annotations_prefer_xml_and_ignore_other_files(tmp_path):
    for name in ("a.geojson", "a.XML", "b.GeoJSON", "c.json", "d.txt", ".e.xml", "f_mask.tif"):
        touch(tmp_path / name)
    found = index_folder(tmp_path)
    assert found == {"a": tmp_path / "a.XML", "b": tmp_path / "b.GeoJSON", "c": tmp_path / "c.json"}
    assert find_annotation(tmp_path, "A") == tmp_path / "a.XML"
    assert find_annotation(tmp_path, "d") is None and find_annotation(None, "a") is None
    assert Annotations(tmp_path / "missing").find("a") is None
    assert index_folder(tmp_path, (".tif",), strip="_mask") == {"f": tmp_path / "f_mask.tif"}


def test_two_annotations_of_one_name_are_refused_naming_both(tmp_path):
    touch(tmp_path / "ann" / "a.xml")
    touch(tmp_path / "ann" / "A.xml")
    touch(tmp_path / "slides" / "a.tif")
    with pytest.raises(ConfigError) as err:
        inputs.from_files([tmp_path / "slides"], tmp_path / "ann")
    message = str(err.value)
    assert "A.xml and a.xml are both slide 'a'" in message and str(tmp_path / "ann") in message
    assert "\n" not in message


def test_slide_files_of_a_folder_skip_other_files_and_keep_a_lists_order(tmp_path):
    for name in ("b.svs", "a.TIF", "notes.txt", ".hidden.tif"):
        touch(tmp_path / name)
    assert slide_files([tmp_path]) == [tmp_path / "a.TIF", tmp_path / "b.svs"]
    assert slide_files([tmp_path / "b.svs", tmp_path / "a.TIF"]) == [tmp_path / "b.svs", tmp_path / "a.TIF"]
    with pytest.raises(ConfigError, match="slide file or folder not found"):
        slide_files([tmp_path / "nowhere.tif"])


def test_glob_slides_refuse_one_name_across_kinds(tmp_path):
    touch(tmp_path / "normal" / "s1.tif")
    touch(tmp_path / "tumor" / "S1.tif")
    touch(tmp_path / "tumor" / "s2.tif")
    assert glob_slides(tmp_path, {"tumor": "tumor/*.tif"}) == [("tumor", tmp_path / "tumor" / "S1.tif"),
                                                              ("tumor", tmp_path / "tumor" / "s2.tif")]
    with pytest.raises(ConfigError, match=r"normal/s1.tif and .*tumor/S1.tif are both slide 's1'"):
        glob_slides(tmp_path, {"normal": ["normal/*.tif"], "tumor": ["tumor/*.tif"]})
    with pytest.raises(ConfigError, match=r"are both slide 's1'"):
        find_slides(tmp_path, {"normal": ["normal/*.tif"], "tumor": ["tumor/*.tif"]}, None)


def test_slides_whose_names_differ_only_by_case_are_refused_naming_both(tmp_path):
    """Issue 17.2: ``a.tif`` and ``a.TIF`` in one folder were both run as slide ``a``; one
    slide's outputs overwrote the other's and the run exited 0."""
    touch(tmp_path / "a.tif")
    touch(tmp_path / "a.TIF")
    touch(tmp_path / "b.tif")
    with pytest.raises(ConfigError) as err:
        inputs.from_files([tmp_path])
    message = str(err.value)
    assert f"{tmp_path / 'a.TIF'} and {tmp_path / 'a.tif'} are both slide 'a'" in message
    assert "\n" not in message


def test_locate_slides_searches_sub_folders_ignoring_case(tmp_path):
    slide = touch(tmp_path / "scans" / "2024" / "TUMOR_001.svs")
    touch(tmp_path / "scans" / "tumor_001.txt")
    touch(tmp_path / "other.tif")
    assert locate_slides(tmp_path, ["tumor_001", "normal_009"]) == {"tumor_001": slide}
    twin = touch(tmp_path / "copy" / "tumor_001.tif")
    with pytest.raises(ConfigError, match=f"{twin} and {slide} are both slide 'tumor_001'"):
        locate_slides(tmp_path, ["tumor_001"])


def test_the_evaluation_finds_reference_annotations_by_the_same_rule(tmp_path):
    """Evaluation's lookup was its own (lower-case stems; any two files of one slide refused):
    ``Test_001.XML`` beside the official ``test_001_Mask.tif`` stopped the evaluation."""
    from vistumor.evaluate.io import annotation_files, lesion_files

    xml, mask = touch(tmp_path / "Test_001.XML"), touch(tmp_path / "test_001_Mask.tif")
    other = touch(tmp_path / "test_002_mask.tif")
    assert annotation_files(tmp_path) == {"test_001": xml, "test_002": other}
    assert find_annotation(tmp_path, "TEST_001") == xml and mask.is_file()
    touch(tmp_path / "test_002_MASK.tif")
    with pytest.raises(ConfigError, match="test_002_MASK.tif and test_002_mask.tif are both slide 'test_002'"):
        annotation_files(tmp_path)
    lesions = tmp_path / "lesions"
    geojson, _ = touch(lesions / "A.geojson"), touch(lesions / "a.xml")
    assert lesion_files(lesions) == {"a": geojson}
