"""CAMELYON17's metastasis and pN categories, by hand: the longest diameter of hand-made polygons, each category
boundary, the pN rules, a quadratic weighted kappa worked out in the comments, the confusion
matrix and the per-category lesion sensitivity of hand-placed polygons."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from shapely.geometry import Polygon, box

from vistumor.errors import VisTumorError
from vistumor.evaluate.camelyon17.categories import (
    CATEGORIES,
    PN_CATEGORIES,
    category,
    feret_diameter,
    group_patients,
    patients_from_names,
    pn_category,
    read_patients,
    slide_category,
)
from vistumor.evaluate.camelyon17.evaluation import SlideLesions, categorise_slides
from vistumor.evaluate.camelyon17.kappa import confusion_matrix, kappa_of_matrix, quadratic_kappa, quadratic_weights
from vistumor.evaluate.camelyon17.report import write_pn_report

# -- the longest diameter ------------------------------------------------------------------------


def test_feret_of_a_3_4_5_triangle_is_its_hypotenuse():
    assert feret_diameter(Polygon([(0, 0), (30, 0), (0, 40)])) == pytest.approx(50.0, abs=1e-12)


def test_feret_of_a_rectangle_is_its_diagonal_holes_and_notches_change_nothing():
    rectangle = box(10, 20, 10 + 60, 20 + 80)  # diagonal sqrt(60**2 + 80**2) = 100
    assert feret_diameter(rectangle) == 100.0
    with_hole = Polygon(rectangle.exterior.coords, [box(30, 40, 40, 50).exterior.coords])
    notched = Polygon([(10, 20), (70, 20), (70, 100), (40, 60), (10, 100)])  # a V cut into one side
    assert feret_diameter(with_hole) == 100.0 and feret_diameter(notched) == 100.0  # still corner to corner


def test_feret_of_a_regular_polygon_and_of_nothing():
    angles = np.linspace(0, 2 * np.pi, 64, endpoint=False)  # 64-gon of radius 10: opposite vertices 20 apart
    assert feret_diameter(Polygon(np.stack([10 * np.cos(angles), 10 * np.sin(angles)], 1))) == pytest.approx(20)
    assert feret_diameter(Polygon()) == 0.0


# -- categories ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("mm", "expected"), [
    (None, "negative"), (0.0, "itc"), (0.2, "itc"), (0.2000001, "micro"), (2.0, "micro"), (2.0000001, "macro"),
])
def test_each_boundary(mm, expected):
    assert category(mm) == expected


def test_boundaries_measured_on_polygons():
    """At 0.25 µm/px: a 480 x 640 px box has an 800 px = 200 µm diagonal, exactly 0.2 mm (ITC);
    480 x 641 is 800.8 px (micro); a 4800 x 6400 px triangle's hypotenuse is 8000 px = 2.0 mm
    (micro), 4800 x 6401 px a box of 8000.8 px (macro)."""
    mpp = 0.25
    assert slide_category([box(0, 0, 480, 640)], mpp) == ("itc", 0.2)
    assert slide_category([box(0, 0, 480, 641)], mpp)[0] == "micro"
    assert slide_category([Polygon([(0, 0), (4800, 0), (0, 6400)])], mpp) == ("micro", 2.0)
    assert slide_category([box(0, 0, 4800, 6401)], mpp)[0] == "macro"
    assert slide_category([], mpp) == ("negative", None)


def test_the_largest_lesion_is_the_longest_not_the_widest():
    """A 100 x 100 px square (diagonal 141 px) has more area than a 10 x 1000 px strip (1000 px long)."""
    _, size = slide_category([box(0, 0, 100, 100), box(500, 0, 510, 1000)], mpp=1.0)
    assert size == pytest.approx(np.hypot(10, 1000) / 1000)


def test_bad_sizes_are_one_line_errors():
    with pytest.raises(VisTumorError, match="positive number"):
        slide_category([box(0, 0, 1, 1)], mpp=0)
    with pytest.raises(VisTumorError, match="finite size"):
        category(float("nan"))


# -- pN stage --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("nodes", "stage"), [
    ([], "pN0"),                                                       # no node at all
    (["negative"] * 5, "pN0"),
    (["itc", "negative", "itc"], "pN0(i+)"),                           # ITCs only
    (["micro", "itc", "negative"], "pN1mi"),                           # micro, no macro
    (["micro"] * 5, "pN1mi"),                                          # however many micro nodes
    (["macro"], "pN1"),
    (["macro", "micro", "micro", "itc", "itc"], "pN1"),                # 3 positive: ITC nodes do not count
    (["macro", "micro", "micro", "micro", "negative"], "pN2"),         # 4 positive, one a macro
    (["macro"] * 9, "pN2"),
])
def test_pn_rules(nodes, stage):
    assert pn_category(nodes) == stage


def test_pn3_and_unknown_categories_are_errors():
    with pytest.raises(VisTumorError, match="patient 'p': 10 positive nodes is pN3"):
        pn_category(["macro"] * 10, "p")
    with pytest.raises(VisTumorError, match="unknown node categories"):
        pn_category(["tumour"], "p")


def test_patients_from_camelyon17_names_or_a_table(tmp_path):
    slides = ["patient_004_node_4", "Patient_004_node_0", "patient_010_node_2", "test_001"]
    assert patients_from_names(slides) == {"patient_004_node_4": "patient_004", "Patient_004_node_0": "patient_004",
                                           "patient_010_node_2": "patient_010"}
    assert group_patients(slides) == {"patient_004": ["patient_004_node_4", "Patient_004_node_0"],
                                      "patient_010": ["patient_010_node_2"]}
    table = tmp_path / "patients.csv"
    table.write_text("slide,patient\nTEST_001,a\ntest_002,a\ntest_003,b\n")
    assert read_patients(table) == {"test_001": "a", "test_002": "a", "test_003": "b"}
    assert group_patients(["test_001", "test_003", "test_004"], read_patients(table)) == {
        "a": ["test_001"], "b": ["test_003"]}
    table.write_text("slide,patient\ntest_001,a\ntest_001,b\n")
    with pytest.raises(VisTumorError, match=r"patients.csv: row 3: slide 'test_001' is listed twice"):
        read_patients(table)


# -- kappa ---------------------------------------------------------------------------------------


def test_quadratic_kappa_by_hand():
    """Three ordered labels a < b < c, six items, reference by row and prediction by column:

        O = [[2, 1, 0],      rows sum to 3, 2, 1; columns to 2, 2, 2
             [0, 1, 1],
             [0, 0, 1]]
        w = (i - j)**2 / 2**2 = [[0, 1/4, 1], [1/4, 0, 1/4], [1, 1/4, 0]]
        sum(w * O) = 1/4 (a as b) + 1/4 (b as c) = 1/2
        E = outer([3, 2, 1], [2, 2, 2]) / 6 = rows of 1, 2/3 and 1/3
        sum(w * E) = 1 * (1/4 + 1) + 2/3 * (1/4 + 1/4) + 1/3 * (1 + 1/4) = 5/4 + 1/3 + 5/12 = 2
        kappa = 1 - (1/2) / 2 = 0.75
    """
    reference = ["a", "a", "a", "b", "b", "c"]
    predicted = ["a", "a", "b", "b", "c", "c"]
    assert confusion_matrix(reference, predicted, "abc").tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert quadratic_weights(3).tolist() == [[0, 0.25, 1], [0.25, 0, 0.25], [1, 0.25, 0]]
    assert quadratic_kappa(reference, predicted, "abc") == pytest.approx(0.75, abs=1e-12)


def test_kappa_identities():
    stages = list(PN_CATEGORIES)
    assert quadratic_kappa(stages, stages, PN_CATEGORIES) == 1.0                      # perfect agreement
    assert kappa_of_matrix(np.array([[1, 1], [1, 1]])) == 0.0                     # chance: w*O = w*E = 2
    assert kappa_of_matrix(np.array([[0, 1], [1, 0]])) == -1.0                    # reversed: 2 against 1
    assert math.isnan(quadratic_kappa(["pN0"] * 3, ["pN0"] * 3, PN_CATEGORIES))      # one stage only: undefined
    assert math.isnan(kappa_of_matrix(np.zeros((5, 5))))


def test_kappa_is_camelyon17s_sklearn_call():
    """The official script: ``cohen_kappa_score(y1, y2, labels=stage_list, weights='quadratic')``."""
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(20):
        reference, predicted = (list(rng.choice(PN_CATEGORIES, 12)) for _ in range(2))
        expected = metrics.cohen_kappa_score(reference, predicted, labels=list(PN_CATEGORIES), weights="quadratic")
        assert quadratic_kappa(reference, predicted, PN_CATEGORIES) == pytest.approx(expected, abs=1e-12)


def test_confusion_matrix_refuses_unknown_labels_and_unequal_lengths():
    with pytest.raises(VisTumorError, match=r"unknown labels \['pN3'\]"):
        confusion_matrix(["pN3"], ["pN0"], PN_CATEGORIES)
    with pytest.raises(VisTumorError, match="2 reference labels but 1 predictions"):
        confusion_matrix(["pN0", "pN0"], ["pN0"], PN_CATEGORIES)


# -- categories of hand-placed polygons ---------------------------------------------------------------


def hand_slides() -> list[SlideLesions]:
    """Four slides at 1 µm/px (1000 px = 1 mm):

    * ``s1``: normal, nothing predicted: negative / negative;
    * ``s2``: a 100 x 100 px lesion (0.141 mm, ITC) overlapped by a 300 x 400 px prediction
      (0.5 mm): ITC / micro, the ITC hit;
    * ``s3``: a 1200 x 1600 px lesion (2.0 mm exactly, micro) and a 50 x 50 px one (ITC); the
      only prediction, 100 x 100 px (ITC), touches the big lesion's corner and overlaps nothing:
      micro / ITC, neither lesion hit;
    * ``s4``: a 3000 x 4000 px lesion (5 mm, macro) holding a 2400 x 3200 px prediction (4 mm):
      macro / macro, hit.
    """
    return [
        SlideLesions("s1", 1.0, [], []),
        SlideLesions("s2", 1.0, [box(0, 0, 100, 100)], [box(50, 50, 350, 450)]),
        SlideLesions("s3", 1.0, [box(0, 0, 1200, 1600), box(5000, 5000, 5050, 5050)], [box(1200, 1600, 1300, 1700)]),
        SlideLesions("s4", 1.0, [box(0, 0, 3000, 4000)], [box(300, 400, 2700, 3600)]),
    ]


def test_confusion_matrix_accuracy_and_sensitivity_of_hand_placed_polygons():
    result = categorise_slides(hand_slides())
    assert [(s.reference, s.predicted) for s in result.slides] == [
        ("negative", "negative"), ("itc", "micro"), ("micro", "itc"), ("macro", "macro")]
    assert CATEGORIES == ("negative", "itc", "micro", "macro")
    assert result.confusion.tolist() == [[1, 0, 0, 0],   # negative
                                          [0, 0, 1, 0],   # itc as micro
                                          [0, 1, 0, 0],   # micro as itc
                                          [0, 0, 0, 1]]   # macro
    assert result.accuracy == 0.5
    assert result.sensitivity == {"itc": {"lesions": 2, "hit": 1, "sensitivity": 0.5},
                                   "micro": {"lesions": 1, "hit": 0, "sensitivity": 0.0},
                                   "macro": {"lesions": 1, "hit": 1, "sensitivity": 1.0}}
    assert [(h.slide, h.index, h.category, h.hit) for h in result.lesions] == [
        ("s2", 1, "itc", True), ("s3", 1, "micro", False), ("s3", 2, "itc", False), ("s4", 1, "macro", True)]
    assert result.patients == [] and result.kappa is None
    assert result.metrics() == {"test/category_accuracy": 0.5}


def test_pn_stages_and_kappa_of_patients(tmp_path):
    """Patients a (s1, s2: ITC only / micro predicted) and b (s3, s4: macro with a micro, 2
    positive nodes / macro with an ITC, 1 positive): reference pN0(i+), pN1; predicted pN1mi,
    pN1. O has a 1 at (pN0(i+), pN1mi) = (1, 2) and at (pN1, pN1) = (3, 3); w = (i - j)**2 / 16.
    sum(w * O) = 1/16; E = outer(rows, cols) / 2 puts 1/2 at (1, 2), (1, 3), (3, 2), (3, 3):
    sum(w * E) = (1 + 4 + 1 + 0) / 16 / 2 = 6/32; kappa = 1 - (1/16) / (6/32) = 2/3."""
    result = categorise_slides(hand_slides(), {"s1": "a", "S2": "a", "s3": "b", "s4": "b"})
    assert [(p.patient, p.slides, p.reference, p.predicted) for p in result.patients] == [
        ("a", ("s1", "s2"), "pN0(i+)", "pN1mi"), ("b", ("s3", "s4"), "pN1", "pN1")]
    assert result.kappa == pytest.approx(2 / 3)
    assert result.metrics("val") == {"val/category_accuracy": 0.5, "val/kappa": pytest.approx(2 / 3)}
    paths = write_pn_report(result, tmp_path, {"mode": "test"})
    data = json.loads(paths["json"].read_text())
    assert data["confusion_matrix"]["counts"] == result.confusion.tolist()
    assert data["pn_confusion_matrix"]["labels"] == list(PN_CATEGORIES)
    assert data["patients"]["b"] == {"slides": ["s3", "s4"], "reference": "pN1", "predicted": "pN1"}
    assert data["kappa"] == pytest.approx(2 / 3) and data["settings"] == {"mode": "test"}
    assert data["slides"][2]["reference_mm"] == 2.0 and data["lesion_sensitivity"]["itc"]["hit"] == 1
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_slide_given_twice_is_an_error():
    with pytest.raises(VisTumorError, match="given twice"):
        categorise_slides([SlideLesions("s1", 1.0, [], []), SlideLesions("S1", 1.0, [], [])])
