"""The tile manifest: one row per patch, plus the facts that produced it.

``manifest.csv`` holds the rows; ``manifest.json`` beside it records what made them — the
*spec*: tiling parameters, sampling, split and seed, with its hash — plus each slide's path
and checksum, the counts, and the SHA-256 of the CSV. A later stage loads both and refuses
a manifest whose spec differs from what its config asks for, whose slides are missing or
changed, or whose two files disagree (an interrupted write).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from vistumor import __version__
from vistumor.errors import ManifestError
from vistumor.files import atomic_path, fingerprint, sha256_file, write_json

FORMAT = "vistumor-manifest/1"
#: what decides a manifest's rows: two manifests with equal specs hold the same patches
SPEC_KEYS = ("tiling", "sampling", "split", "seed")
COLUMNS = [
    "slide_id", "slide_path", "kind", "x0", "y0", "level", "read_size", "size0",
    "tissue_fraction", "tumor_fraction", "label", "split",
]


@dataclass
class Manifest:
    """Rows and metadata of a manifest on disk."""

    table: pd.DataFrame
    meta: dict[str, Any]
    path: Path

    def split(self, name: str) -> pd.DataFrame:
        return self.table[self.table["split"] == name].reset_index(drop=True)

    @property
    def annotations(self) -> dict[str, str]:
        """slide_id -> annotation file ("" when the slide has none)."""
        return {k: v.get("annotation", "") for k, v in self.meta.get("slides", {}).items()}

    @property
    def spec(self) -> dict[str, Any]:
        return {k: self.meta.get(k) for k in SPEC_KEYS}

    def check_spec(self, expected: Mapping[str, Any]) -> None:
        """Refuse a manifest made with another spec than ``expected``, naming what differs."""
        if self.meta.get("spec_hash") == spec_hash(expected):
            return
        diff = _differences(self.spec, expected)
        detail = ", ".join(f"{k}: manifest {a!r} vs config {b!r}" for k, (a, b) in diff.items())
        raise ManifestError(
            f"made with other parameters than the config asks ({detail or 'hash differs'}); "
            "rerun tiling.py with this config",
            self.path,
        )

    def verify_slides(self) -> None:
        """Refuse a manifest whose slides or annotations are missing or changed since tiling:
        its labels would no longer say what the files do."""
        for slide_id, info in self.meta.get("slides", {}).items():
            path = Path(info["path"])
            if not path.is_file():
                raise ManifestError(f"slide '{slide_id}' is missing: {path}", self.path)
            recorded = info.get("checksum") or ""
            mode = "full" if recorded.startswith("sha256:") else "fast"
            if recorded and fingerprint(path, mode) != recorded:
                raise ManifestError(
                    f"slide '{slide_id}' changed since tiling (checksum differs): {path}", self.path
                )
            self._verify_annotation(slide_id, info)

    def _verify_annotation(self, slide_id: str, info: Mapping[str, Any]) -> None:
        annotation = info.get("annotation") or ""
        if not annotation:
            return
        path = Path(annotation)
        if not path.is_file():
            raise ManifestError(f"annotation of slide '{slide_id}' is missing: {path}; rerun tiling",
                                self.path)
        recorded = info.get("annotation_checksum")
        if recorded and fingerprint(path, "full") != recorded:
            raise ManifestError(
                f"annotation of slide '{slide_id}' changed since tiling (checksum differs): {path}; "
                "rerun tiling.py to relabel its patches", self.path
            )


def spec_hash(spec: Mapping[str, Any]) -> str:
    """Short hash of a spec (its JSON with sorted keys)."""
    blob = json.dumps({k: spec.get(k) for k in SPEC_KEYS}, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def is_current(path: str | Path, spec: Mapping[str, Any]) -> bool:
    """Whether a manifest exists at ``path`` and was made with ``spec`` (metadata only)."""
    info = meta_path(path)
    if not (Path(path).is_file() and info.is_file()):
        return False
    try:
        return json.loads(info.read_text()).get("spec_hash") == spec_hash(spec)
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


def _differences(made: Mapping, wanted: Mapping, prefix: str = "") -> dict[str, tuple]:
    """Dotted keys whose values differ between two nested mappings."""
    out: dict[str, tuple] = {}
    for key in sorted(set(made) | set(wanted), key=str):
        a, b = made.get(key), wanted.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out.update(_differences(a, b, f"{prefix}{key}."))
        elif a != b:
            out[f"{prefix}{key}"] = (a, b)
    return out


def write_manifest(path: str | Path, table: pd.DataFrame, meta: Mapping[str, Any]) -> Path:
    """Write ``manifest.csv`` and its ``.json`` atomically; returns the CSV path.

    ``meta`` must hold the spec keys (:data:`SPEC_KEYS`); their hash is added.
    """
    path = Path(path)
    missing_spec = [k for k in SPEC_KEYS if k not in meta]
    if missing_spec:
        raise ManifestError(f"manifest metadata lacks {missing_spec}", path)
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ManifestError(f"manifest table lacks columns {missing}", path)
    counts = (
        table.groupby(["split", "label"]).size().unstack(fill_value=0)
        .rename(columns={0: "normal", 1: "tumor"})
    )
    full_meta = {
        "format": FORMAT,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "vistumor_version": __version__,
        "csv": path.name,
        **meta,
        "spec_hash": spec_hash(meta),
        "counts": {s: {str(k): int(v) for k, v in row.items()} for s, row in counts.iterrows()},
    }
    with atomic_path(path) as tmp:
        table[COLUMNS].to_csv(tmp, index=False)
        full_meta["csv_sha256"] = sha256_file(tmp)
        write_json(meta_path(path), full_meta)
    return path


def meta_path(path: str | Path) -> Path:
    return Path(path).with_suffix(".json")


def read_meta(path: str | Path) -> dict[str, Any]:
    """A manifest's metadata (its slides, tiling, spec) without reading its patch table."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError("manifest not found: run tiling.py first (make tile)", path)
    info = meta_path(path)
    if not info.is_file():
        raise ManifestError(f"manifest metadata {info.name} is missing", path)
    try:
        meta = json.loads(info.read_text())
    except json.JSONDecodeError as err:
        raise ManifestError(f"unreadable metadata {info.name} ({err})", path) from err
    if meta.get("format") != FORMAT:
        raise ManifestError(f"not a VisTumor manifest (format {meta.get('format')!r})", path)
    return meta


def slides_in(meta: Mapping[str, Any], split: str) -> dict[str, dict[str, Any]]:
    """The slides of a manifest's metadata in ``split`` (a slide's ``split`` is one name, or
    several comma-joined under the paper's random patch split)."""
    return {slide: info for slide, info in meta.get("slides", {}).items()
            if split in str(info.get("split") or "").split(",")}


def load_manifest(path: str | Path) -> Manifest:
    """Read a manifest and check its two files belong together."""
    path = Path(path)
    meta = read_meta(path)
    if meta.get("csv_sha256") != sha256_file(path):
        raise ManifestError(
            "the CSV does not match its metadata (interrupted or edited?): rerun tiling.py", path
        )
    table = pd.read_csv(path, dtype={"slide_id": str})
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ManifestError(f"manifest lacks columns {missing}", path)
    return Manifest(table, meta, path)
