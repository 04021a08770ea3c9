"""``python -m vistumor.evaluate``: files in, report out, one-line errors; official mask TIFFs
read at level 5 and equal to the official script run on them."""

from __future__ import annotations

import csv
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import official_froc as official
import pytest
import tifffile
from conftest import PROJECT, rectangle, tissue_image, write_asap_xml, write_tiff

from vistumor.errors import USER_ERROR_STATUS, VisTumorError, user_error
from vistumor.evaluate.cli import main
from vistumor.evaluate.io import read_detections, read_reference
from vistumor.labels import NORMAL, TUMOR

SIZE = 3200  # level-0 px a side: a 100 x 100 px evaluation mask


def at(r: int, c: int) -> tuple[int, int]:
    return c * 32 + 16, r * 32 + 16


def write_csv(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{p},{x},{y}\n" for p, (x, y) in rows))
    return path


def write_mask_tiff(path: Path, level5: np.ndarray) -> Path:
    """A 6-level mask TIFF whose level 5 is ``level5`` exactly (each level a 2x upscale)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tifffile.TiffWriter(path) as tif:
        for level in range(6):
            f = 2 ** (5 - level)
            image = np.repeat(np.repeat(level5, f, axis=0), f, axis=1)
            tif.write(np.repeat(image[:, :, None], 3, axis=2), tile=(64, 64), compression="zlib",
                      photometric="rgb", subfiletype=0 if level == 0 else 1)
    return path


@pytest.fixture
def scenario(tmp_path) -> dict[str, Path]:
    """test_001 and test_002 are tumor slides with one lesion each, level-0 [320, 1920)^2
    (mask pixels 10-59); test_003 is normal. test_001's lesion is hit at 0.9 (the file is
    spelled Test_001.csv), test_002's is missed and it has a false positive at 0.7;
    test_003 has a false positive at 0.5.

    Official FROC: FPs [0.7, 0.5], TP list [f32(0.9), 0]: thresholds 0.5, 0.7, 0.9 give
    FPs/slide 2/3, 1/3, 0 at sensitivity 0.5, then (0, 0): 0.5 at every rate, FROC 0.5.
    Slide scores 0.9, 0.7 (tumor) and 0.5 (normal): AUC 1.
    """
    for name in ("test_001", "test_002"):
        write_asap_xml(tmp_path / "xml" / f"{name}.xml", [("lesion", "_0", rectangle(320, 320, 1920, 1920))])
    write_csv(tmp_path / "preds" / "Test_001.csv", [(0.9, at(30, 30))])
    write_csv(tmp_path / "preds" / "test_002.csv", [(0.7, at(90, 90))])
    write_csv(tmp_path / "preds" / "test_003.csv", [(0.5, at(30, 30))])
    reference = tmp_path / "reference.csv"
    reference.write_text(f"slide,label,width,height\ntest_001,tumor,{SIZE},{SIZE}\n"
                         f"test_002,Tumor,{SIZE},{SIZE}\ntest_003,0,,\n")
    return {"predictions": tmp_path / "preds", "annotations": tmp_path / "xml", "reference": reference,
            "out": tmp_path / "out"}


def argv(paths: dict[str, Path], *extra: str) -> list[str]:
    pairs = [item for key, path in paths.items() for item in (f"--{key}", str(path))]
    return [*pairs, "--bootstrap", "50", *extra]


def test_cli_writes_the_report(scenario, capsys):
    assert main(argv(scenario)) == 0
    assert "FROC 0.5000" in capsys.readouterr().out
    out = scenario["out"]
    report = json.loads((out / "evaluation.json").read_text())
    assert report["froc"] == 0.5 and report["auc"] == 1.0 and report["mode"] == "official"
    assert report["sensitivity_at_fp"] == {"0.25": 0.5, "0.5": 0.5, "1": 0.5, "2": 0.5, "4": 0.5, "8": 0.5}
    assert report["slides"] == {"auc": 3, "froc": 3}
    per_slide = {"test_001": 0, "test_002": 1, "test_003": 1}
    assert report["false_positives"] == {"count": 2, "per_slide": per_slide}
    lesion = report["lesions"][0]
    assert (lesion["slide"], lesion["label"], lesion["itc"]) == ("test_001", 1, False)
    assert lesion["probability"] == 0.9
    assert (lesion["x"], lesion["y"]) == at(30, 30) and report["lesions"][1]["probability"] is None
    # the 50 px square grown by 4 px: 58^2 less, at each corner, the 3 pixels (3, 4), (4, 3)
    # and (4, 4) px off the corner (25 and 32 > 4.82^2); a pixel is 0.243 * 32 = 7.776 um
    assert lesion["area_um2"] == pytest.approx((58**2 - 12) * 7.776**2, abs=1e-2)
    assert len(report["auc_ci95"]) == 2 and len(report["froc_ci95"]) == 2
    rows = list(csv.DictReader((out / "per_slide.csv").open()))
    assert [(r["slide"], r["label"], r["score"], r["hits"], r["false_positives"]) for r in rows] == [
        ("test_001", "tumor", "0.9", "1", "0"), ("test_002", "tumor", "0.7", "0", "1"),
        ("test_003", "normal", "0.5", "0", "1")]
    assert (out / "froc.png").stat().st_size > 0 and (out / "roc.png").stat().st_size > 0


def test_strict_mode_and_scores_file(scenario, tmp_path):
    scores = tmp_path / "scores.csv"
    scores.write_text("slide,score\nTEST_001,0.1\ntest_002,0.2\ntest_003,0.3\n")
    assert main(argv(scenario, "--mode", "strict", "--scores", str(scores))) == 0
    report = json.loads((scenario["out"] / "evaluation.json").read_text())
    assert report["mode"] == "strict" and report["auc"] == 0.0


@pytest.mark.parametrize(("change", "message"), [
    (lambda s: write_csv(s["predictions"] / "test_999.csv", []), r"test_999.csv: no slide of the reference"),
    (lambda s: (s["predictions"] / "test_002.csv").unlink(), r"tumor slide 'test_002' has no predictions"),
    (lambda s: write_csv(s["predictions"] / "test_002.csv", [(0.5, (SIZE + 40, 10))]),
     r"slide test_002: detection 1 .*\(3240, 10\) lies outside"),
    (lambda s: s["reference"].write_text("slide,label\ntest_001,tumor\ntest_002,tumor\ntest_003,normal\n"),
     r"test_001.xml: slide dimensions are unknown"),
    (lambda s: (s["predictions"] / "test_003.csv").write_text("prob,x,y\n0.5,1,1\n"),
     r"test_003.csv: line 1: expected 'prob,x,y' numbers"),
])
def test_cli_errors_are_one_line(scenario, capsys, change, message):
    change(scenario)
    assert main(argv(scenario)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert re.search(message, err), err


@pytest.mark.parametrize(("rows", "message"), [
    ([(0.5, at(1, 1)), (-0.5, at(30, 30))], r"test_003.csv: line 2: probability -0.5 outside \[0, 1\]"),
    ([(1.5, at(1, 1))], r"test_003.csv: line 1: probability 1.5 outside \[0, 1\]"),
    ([(float("nan"), at(1, 1))], r"test_003.csv: line 1: probability nan outside \[0, 1\]"),
])
def test_probabilities_outside_zero_one_are_refused(scenario, capsys, rows, message):
    """Issue 17.3: a -0.5 sat below the script's 0 placeholders and gave FROC 2.0 (sensitivity
    2.5) with exit 0; now the file and its line are named, and nothing is written."""
    write_csv(scenario["predictions"] / "test_003.csv", rows)
    assert main(argv(scenario)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and re.search(message, err), err
    assert not scenario["out"].exists()


@pytest.mark.parametrize(("change", "message"), [
    (lambda s: (s["predictions"] / "test_003.csv").write_bytes(b"0.5,48,48\n0.\xff5,1,1\n"),
     r"test_003.csv: not UTF-8 text \(byte 12: b'\\xff'\)"),
    (lambda s: s["reference"].write_bytes(s["reference"].read_text().replace("test_003", "t\xe9st_003")
                                          .encode("latin-1")), r"reference.csv: not UTF-8 text"),
    (lambda s: None, r"--pixel-um\) must be a positive number .* got nan"),
    (lambda s: None, r"--pixel-um\) must be a positive number .* got 0.0"),
    (lambda s: None, r"--pixel-um\) must be a positive number .* got inf"),
    (lambda s: None, r"--margin-um\) must be a finite number .* got -1.0"),
    (lambda s: s["out"].write_text("a file"), r"out: the output folder is a file"),
])
def test_unreadable_inputs_and_bad_numbers_are_one_line(scenario, capsys, change, message):
    """Issue 17.7: a non-UTF-8 CSV or reference, a NaN/0/inf pixel size, a negative margin or an
    --out that is a file gave a traceback; now one line naming the file or the flag."""
    change(scenario)
    flag = re.search(r"--(pixel-um|margin-um)\S* .* got (\S+)$", message)
    extra = (f"--{flag.group(1)}", flag.group(2)) if flag else ()
    assert main(argv(scenario, *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and re.search(message, err), err


def test_a_byte_order_mark_is_accepted(scenario, capsys):
    """Issue 17.7: Excel's "CSV UTF-8" starts with a BOM, which made the header
    '\\ufeffslide' unknown; the reference and the detection CSVs now read as without it."""
    scenario["reference"].write_text("\ufeff" + scenario["reference"].read_text(), encoding="utf-8")
    csv_file = scenario["predictions"] / "test_003.csv"
    csv_file.write_text("\ufeff" + csv_file.read_text(), encoding="utf-8")
    assert main(argv(scenario)) == 0, capsys.readouterr().err
    assert json.loads((scenario["out"] / "evaluation.json").read_text())["froc"] == 0.5


@pytest.mark.parametrize(("annotation", "why"), [
    ([], "it holds no tumor region"),
    ([("lesion", "_0", rectangle(4000, 4000, 4800, 4800))],
     "the tumor annotation spans x 4000-4800, y 4000-4800: it lies outside the slide \\(3200 x 3200 px"),
])
def test_a_tumor_slide_whose_annotation_gives_no_lesion_is_named_not_scored(scenario, caplog, annotation, why):
    """Issue 17.8: test_002's annotation has no polygon, or lies wholly outside its 3200 px slide.
    It used to count 0 lesions and its detection (0.7) as a false positive, silently. Now a
    warning names it and why; it leaves the lesion task (2 slides: test_001's lesion hit at 0.9,
    test_003's false positive at 0.5), is marked in per_slide.csv and evaluation.json, and keeps
    its place in the slide task (AUC over 3 slides)."""
    write_asap_xml(scenario["annotations"] / "test_002.xml", annotation)
    with caplog.at_level(logging.WARNING):
        assert main(argv(scenario)) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and re.search(rf"tumor slide 'test_002': annotation unusable \(.*test_002.xml: {why}",
                                            warnings[0]), warnings
    assert "left out of the lesion task" in warnings[0]
    report = json.loads((scenario["out"] / "evaluation.json").read_text())
    assert report["slides"] == {"auc": 3, "froc": 2} and list(report["unusable_annotations"]) == ["test_002"]
    assert report["false_positives"] == {"count": 1, "per_slide": {"test_001": 0, "test_003": 1}}
    assert report["froc"] == 1.0 and report["n_lesions"] == 1
    rows = {r["slide"]: r for r in csv.DictReader((scenario["out"] / "per_slide.csv").open())}
    assert rows["test_002"]["annotation"].startswith("unusable (") and rows["test_002"]["hits"] == ""
    assert rows["test_001"]["annotation"] == "" and rows["test_002"]["score"] == "0.7"


def test_one_error_path_for_every_command_line(tmp_path, capsys):
    """``user_error`` is the one path: a line on stderr (or the log) and exit status 2; the
    comparison CLI takes it too."""
    from vistumor.runs.compare import main as compare_main

    assert user_error(VisTumorError("bad value 3", "a.csv")) == USER_ERROR_STATUS == 2
    assert capsys.readouterr().err == "error: a.csv: bad value 3\n"
    assert compare_main([str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'nowhere'}: not a folder\n"


def test_dimensions_from_the_slides_folder(tmp_path, capsys):
    """No width/height in the reference: the 2048 x 1536 slide file gives them."""
    write_tiff(tmp_path / "slides" / "Tumor_001.tif", tissue_image(width=2048, height=1536))
    write_asap_xml(tmp_path / "xml" / "tumor_001.xml", [("lesion", "_0", rectangle(320, 320, 1920, 1280))])
    write_csv(tmp_path / "preds" / "tumor_001.csv", [(0.8, (1000, 1000))])
    write_csv(tmp_path / "preds" / "normal_001.csv", [])
    (tmp_path / "ref.csv").write_text("slide,label\ntumor_001,tumor\nnormal_001,normal\n")
    args = ["--predictions", str(tmp_path / "preds"), "--annotations", str(tmp_path / "xml"), "--reference",
            str(tmp_path / "ref.csv"), "--slides", str(tmp_path / "slides"), "--out", str(tmp_path / "out")]
    assert main(args) == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert report["lesions"][0]["probability"] == 0.8 and report["auc"] == 1.0


def mask_scenario(tmp_path: Path, value: int) -> tuple[Path, Path]:
    """Official-style inputs: mask TIFFs named like the CSVs; detections from NCRF-like
    5-decimal probabilities, some on lesions, an ITC, background and a normal slide."""
    rng = np.random.default_rng(7)
    for i, name in enumerate(("test_001", "test_002", "test_003")):
        level5 = np.zeros((48, 64), np.uint8)
        level5[5 + i : 25, 5:30] = value
        level5[35:37, 50 - i : 52] = value  # ITC
        level5[30:45, 10:14 + 3 * i] = value
        write_mask_tiff(tmp_path / "masks" / f"{name}.tif", level5)
    for name in ("test_001", "test_002", "test_003", "test_004", "test_005"):
        n = int(rng.integers(3, 9))
        xs, ys = rng.integers(0, 64 * 32, n), rng.integers(0, 48 * 32, n)
        write_csv(tmp_path / "csv" / f"{name}.csv", zip(np.round(rng.random(n), 5), zip(xs, ys, strict=True),
                                                       strict=True))
    reference = tmp_path / "reference.csv"
    reference.write_text("Test_001,Tumor,Macro,Primary\nTest_002,Tumor\nTest_003,Tumor\nTest_004,Normal\n"
                         "Test_005,Normal\n")
    return tmp_path, reference


def test_mask_tiffs_equal_the_official_script_and_accept_zero_one(tmp_path):
    root, reference = mask_scenario(tmp_path / "a", 255)
    fps, sensitivity, score = official.evaluate_folders(str(root / "masks"), str(root / "csv"))
    curves = []
    for folder in (root, mask_scenario(tmp_path / "b", 1)[0]):  # 0/255 masks, then 0/1
        out = folder / "out"
        assert main(["--predictions", str(folder / "csv"), "--annotations", str(folder / "masks"),
                     "--reference", str(reference), "--out", str(out), "--exclude", "--bootstrap", "20"]) == 0
        curves.append(json.loads((out / "evaluation.json").read_text()))
    for report in curves:
        assert report["curve"]["fp_per_slide"] == fps.tolist()
        assert report["curve"]["sensitivity"] == sensitivity.tolist()
        assert report["froc"] == score and report["slides"] == {"auc": 5, "froc": 5}
    assert any(lesion["itc"] for lesion in curves[0]["lesions"])


def test_readers(tmp_path):
    ref = tmp_path / "reference.csv"
    ref.write_text("Test_001,Tumor,Micro,Primary\ntest_002,Normal\n")  # the official reference.csv
    assert [(s.slide, s.label, s.dimensions) for s in read_reference(ref)] == [
        ("Test_001", TUMOR, None), ("test_002", NORMAL, None)]
    ref.write_text("slide,label,width,height\na,1,10,20\nb,0,,\n")
    assert [(s.label, s.dimensions) for s in read_reference(ref)] == [(TUMOR, (10, 20)), (NORMAL, None)]
    preds = write_csv(tmp_path / "p.csv", [(0.5, (1, 2))])
    preds.write_text(preds.read_text() + "\n0.25,3.0,4,extra\n")
    assert read_detections(preds).tolist() == [[0.5, 1, 2], [0.25, 3, 4]]


def test_module_runs_as_a_command(scenario):
    result = subprocess.run([sys.executable, "-m", "vistumor.evaluate", *argv(scenario)], cwd=PROJECT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "FROC 0.5000" in result.stdout and (scenario["out"] / "evaluation.json").is_file()
