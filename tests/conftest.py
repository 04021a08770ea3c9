"""Shared fixtures: tiny pyramidal TIFFs of known geometry, a CAMELYON16-layout dataset,
and the real Hydra config, composed and shrunk (as lightning-hydra-template's conftest).

The tiny dataset is drawn so that every count can be written down by hand:

* each slide is ``768 x 512`` px of white glass holding one pink tissue rectangle
  ``[128, 640) x [128, 384)``; with 64 px patches that is a 12 x 8 grid of 96 tiles, of
  which exactly 8 x 4 = 32 are tissue (the rectangle's edges fall on tile edges);
* each tumor slide is annotated with a lesion ``[128, 256)^2`` (group ``_0``, four whole
  tiles) holding an exclusion ``[144, 176)^2`` (group ``_2``: the corner tile keeps
  3072 / 4096 = 75 % tumor), a strip covering exactly 5 % of tile (384, 128) (group ``_1``:
  tumor) and a strip covering 2 % of tile (512, 128) (ambiguous, excluded): 5 tumor tiles,
  1 ambiguous, 26 normal.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import tifffile
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

# Offline and quiet before any test module imports albumentations, wandb or the HF hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

PROJECT = Path(__file__).resolve().parents[1]
CONF = PROJECT / "conf"
FIXTURES = PROJECT.parent / "shared" / "fixtures"
REAL_SVS = FIXTURES / "cmu_small_region.svs"
REAL_XML = FIXTURES / "camelyon16_tumor_001.xml"
#: the real fixtures live beside the checkout (../shared/fixtures), never inside it
needs_real_fixtures = pytest.mark.skipif(
    not (REAL_SVS.is_file() and REAL_XML.is_file()), reason=f"real fixtures not found in {FIXTURES}"
)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Say it in the last line when the browser tests (``tests/*_browser.py``) were skipped:
    one ``s`` among hundreds of dots is easy to miss."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    reasons = {str(report.longrepr[-1]).removeprefix("Skipped: ")
               for report in (reporter.stats.get("skipped", []) if reporter else [])
               if "_browser" in report.nodeid and isinstance(report.longrepr, tuple)}
    for reason in sorted(reasons):
        reporter.write_line(f"browser tests skipped: {reason}", yellow=True, bold=True)


# -- the tiny dataset's geometry (level-0 px) -----------------------------------------------

WIDTH, HEIGHT = 768, 512
PATCH = 64
MASK_DOWNSAMPLE = 8
TISSUE_BOX = (128, 128, 640, 384)  # x0, y0, x1, y1
#: (name, group, x0, y0, x1, y1) of each annotated rectangle of a tumor slide
TUMOR_REGIONS = (
    ("lesion", "_0", 128, 128, 256, 256),
    ("fat inside the lesion", "_2", 144, 144, 176, 176),
    ("five percent", "_1", 384, 128, 448, 131.2),  # 64 * 3.2 = 204.8 = 5 % of 4096
    ("two percent", "_0", 512, 128, 576, 129.28),  # 64 * 1.28 = 81.92 = 2 % of 4096
)
N_GRID = (WIDTH // PATCH) * (HEIGHT // PATCH)  # 96
N_TISSUE = 8 * 4  # 32
TUMOR_TILES = {
    (128, 128): 0.75, (192, 128): 1.0, (128, 192): 1.0, (192, 192): 1.0, (384, 128): 0.05,
}
AMBIGUOUS_TILES = {(512, 128): 0.02}
N_TUMOR, N_AMBIGUOUS = len(TUMOR_TILES), len(AMBIGUOUS_TILES)  # 5, 1
N_NORMAL_ON_TUMOR_SLIDE = N_TISSUE - N_TUMOR - N_AMBIGUOUS  # 26

PINK = (214, 112, 186)  # saturation 0.48: clearly tissue


# -- writers --------------------------------------------------------------------------------


def write_tiff(
    path: str | Path,
    image: np.ndarray,
    *,
    tile: int = 128,
    compression: str | None = "jpeg",
    mpp: float | None = 0.5,
    levels: int = 2,
) -> Path:
    """A tiled pyramidal TIFF that OpenSlide's generic-TIFF reader opens.

    Levels are successive main IFDs, halved each time, reduced ones marked
    ``subfiletype=1``; level-0 (and level) resolution tags in pixels per centimetre give
    ``openslide.mpp-x``. An ``(h, w, 4)`` image is written with an unassociated alpha
    channel (use ``compression="zlib"``; JPEG has no alpha).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rgba = image.shape[-1] == 4
    with tifffile.TiffWriter(path) as tif:
        level = np.ascontiguousarray(image)
        for i in range(levels):
            extra = {"extrasamples": ["unassalpha"]} if rgba else {}
            if mpp is not None:
                per_cm = 1e4 / (mpp * 2**i)
                extra.update(resolution=(per_cm, per_cm), resolutionunit="CENTIMETER")
            tif.write(
                level, tile=(tile, tile), compression=compression, photometric="rgb",
                subfiletype=0 if i == 0 else 1, **extra,
            )
            size = (level.shape[1] // 2, level.shape[0] // 2)
            level = cv2.resize(level, size, interpolation=cv2.INTER_AREA)
    return path


def write_asap_xml(path: str | Path, regions: Sequence[tuple[str, str, Sequence]]) -> Path:
    """ASAP XML with one ``Annotation`` per ``(name, group, [(x, y), ...])``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = ['<?xml version="1.0"?>', "<ASAP_Annotations>", "<Annotations>"]
    for name, group, points in regions:
        parts.append(
            f'<Annotation Name="{name}" Type="Polygon" PartOfGroup="{group}" Color="#F4FA58">'
        )
        parts.append("<Coordinates>")
        parts += [
            f'<Coordinate Order="{i}" X="{x}" Y="{y}" />' for i, (x, y) in enumerate(points)
        ]
        parts.append("</Coordinates></Annotation>")
    parts += ["</Annotations>", "<AnnotationGroups>"]
    parts += [
        f'<Group Name="{g}" PartOfGroup="None" Color="#64FE2E" />'
        for g in ("_0", "_1", "_2")
    ]
    parts += ["</AnnotationGroups>", "</ASAP_Annotations>"]
    path.write_text("\n".join(parts) + "\n")
    return path


def rectangle(x0: float, y0: float, x1: float, y1: float) -> list[tuple[float, float]]:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def tissue_image(shade: int = 0, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """White glass with the tissue rectangle in a slide-specific shade of pink."""
    rgb = np.full((height, width, 3), 255, np.uint8)
    x0, y0, x1, y1 = TISSUE_BOX
    rgb[y0:y1, x0:x1] = np.clip(np.array(PINK) + (-6 * shade, 4 * shade, -3 * shade), 0, 255)
    return rgb


def tumor_xml(path: str | Path) -> Path:
    return write_asap_xml(path, [(n, g, rectangle(*box)) for n, g, *box in TUMOR_REGIONS])


@dataclass(frozen=True)
class TinyDataset:
    """A CAMELYON16-layout folder and its slide ids."""

    root: Path
    normal: tuple[str, ...]
    tumor: tuple[str, ...]

    @property
    def slide_ids(self) -> tuple[str, ...]:
        return tuple(sorted(self.normal + self.tumor))

    def slide(self, slide_id: str) -> Path:
        kind = "tumor" if slide_id.startswith("tumor") else "normal"
        return self.root / "training" / kind / f"{slide_id}.tif"

    def annotation(self, slide_id: str) -> Path:
        return self.root / "training" / "lesion_annotations" / f"{slide_id}.xml"


def make_dataset(root: str | Path, n_normal: int = 3, n_tumor: int = 3) -> TinyDataset:
    """``<root>/training/{normal,tumor}/*.tif`` and ``training/lesion_annotations/*.xml``."""
    root = Path(root)
    normal = tuple(f"normal_{i:03d}" for i in range(1, n_normal + 1))
    tumor = tuple(f"tumor_{i:03d}" for i in range(1, n_tumor + 1))
    data = TinyDataset(root, normal, tumor)
    for shade, slide_id in enumerate(normal + tumor):
        write_tiff(data.slide(slide_id), tissue_image(shade))
    for slide_id in tumor:
        tumor_xml(data.annotation(slide_id))
    return data


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> TinyDataset:
    """3 normal + 3 tumor tiny slides (read-only: copy before changing anything)."""
    return make_dataset(tmp_path_factory.mktemp("camelyon16"))


@pytest.fixture
def tiny_tiff(tmp_path) -> Callable[..., Path]:
    """``tiny_tiff(name, image, **write_tiff_options)`` writes under ``tmp_path``."""

    def make(name: str, image: np.ndarray, **options) -> Path:
        return write_tiff(tmp_path / name, image, **options)

    return make


def compose_tiling(root_dir: str | Path, data_root: str | Path, *overrides: str) -> DictConfig:
    """The real ``conf/tiling.yaml``, shrunk to the tiny dataset: 64 px patches, one worker."""
    base = [
        "data=camelyon16",
        f"paths.root_dir={root_dir}",
        f"data.root={data_root}",
        "data.generate=null",
        f"tiling.grid.patch_size={PATCH}",
        f"tiling.tissue.downsample={MASK_DOWNSAMPLE}",
        "tiling.run.workers=1",
        "tiling.run.progress=false",
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("tiling", overrides=[*base, *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.fixture
def tiling_cfg(tmp_path) -> Callable[..., DictConfig]:
    """``tiling_cfg(data_root, *overrides)``: a composed config writing under ``tmp_path``."""

    def make(data_root: str | Path, *overrides: str, root_dir: str | Path | None = None):
        return compose_tiling(root_dir or tmp_path, data_root, *overrides)

    return make


# -- training fixtures --------------------------------------------------------------------------

# One intra-op thread: on a small shared CPU, OpenMP threads that wait for each other make the
# tiny models several times slower (set before any test module imports torch; subprocesses inherit).
os.environ.setdefault("OMP_NUM_THREADS", "1")

#: The shrunk training run: timm's tiny test ResNet on the CPU, 8-patch batches read in the
#: main process, CSV log only, no per-epoch CAM grid (tests/test_cam*.py cover CamMonitor).
TRAIN_OVERRIDES = (
    "data=camelyon16",
    "data.generate=null",
    "data.tile_if_missing=false",
    f"tiling.grid.patch_size={PATCH}",
    f"tiling.tissue.downsample={MASK_DOWNSAMPLE}",
    "tiling.run.workers=1",
    "tiling.run.progress=false",
    "model=small_cnn",
    "trainer=cpu",
    "trainer.max_epochs=2",
    "+trainer.enable_progress_bar=false",
    "logger=csv",
    "~callbacks.cam",
    f"model.image_size={PATCH}",
    "data.datamodule.batch_size=8",
    "data.datamodule.num_workers=0",
    "data.datamodule.persistent_workers=false",
)


def train_overrides(
    root_dir: str | Path, data_root: str | Path, tiles_dir: str | Path | None = None
) -> list[str]:
    """:data:`TRAIN_OVERRIDES` for a run under ``root_dir`` on ``data_root`` (CLI tests use these too)."""
    paths = [f"paths.root_dir={root_dir}", f"data.root={data_root}"]
    if tiles_dir is not None:
        paths.append(f"tiling.out_dir={tiles_dir}")
    return [*TRAIN_OVERRIDES, *paths]


def compose_train(
    root_dir: str | Path, data_root: str | Path, *overrides: str, tiles_dir: str | Path | None = None
) -> DictConfig:
    """The real ``conf/train.yaml`` shrunk by :data:`TRAIN_OVERRIDES`; run folder ``<root_dir>/run``."""
    from omegaconf import open_dict

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "train", overrides=[*train_overrides(root_dir, data_root, tiles_dir), *overrides],
            return_hydra_config=True,
        )
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(Path(root_dir) / "run")
    return cfg


@dataclass(frozen=True)
class Tiled:
    """The tiny dataset tiled once with :data:`TRAIN_OVERRIDES`' tiling parameters.

    Every split holds 5 tumor and 5 normal patches (one tumor and one normal slide each).
    """

    data: TinyDataset
    tiles_dir: Path

    @property
    def manifest(self) -> Path:
        return self.tiles_dir / "manifest.csv"


@pytest.fixture(scope="session")
def tiled(dataset, tmp_path_factory) -> Tiled:
    """The session's tiny dataset and its manifest (read-only: copy before changing anything)."""
    from vistumor.tasks.tiling import tile

    root = tmp_path_factory.mktemp("tiled")
    tile(compose_train(root, dataset.root, tiles_dir=root / "tiles"))
    return Tiled(dataset, root / "tiles")


@pytest.fixture
def train_cfg(tmp_path, tiled) -> Callable[..., DictConfig]:
    """``train_cfg(*overrides, root_dir=tmp_path)``: a shrunk training config on :func:`tiled`."""

    def make(*overrides: str, root_dir: str | Path | None = None) -> DictConfig:
        return compose_train(root_dir or tmp_path, tiled.data.root, *overrides, tiles_dir=tiled.tiles_dir)

    return make


def copy_tiled(tiled: Tiled, folder: str | Path, keep=None) -> Tiled:
    """Copies of the slides and a manifest that points at them, free to break.

    Args:
        keep: optional ``table -> boolean Series`` of the manifest rows to keep.
    """
    import shutil

    from vistumor.tiling.manifest import load_manifest, write_manifest

    folder = Path(folder)
    old, new = str(tiled.data.root), str(folder / "data")
    shutil.copytree(old, new)
    manifest = load_manifest(tiled.manifest)
    table = manifest.table.assign(slide_path=manifest.table["slide_path"].str.replace(old, new, regex=False))
    if keep is not None:
        table = table[keep(table)].reset_index(drop=True)
    meta = dict(manifest.meta)
    meta["slides"] = {
        slide_id: {**info, "path": info["path"].replace(old, new),
                   "annotation": (info.get("annotation") or "").replace(old, new)}
        for slide_id, info in meta["slides"].items()
    }
    write_manifest(folder / "tiles" / "manifest.csv", table, meta)
    return Tiled(TinyDataset(Path(new), tiled.data.normal, tiled.data.tumor), folder / "tiles")


class CrashAt:
    """A training callback (``+callbacks.crash._target_=conftest.CrashAt``) that kills the run
    at the first batch of ``epoch``, as ``kill -9`` would: no checkpoint of that epoch."""

    def __new__(cls, epoch: int):
        import lightning as L

        class _Crash(L.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                if trainer.current_epoch == epoch:
                    raise SystemExit(f"killed in epoch {epoch}")

        return _Crash()


# -- a trained checkpoint, for the stages after training ------------------------------------------


#: tiling and data overrides shared by the ``trained`` run and the stages that use it
DATA = (
    "data=camelyon16",
    "data.generate=null",
    f"tiling.grid.patch_size={PATCH}",
    f"tiling.tissue.downsample={MASK_DOWNSAMPLE}",
    "tiling.run.workers=1",
    "tiling.run.progress=false",
)
TRAIN = (
    "data.tile_if_missing=true",
    "model=small_cnn",
    "trainer=cpu",
    "trainer.max_epochs=2",
    "+trainer.enable_progress_bar=false",
    "logger=csv",
    f"model.image_size={PATCH}",
    "data.datamodule.batch_size=8",
    "data.datamodule.num_workers=0",
    "data.datamodule.persistent_workers=false",
)


def compose_stage(name: str, root: Path, data_root: Path, out: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(name, overrides=[*DATA, f"paths.root_dir={root}", f"data.root={data_root}", *overrides],
                      return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    return cfg


def compose_infer(root: Path, data_root: Path, ckpt: Path | str, out: Path, *overrides: str) -> DictConfig:
    """``infer.yaml`` over a CAMELYON16-layout folder, on the CPU, without a progress bar."""
    base = ["data=camelyon16", "data.generate=null", f"paths.root_dir={root}", f"data.root={data_root}",
            "device=cpu", "run.progress=false", f"ckpt_path={ckpt}"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("infer", overrides=[*base, *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    return cfg


@pytest.fixture(scope="session")
def trained(dataset, tmp_path_factory) -> SimpleNamespace:
    """test_resnet trained 2 epochs at 64 px with the default callbacks (CamMonitor included)."""
    import pandas as pd

    from vistumor.tasks import train

    root = tmp_path_factory.mktemp("explain")
    run = root / "run"
    result = train(compose_stage("train", root, dataset.root, run, *TRAIN))
    manifest = pd.read_csv(next((root / "outputs" / "tiles").glob("*/*/manifest.csv")))
    return SimpleNamespace(root=root, data=dataset.root, run=run, result=result, manifest=manifest,
                           last=run / "checkpoints" / "last.ckpt")


@pytest.fixture(scope="session")
def resized(trained) -> Path:
    """The trained weights as a checkpoint of another input size (48 px): a second 'architecture'."""
    import torch

    ckpt = torch.load(trained.last, map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["image_size"] = 48
    path = trained.root / "resized48.ckpt"
    torch.save({"hyper_parameters": ckpt["hyper_parameters"], "state_dict": ckpt["state_dict"]}, path)
    return path
