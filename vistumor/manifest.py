"""The tile manifest: one row per patch, plus the facts that produced it.

``manifest.csv`` holds the rows; ``manifest.json`` beside it records the tiling parameters
(and their hash), the sampling and split, the seed, each slide's path and checksum, the
counts, and the SHA-256 of the CSV. A later stage loads both and refuses a manifest whose
parameters differ from what it asks for, whose slides are missing or changed, or whose
two files disagree (an interrupted write).
"""

from __future__ import annotations

import datetime as dt
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

    def check_tiling(self, expected_hash: str, expected: Mapping[str, Any] | None = None) -> None:
        """Refuse a manifest made with other tiling parameters than ``expected``."""
        if self.meta.get("tiling_hash") == expected_hash:
            return
        made = self.meta.get("tiling", {})
        diff = {
            k: (made.get(k), v) for k, v in (expected or {}).items() if made.get(k) != v
        }
        detail = ", ".join(f"{k}: manifest {a!r} vs config {b!r}" for k, (a, b) in diff.items())
        raise ManifestError(
            f"made with other tiling parameters than the config asks ({detail or 'hash differs'}); "
            "rerun tiling.py with this config",
            self.path,
        )

    def verify_slides(self) -> None:
        """Refuse a manifest whose slides are missing or changed since tiling."""
        for slide_id, info in self.meta.get("slides", {}).items():
            path = Path(info["path"])
            if not path.is_file():
                raise ManifestError(f"slide '{slide_id}' is missing: {path}", self.path)
            recorded = info.get("checksum", "")
            mode = "full" if recorded.startswith("sha256:") else "fast"
            if recorded and fingerprint(path, mode) != recorded:
                raise ManifestError(
                    f"slide '{slide_id}' changed since tiling (checksum differs): {path}", self.path
                )


def write_manifest(path: str | Path, table: pd.DataFrame, meta: Mapping[str, Any]) -> Path:
    """Write ``manifest.csv`` and its ``.json`` atomically; returns the CSV path."""
    path = Path(path)
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
        "counts": {s: {str(k): int(v) for k, v in row.items()} for s, row in counts.iterrows()},
    }
    with atomic_path(path) as tmp:
        table[COLUMNS].to_csv(tmp, index=False)
        full_meta["csv_sha256"] = sha256_file(tmp)
        write_json(meta_path(path), full_meta)
    return path


def meta_path(path: str | Path) -> Path:
    return Path(path).with_suffix(".json")


def load_manifest(path: str | Path) -> Manifest:
    """Read a manifest and check its two files belong together."""
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
    if meta.get("csv_sha256") != sha256_file(path):
        raise ManifestError(
            "the CSV does not match its metadata (interrupted or edited?): rerun tiling.py", path
        )
    table = pd.read_csv(path, dtype={"slide_id": str})
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ManifestError(f"manifest lacks columns {missing}", path)
    return Manifest(table, meta, path)
