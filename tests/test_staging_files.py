"""Metastasis and pN categories from files: ``python -m vistumor.evaluate --lesions`` and a whole-slide run's
``evaluate_run``, on four hand-made slides of two CAMELYON17 patients."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import rectangle, write_asap_xml, write_tiff

from vistumor.evaluate.cli import main
from vistumor.evaluate.io import lesion_files
from vistumor.infer.inputs import SlideInput
from vistumor.infer.slide_run import ModelRun
from vistumor.labels import NORMAL, TUMOR
from vistumor.tasks.slide_evaluation import evaluate_run

SIZE = 3200  # level-0 px a side
#: slide -> (label, annotated lesion box or None, predicted lesion box or None, detections prob, x, y)
SLIDES = {
    # 1600 px square: 2263 px diagonal, 2.26 mm at 1 µm/px (macro); predicted 1400 px: 1.98 mm (micro)
    "patient_000_node_0": (TUMOR, (320, 320, 1920, 1920), (400, 400, 1800, 1800), [(0.9, 1000, 1000)]),
    # 100 px square: 0.141 mm (ITC), nothing predicted over it
    "patient_000_node_1": (TUMOR, (320, 320, 420, 420), None, [(0.4, 2800, 2800)]),
    "patient_000_node_2": (NORMAL, None, None, []),
    "patient_001_node_0": (NORMAL, None, None, [(0.2, 1600, 1600)]),
}


def geojson(boxes) -> dict:
    features = [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [rectangle(*b) + [b[:2]]]},
                 "properties": {"classification": {"name": "Tumor"}}} for b in boxes]
    return {"type": "FeatureCollection", "features": features}


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    """The slides' annotations, detection CSVs, predicted lesions (GeoJSON, and for
    node_0 a decoy XML the GeoJSON wins over; node_2 has no lesion file) and reference."""
    paths = {k: tmp_path / k for k in ("annotations", "predictions", "lesions")}
    for folder in paths.values():
        folder.mkdir()
    rows = ["slide,label,width,height"]
    for slide, (label, lesion, predicted, detections) in SLIDES.items():
        rows.append(f"{slide},{'tumor' if label == TUMOR else 'normal'},{SIZE},{SIZE}")
        if lesion:
            write_asap_xml(paths["annotations"] / f"{slide}.xml", [("lesion", "_0", rectangle(*lesion))])
        (paths["predictions"] / f"{slide}.csv").write_text("".join(f"{p},{x},{y}\n" for p, x, y in detections))
        if slide != "patient_000_node_2":
            (paths["lesions"] / f"{slide}.geojson").write_text(json.dumps(geojson([predicted] if predicted else [])))
    write_asap_xml(paths["lesions"] / "patient_000_node_0.xml", [("decoy", "Tumor", rectangle(0, 0, 3000, 3000))])
    paths["reference"] = tmp_path / "reference.csv"
    paths["reference"].write_text("\n".join(rows) + "\n")
    paths["out"] = tmp_path / "out"
    return paths


def argv(files: dict[str, Path], *extra: str) -> list[str]:
    keys = ("predictions", "annotations", "reference", "out")
    pairs = [item for key in keys for item in (f"--{key}", str(files[key]))]
    return [*pairs, "--bootstrap", "20", *extra]


def test_lesion_files_prefer_geojson(files):
    found = lesion_files(files["lesions"])
    assert found["patient_000_node_0"].suffix == ".geojson" and "patient_000_node_2" not in found


def test_cli_stages_patients_from_their_names(files, capsys):
    """patient_000: reference macro + ITC + negative = pN1, predicted micro + 2 negatives = pN1mi;
    patient_001: pN0 both. O has 1 at (pN0, pN0) and (pN1, pN1mi) = (3, 2); E = 1/2 at (0, 0),
    (0, 2), (3, 0), (3, 2); sum(w * O) = 1/16, sum(w * E) = (0 + 4 + 9 + 1) / 16 / 2 = 7/16:
    kappa = 1 - 1/7 = 6/7."""
    assert main(argv(files, "--lesions", str(files["lesions"]), "--mpp", "1.0")) == 0
    out = capsys.readouterr().out
    assert "metastasis categories: accuracy 0.500 (4 slides); lesions hit itc 0/1, micro 0/0, macro 1/1; " \
           "pN kappa 0.8571 (2 patients)" in out
    data = json.loads((files["out"] / "staging.json").read_text())
    assert [(s["slide"], s["reference"], s["predicted"]) for s in data["slides"]] == [
        ("patient_000_node_0", "macro", "micro"), ("patient_000_node_1", "itc", "negative"),
        ("patient_000_node_2", "negative", "negative"), ("patient_001_node_0", "negative", "negative")]
    assert data["confusion_matrix"]["counts"] == [[2, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0]]
    assert data["patients"]["patient_000"]["reference"] == "pN1" and data["kappa"] == pytest.approx(6 / 7)
    assert data["settings"]["mpp"] == 1.0 and (files["out"] / "staging.png").is_file()
    assert (files["out"] / "evaluation.json").is_file()  # the FROC report as before


def test_cli_patients_table(files, capsys, tmp_path):
    """x = node_0 + node_2: pN1 / pN1mi; y = node_1 + patient_001_node_0: pN0(i+) / pN0.
    O has 1 at (3, 2) and (1, 0): sum(w * O) = 2/16; E = 1/2 at (1, 0), (1, 2), (3, 0), (3, 2):
    sum(w * E) = (1 + 1 + 9 + 1) / 16 / 2 = 6/16; kappa = 1 - 2/6 = 2/3."""
    table = tmp_path / "patients.csv"
    table.write_text("slide,patient\npatient_000_node_0,x\npatient_000_node_2,x\npatient_000_node_1,y\n"
                     "patient_001_node_0,y\n")
    assert main(argv(files, "--lesions", str(files["lesions"]), "--mpp", "1", "--patients", str(table))) == 0
    data = json.loads((files["out"] / "staging.json").read_text())
    assert sorted(data["patients"]) == ["x", "y"] and data["kappa"] == pytest.approx(2 / 3)


def test_cli_takes_mpp_from_the_slides(files, tmp_path):
    """Slides recording 0.5 µm/px halve the sizes: node_0's lesion is 1.13 mm (micro)."""
    for slide in SLIDES:
        write_tiff(tmp_path / "slides" / f"{slide}.tif", np.full((256, 256, 3), 230, np.uint8), mpp=0.5)
    assert main(argv(files, "--lesions", str(files["lesions"]), "--slides", str(tmp_path / "slides"))) == 0
    data = json.loads((files["out"] / "staging.json").read_text())
    assert data["slides"][0]["mpp"] == 0.5 and data["slides"][0]["reference"] == "micro"


