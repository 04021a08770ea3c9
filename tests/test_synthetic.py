"""Known-answer checks of the synthetic CAMELYON16-like dataset (small slides, ~1536 px)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import defusedxml.ElementTree as ET
import numpy as np
import openslide
import pytest
import tifffile
from shapely.geometry import Polygon

from vistumor import synthetic
from vistumor.errors import ConfigError

SIZE = 1536
MPP = 0.25
FIXTURES = Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, list[Path]]:
    """Rendered by two worker processes; tests compare slides with in-process renders."""
    root = tmp_path_factory.mktemp("synthetic")
    paths = synthetic.generate_dataset(root, n_normal=2, n_tumor=2, size=SIZE, mpp=MPP, seed=0, workers=2)
    return root, paths


def read_outlines(xml: Path) -> list[tuple[str, np.ndarray]]:
    """(group, vertices) per ASAP annotation, the way a CAMELYON16 reader sees them."""
    outlines = []
    for annotation in ET.parse(xml).getroot().iter("Annotation"):
        coords = sorted(annotation.iter("Coordinate"), key=lambda c: int(c.get("Order")))
        vertices = np.array([[float(c.get("X")), float(c.get("Y"))] for c in coords])
        outlines.append((annotation.get("PartOfGroup"), vertices))
    return outlines


def level_rgb(slide: openslide.OpenSlide, level: int) -> np.ndarray:
    return np.asarray(slide.read_region((0, 0), level, slide.level_dimensions[level]).convert("RGB"))


def tumor_mask(outlines, shape) -> np.ndarray:
    """Level-0 mask of the tumor groups minus the exclusions."""
    mask = np.zeros(shape, np.uint8)
    for group, vertices in outlines:
        if group != "_2":
            cv2.fillPoly(mask, [np.rint(vertices).astype(np.int32)], 1)
    for group, vertices in outlines:
        if group == "_2":
            cv2.fillPoly(mask, [np.rint(vertices).astype(np.int32)], 0)
    return mask


def blob_scale_ratio(gray: np.ndarray, where: np.ndarray) -> float:
    """Nucleus size: scale-normalised Laplacian-of-Gaussian energy of ~40 px blobs (sigma 15)
    over ~20 px blobs (sigma 7). Tumor nuclei are about twice a lymphocyte."""
    energy = [
        np.mean((cv2.Laplacian(cv2.GaussianBlur(gray, (0, 0), s), cv2.CV_32F) * s * s)[where] ** 2)
        for s in (7, 15)
    ]
    return energy[1] / energy[0]


def tissue_mask(rgb: np.ndarray) -> np.ndarray:
    gray = rgb.astype(np.float32).mean(2)
    glass = np.percentile(gray, 95)
    return cv2.GaussianBlur((gray < 0.88 * glass).astype(np.float32), (0, 0), 15) > 0.5


def test_layout_matches_camelyon16(dataset):
    root, paths = dataset
    training = root / "training"
    assert paths == [
        training / "normal" / "normal_001.tif",
        training / "normal" / "normal_002.tif",
        training / "tumor" / "tumor_001.tif",
        training / "tumor" / "tumor_002.tif",
    ]
    assert all(p.is_file() for p in paths)
    xmls = sorted((training / "lesion_annotations").iterdir())
    assert [p.name for p in xmls] == ["tumor_001.xml", "tumor_002.xml"]
    assert not list(root.rglob("*.tmp"))
    record = json.loads((root / synthetic.MANIFEST).read_text())
    assert record["complete"] is True
    assert record["params"]["size"] == SIZE and record["params"]["seed"] == 0
    assert [s["path"] for s in record["slides"]] == [p.relative_to(root).as_posix() for p in paths]


def test_openslide_reads_pyramid_with_mpp(dataset):
    _, paths = dataset
    for path in paths:
        slide = openslide.OpenSlide(path)
        assert slide.properties["openslide.vendor"] == "generic-tiff"
        assert slide.dimensions == (SIZE, SIZE)
        assert slide.level_count >= 3
        assert slide.level_downsamples == pytest.approx([2.0**k for k in range(slide.level_count)])
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(MPP, rel=1e-9)
        assert float(slide.properties["openslide.mpp-y"]) == pytest.approx(MPP, rel=1e-9)
        assert min(slide.level_dimensions[-1]) <= 512


def test_levels_are_tiled_jpeg_main_ifds(dataset):
    _, paths = dataset
    with tifffile.TiffFile(paths[0]) as tif:
        assert len(tif.series[0].levels) == len(tif.pages) == openslide.OpenSlide(paths[0]).level_count
        for page in tif.pages:
            assert page.is_tiled and (page.tilewidth, page.tilelength) == (256, 256)
            assert page.compression == tifffile.COMPRESSION.JPEG
            assert not page.subifds


def test_every_level_is_a_downsample_of_level0(dataset):
    _, paths = dataset
    slide = openslide.OpenSlide(paths[2])
    base = level_rgb(slide, 0)
    for level in range(1, slide.level_count):
        width, height = slide.level_dimensions[level]
        expected = cv2.resize(base, (width, height), interpolation=cv2.INTER_AREA).astype(np.float32)
        error = np.abs(level_rgb(slide, level).astype(np.float32) - expected).mean()
        assert error < 3.0, f"level {level} differs from level 0 by {error:.2f} grey levels"


def test_odd_size_and_mpp_round_trip(tmp_path):
    path = tmp_path / "odd.tif"
    meta = synthetic.generate_slide(path, "normal", size=1000, mpp=0.2427, seed=3)
    slide = openslide.OpenSlide(path)
    assert slide.dimensions == (1000, 1000)
    assert slide.level_dimensions[1:3] == ((500, 500), (250, 250))
    assert meta["levels"][:3] == [[1000, 1000], [500, 500], [250, 250]]
    assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.2427, rel=1e-6)
    # the partial edge tiles decode like the rest (same pixels as tifffile gives)
    corner = np.asarray(slide.read_region((900, 900), 0, (100, 100)))
    assert (corner[..., 3] == 255).all()
    reference = tifffile.imread(path, key=0)[900:, 900:]
    assert np.abs(corner[..., :3].astype(int) - reference).mean() < 2


def test_same_seed_same_bytes_other_seed_differs(dataset, tmp_path):
    """A slide depends on (seed, kind, index) only: not on the worker process, nor on the slide count."""
    root, paths = dataset
    xml = root / "training" / "lesion_annotations" / "tumor_001.xml"
    tif, again = tmp_path / "t.tif", tmp_path / "t.xml"
    synthetic.generate_slide(tif, "tumor", SIZE, MPP, [0, synthetic.KIND_CODES["tumor"], 1], again, True)
    assert tif.read_bytes() == paths[2].read_bytes()
    assert again.read_bytes() == xml.read_bytes()
    assert paths[3].read_bytes() != paths[2].read_bytes()
    assert xml.with_name("tumor_002.xml").read_bytes() != xml.read_bytes()


def test_xml_follows_the_camelyon16_schema(dataset):
    root, _ = dataset
    xml = root / "training" / "lesion_annotations" / "tumor_001.xml"
    assert xml.read_text().startswith('<?xml version="1.0"?>\n<ASAP_Annotations>\n\t<Annotations>')
    tree = ET.parse(xml).getroot()
    assert tree.tag == "ASAP_Annotations"
    groups = {g.get("Name"): g.get("PartOfGroup") for g in tree.iter("Group")}
    assert groups == {"_0": "None", "_1": "None", "_2": "None"}
    for annotation in tree.iter("Annotation"):
        assert annotation.get("Type") == "Polygon"
        assert annotation.get("PartOfGroup") in groups
        orders = [int(c.get("Order")) for c in annotation.iter("Coordinate")]
        assert orders == list(range(len(orders))) and len(orders) >= 20
    if (FIXTURES / "camelyon16_tumor_001.xml").exists():

        def attributes(path: Path) -> dict[str, set[str]]:
            return {el.tag: set(el.attrib) for el in ET.parse(path).getroot().iter()}

        assert attributes(xml) == attributes(FIXTURES / "camelyon16_tumor_001.xml")


def test_lesions_sizes_and_exclusion(dataset):
    root, _ = dataset
    for name in ("tumor_001", "tumor_002"):
        outlines = read_outlines(root / "training" / "lesion_annotations" / f"{name}.xml")
        lesions = [Polygon(v) for g, v in outlines if g in ("_0", "_1")]
        assert 2 <= len(lesions) <= 4
        assert all(p.is_valid for p in lesions)
        spans = sorted(max(p.bounds[2] - p.bounds[0], p.bounds[3] - p.bounds[1]) for p in lesions)
        assert spans[0] < 512, f"{name}: no micro-metastasis smaller than a 512 px patch"
        assert spans[-1] > 1.2 * spans[0]
        exclusions = [Polygon(v) for g, v in outlines if g == "_2"]
        if name == "tumor_001":
            assert len(exclusions) == 1
            assert any(p.contains(exclusions[0]) for p in lesions)
        else:
            assert not exclusions


def test_rendered_tumor_is_the_annotated_region(dataset):
    root, paths = dataset
    for path in paths[2:]:
        rgb = level_rgb(openslide.OpenSlide(path), 0)
        outlines = read_outlines(root / "training" / "lesion_annotations" / f"{path.stem}.xml")
        mask = tumor_mask(outlines, rgb.shape[:2])
        tissue = tissue_mask(rgb)
        inner = cv2.erode(mask, np.ones((31, 31), np.uint8)) > 0
        outer = (cv2.dilate(mask, np.ones((61, 61), np.uint8)) == 0) & (
            cv2.erode(tissue.astype(np.uint8), np.ones((61, 61), np.uint8)) > 0
        )
        assert tissue[mask > 0].mean() > 0.97, "lesions must lie inside tissue"
        gray = rgb.astype(np.float32).mean(2)
        ratio = {"in": blob_scale_ratio(gray, inner), "out": blob_scale_ratio(gray, outer)}
        assert ratio["in"] > 1.25 * ratio["out"], f"{path.name}: blob-scale ratios {ratio}"


def test_exclusion_is_rendered_as_normal_tissue(dataset):
    root, paths = dataset
    rgb = level_rgb(openslide.OpenSlide(paths[2]), 0)
    outlines = read_outlines(root / "training" / "lesion_annotations" / "tumor_001.xml")
    hole = np.zeros(rgb.shape[:2], np.uint8)
    cv2.fillPoly(hole, [np.rint(v).astype(np.int32) for g, v in outlines if g == "_2"], 1)
    hole = cv2.erode(hole, np.ones((15, 15), np.uint8)) > 0
    tumor = cv2.erode(tumor_mask(outlines, rgb.shape[:2]), np.ones((31, 31), np.uint8)) > 0
    gray = rgb.astype(np.float32).mean(2)
    assert blob_scale_ratio(gray, tumor) > 1.25 * blob_scale_ratio(gray, hole)


def test_background_is_bright_and_tissue_fraction_plausible(dataset):
    _, paths = dataset
    for path in paths:
        thumb = level_rgb(openslide.OpenSlide(path), 2)
        tissue = tissue_mask(thumb)
        assert 0.25 <= tissue.mean() <= 0.65, f"{path.name}: tissue fraction {tissue.mean():.2f}"
        glass = cv2.dilate(tissue.astype(np.uint8), np.ones((9, 9), np.uint8)) == 0
        assert np.median(thumb[glass].mean(1)) > 220
        assert np.median(thumb[tissue].mean(1)) < 205


def test_normal_slides_have_no_annotation_or_lesion(tmp_path):
    with pytest.raises(ConfigError, match="normal slides"):
        synthetic.generate_slide(tmp_path / "n.tif", "normal", 1024, MPP, 0, tmp_path / "n.xml")
    meta = synthetic.generate_slide(tmp_path / "n.tif", "normal", 1024, MPP, 0)
    assert meta["outlines"] == [] and meta["tumor_area_px"] == 0
    with pytest.raises(ConfigError, match="kind") as error:
        synthetic.generate_slide(tmp_path / "x.tif", "metastasis", 1024, MPP, 0)
    assert str(error.value).startswith(f"{tmp_path / 'x.tif'}: ")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_normal": 0, "n_tumor": 0}, "need some slides"),
        ({"n_normal": -1, "n_tumor": 1}, "need some slides"),
        ({"n_normal": 0, "n_tumor": 1, "size": 1000}, "tumor slide needs size >= 1024"),
        ({"n_normal": 1, "n_tumor": 0, "size": 511}, "normal slide needs size >= 512"),
        ({"n_normal": 1, "n_tumor": 0, "mpp": 0.0}, "mpp > 0"),
    ],
)
def test_bad_arguments_are_config_errors(tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match) as error:
        synthetic.generate_dataset(tmp_path, **kwargs)
    assert error.value.path == tmp_path
    assert not list(tmp_path.iterdir())


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tifffile.TiffWriter, "write", broken)
    with pytest.raises(OSError, match="disk full"):
        synthetic.generate_slide(tmp_path / "t.tif", "tumor", 1024, MPP, 0, tmp_path / "t.xml")
    assert list(tmp_path.iterdir()) == []


def test_rerun_skips_resumes_and_guards_parameters(tmp_path):
    paths = synthetic.generate_dataset(tmp_path, n_normal=1, n_tumor=1, size=1024, seed=5)
    files = paths + [tmp_path / "training" / "lesion_annotations" / "tumor_001.xml"]
    stamps = {p: p.stat().st_mtime_ns for p in files}

    assert synthetic.generate_dataset(tmp_path, n_normal=1, n_tumor=1, size=1024, seed=5) == paths
    assert {p: p.stat().st_mtime_ns for p in files} == stamps

    paths[0].unlink()  # an interrupted run: only the missing slide is rendered again
    synthetic.generate_dataset(tmp_path, n_normal=1, n_tumor=1, size=1024, seed=5)
    assert paths[0].exists() and paths[1].stat().st_mtime_ns == stamps[paths[1]]

    with pytest.raises(ConfigError, match="other parameters.*'seed': \\(5, 6\\).*--overwrite") as error:
        synthetic.generate_dataset(tmp_path, n_normal=1, n_tumor=1, size=1024, seed=6)
    assert error.value.path == tmp_path / synthetic.MANIFEST
    assert paths[1].stat().st_mtime_ns == stamps[paths[1]]

    synthetic.generate_dataset(tmp_path, n_normal=1, n_tumor=0, size=1024, seed=6, overwrite=True)
    assert paths[0].exists() and not paths[1].exists() and not files[2].exists()
    assert json.loads((tmp_path / synthetic.MANIFEST).read_text())["params"]["seed"] == 6


def test_foreign_files_are_not_overwritten(tmp_path):
    foreign = tmp_path / "training" / "normal" / "normal_001.tif"
    foreign.parent.mkdir(parents=True)
    foreign.write_bytes(b"real slide")
    with pytest.raises(ConfigError, match="no synthetic.json"):
        synthetic.generate_dataset(tmp_path, n_normal=1, n_tumor=0, size=1024)
    assert foreign.read_bytes() == b"real slide"


def test_other_generator_version_says_so_and_how_to_regenerate(tmp_path):
    (path,) = synthetic.generate_dataset(tmp_path, n_normal=1, n_tumor=0, size=512)
    manifest = tmp_path / synthetic.MANIFEST
    record = json.loads(manifest.read_text())
    record["params"]["generator_version"] = synthetic.GENERATOR_VERSION - 1
    manifest.write_text(json.dumps(record))
    stamp = path.stat().st_mtime_ns
    with pytest.raises(ConfigError) as error:
        synthetic.generate_dataset(tmp_path, n_normal=1, n_tumor=0, size=512)
    message = str(error.value)
    assert message.startswith(f"{manifest}: dataset was written by synthetic generator version ")
    version = synthetic.GENERATOR_VERSION
    assert f"version {version - 1}, this is version {version}" in message
    assert "--overwrite" in message and "data.generate.overwrite=true" in message
    assert "other parameters" not in message and path.stat().st_mtime_ns == stamp

    synthetic.generate_dataset(tmp_path, n_normal=1, n_tumor=0, size=512, overwrite=True)
    assert json.loads(manifest.read_text())["params"]["generator_version"] == synthetic.GENERATOR_VERSION
    assert path.stat().st_mtime_ns != stamp


@pytest.mark.parametrize("text", ["{not json", "[]"])
def test_unreadable_record_is_a_config_error(tmp_path, text):
    (tmp_path / synthetic.MANIFEST).write_text(text)
    with pytest.raises(ConfigError, match="synthetic-dataset record.*--overwrite"):
        synthetic.generate_dataset(tmp_path, n_normal=1, n_tumor=0, size=512)


def test_cli(tmp_path, capsys):
    root = tmp_path / "cli"
    argv = ["--root", str(root), "--n-normal", "1", "--n-tumor", "0", "--size", "512"]
    assert synthetic.main(argv) == 0
    assert capsys.readouterr().out.strip() == str(root)
    assert (root / "training" / "normal" / "normal_001.tif").exists()
    for bad, message in ((["640"], "other parameters"), (["500"], "size >= 512")):
        with pytest.raises(SystemExit) as exit_info:
            synthetic.main(argv[:-1] + bad)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_python_dash_m_entry_point(tmp_path):
    """End to end, as the Makefile runs it: ``python -m vistumor.synthetic``."""
    argv = ["--root", str(tmp_path), "--n-normal", "1", "--n-tumor", "0", "--size", "512"]
    done = subprocess.run(
        [sys.executable, "-m", "vistumor.synthetic", *argv], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tmp_path)
    assert "Warning" not in done.stderr
    assert (tmp_path / "training" / "normal" / "normal_001.tif").exists()


def test_public_api_is_re_exported():
    from vistumor.synthetic import generate_dataset, generate_slide, main
    from vistumor.synthetic.cli import main as cli_main
    from vistumor.synthetic.dataset import generate_dataset as dataset_generate
    from vistumor.synthetic.slide import generate_slide as slide_generate

    assert (generate_dataset, generate_slide, main) == (dataset_generate, slide_generate, cli_main)


@pytest.mark.slow
def test_full_size_slide_has_large_and_micro_lesions(tmp_path):
    """The default 6144 px slide: a lesion several 512 px patches across and a micro one."""
    xml = tmp_path / "t.xml"
    meta = synthetic.generate_slide(tmp_path / "t.tif", "tumor", 6144, MPP, [0, 1, 1], xml, True)
    spans = sorted(np.ptp(v, axis=0).max() for g, v in read_outlines(xml) if g != "_2")
    assert spans[0] < 512 and spans[-1] >= 1024
    assert 0.3 <= meta["tissue_fraction"] <= 0.6


def test_generator_defaults_match_the_data_config():
    """`python -m vistumor.synthetic` and `data=synthetic` must describe the same dataset."""
    import inspect

    from omegaconf import OmegaConf

    generate = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf/data/synthetic.yaml").generate
    defaults = inspect.signature(synthetic.generate_dataset).parameters
    for key in ("n_normal", "n_tumor", "size", "mpp", "seed"):
        assert defaults[key].default == generate[key], key


# -- metastasis categories (generate_dataset(categories=True)) -------------------------------------

STAGE_SIZE, STAGE_MPP = 5632, 1.25  # 7.04 mm a side: room for a > 2 mm macro-metastasis


@pytest.fixture(scope="module")
def staged(tmp_path_factory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("staged")
    paths = synthetic.generate_dataset(root, n_normal=1, n_tumor=3, size=STAGE_SIZE, mpp=STAGE_MPP, seed=0,
                                       workers=2, categories=True)
    return root, paths


def test_categories_cover_all_four(staged):
    """The reference category of each slide, from its XML by CAMELYON17's rule: tumor slides
    cycle macro, micro, ITC; the normal slide is negative."""
    from vistumor.evaluate.camelyon17.categories import slide_category
    from vistumor.wsi.annotations import read_annotations

    root, paths = staged
    found = {}
    for path in paths:
        xml = root / "training" / "lesion_annotations" / f"{path.stem}.xml"
        polygons = read_annotations(xml).polygons if xml.exists() else []
        found[path.stem] = slide_category(polygons, STAGE_MPP)[0]
    assert found == {"normal_001": "negative", "tumor_001": "macro", "tumor_002": "micro", "tumor_003": "itc"}
    record = json.loads((root / synthetic.MANIFEST).read_text())
    assert record["params"]["categories"] is True
    assert [s.get("category") for s in record["slides"]] == [None, "macro", "micro", "itc"]
    roles = [o["role"] for o in record["slides"][1]["outlines"]]
    assert roles == ["macro", "micro", "itc", "exclusion"]  # the first tumor slide keeps its _2 hole


def test_categories_are_recorded_only_when_used(dataset):
    root, _ = dataset
    assert "categories" not in json.loads((root / synthetic.MANIFEST).read_text())["params"]


def test_categories_need_a_slide_of_several_mm(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"at least 7 mm a side .* size=6144 at mpp=0.25 is 1.54 mm"):
        synthetic.generate_dataset(tmp_path, 1, 1, categories=True)
    with pytest.raises(SystemExit) as exit_info:  # --categories switches the default mpp to 1.0
        synthetic.main(["--root", str(tmp_path / "cli"), "--categories", "--size", "1536"])
    assert exit_info.value.code == 2 and "size=1536 at mpp=1.0 is 1.54 mm" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="normal slides have no lesions"):
        synthetic.generate_slide(tmp_path / "n.tif", "normal", 512, category="itc")
    with pytest.raises(ConfigError, match="category must be one of"):
        synthetic.generate_slide(tmp_path / "t.tif", "tumor", 1024, category="huge")


def test_categories_name_camelyon17_patients_in_the_test_layout():
    from vistumor.evaluate.camelyon17.categories import group_patients
    from vistumor.synthetic.dataset import _plan

    jobs = _plan(Path("/data"), 3, 4, seed=0, layout="testing", categories=True)
    names = [job.path.stem for job in jobs]
    assert names[:6] == [f"patient_000_node_{n}" for n in range(5)] + ["patient_001_node_0"]
    assert [len(nodes) for nodes in group_patients(names).values()] == [5, 2]
    by_index = {job.seed[2]: job.category for job in jobs if job.kind == "tumor"}
    assert by_index == {1: "macro", 2: "micro", 3: "itc", 4: "macro"}
    assert all(job.category is None for job in jobs if job.kind == "normal")
    assert [job.path.stem for job in _plan(Path("/data"), 3, 4, seed=0, layout="testing")][0] == "test_001"