@pytest.mark.parametrize(("extra", "message"), [
    (("--patients", "p.csv"), "--patients and --mpp are for staging: give --lesions too"),
    (("--lesions", "LESIONS"), "slide 'patient_000_node_0': no µm per pixel"),
    (("--lesions", "LESIONS", "--mpp", "-1"), "--mpp must be a positive number"),
    (("--lesions", "CSVS", "--mpp", "1"), "tumor slide 'patient_000_node_0' has no predicted lesion file"),
])
def test_cli_staging_errors_are_one_line(files, capsys, extra, message):
    folders = {"LESIONS": str(files["lesions"]), "CSVS": str(files["predictions"])}  # CSVS: no lesion file
    assert main(argv(files, *(folders.get(e, e) for e in extra))) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_a_tumor_slide_whose_annotation_lies_outside_is_left_out_of_the_categories(files, capsys):
    """Issue 17.8: node_1's annotation lies wholly outside its slide; it leaves the lesion task
    and the categories (excluded, the reason in the settings) instead of being called negative."""
    outside = [("lesion", "_0", rectangle(5000, 5000, 5100, 5100))]
    write_asap_xml(files["annotations"] / "patient_000_node_1.xml", outside)
    assert main(argv(files, "--lesions", str(files["lesions"]), "--mpp", "1.0")) == 0, capsys.readouterr().err
    data = json.loads((files["out"] / "staging.json").read_text())
    assert data["excluded"] == ["patient_000_node_1"] and len(data["slides"]) == 3
    assert "lies outside the slide" in data["settings"]["unusable_annotations"]["patient_000_node_1"]


# -- a whole-slide run --------------------------------------------------------------------------


def fake_run(files: dict[str, Path], root: Path, mpp: float | None = 1.0) -> tuple[list[SlideInput], ModelRun]:
    """A finished run folder of model ``m`` over the four slides, as ``infer.py`` leaves it."""
    folder = root / "models" / "m"
    items = []
    for slide, (label, lesion, _, detections) in SLIDES.items():
        for kind in ("heatmaps", "detections", "lesions"):
            (folder / kind).mkdir(parents=True, exist_ok=True)
        sidecar = {"mpp": mpp, "width0": SIZE, "height0": SIZE}
        (folder / "heatmaps" / f"{slide}.json").write_text(json.dumps(sidecar))
        (folder / "detections" / f"{slide}.csv").write_text((files["predictions"] / f"{slide}.csv").read_text())
        lesions = files["lesions"] / f"{slide}.geojson"
        (folder / "lesions" / f"{slide}.geojson").write_text(lesions.read_text() if lesions.exists() else
                                                             json.dumps(geojson([])))
        (root / "status").mkdir(exist_ok=True)
        score = max((p for p, _, _ in detections), default=0.0)
        record = {"status": "done", "models": {"m": {"score": score}}}
        (root / "status" / f"{slide}.json").write_text(json.dumps(record))
        annotation = files["annotations"] / f"{slide}.xml" if lesion else None
        items.append(SlideInput(slide, root / f"{slide}.tif", label, annotation))
    return items, ModelRun("m", None, "m.ckpt", {}, 224, folder)


def test_evaluate_run_adds_the_staging(files, tmp_path):
    items, model = fake_run(files, tmp_path)
    result = evaluate_run(items, [model], tmp_path, seed=0)["m"]
    assert {"test/slide_auc", "test/slide_auc_ci95", "test/froc", "test/froc_ci95", "evaluation"} <= set(result)
    assert result["test/category_accuracy"] == 0.5 and result["test/kappa"] == pytest.approx(6 / 7)
    staging = json.loads(Path(result["staging"]).read_text())
    assert Path(result["staging"]).parent == Path(result["evaluation"]).parent
    assert staging["settings"]["patients"].startswith("slide names")


def test_evaluate_run_without_mpp_keeps_the_evaluation(files, tmp_path):
    items, model = fake_run(files, tmp_path, mpp=None)
    result = evaluate_run(items, [model], tmp_path)["m"]
    assert "test/froc" in result and "test/category_accuracy" not in result
    assert "no µm per pixel" in result["staging_skipped"]


def test_evaluate_run_with_a_patients_table(files, tmp_path):
    table = tmp_path / "patients.csv"
    table.write_text("slide,patient\npatient_000_node_0,x\npatient_000_node_2,x\npatient_000_node_1,y\n")
    items, model = fake_run(files, tmp_path)
    result = evaluate_run(items, [model], tmp_path, patients=table)["m"]
    # x: pN1 / pN1mi; y (node_1 only): pN0(i+) / pN0; patient_001_node_0 is in no patient: kappa 2/3
    assert result["test/kappa"] == pytest.approx(2 / 3)
