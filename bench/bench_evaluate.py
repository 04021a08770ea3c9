"""Evaluation benchmark: time and peak memory of a full CAMELYON16-sized CLI evaluation.

Builds a test set the size of CAMELYON16's: 130 reference slides (``test_001`` ...
``test_130``; 60 tumor, 70 normal) of about 100,000 x 100,000 level-0 px, whose sizes are
in the reference CSV (no slide file is needed). Each tumor slide has 2-6 random star-shaped
lesions, from ITC-sized to a few mm, written as ASAP XML; each slide has 20-300 random
detections with NCRF-style 5-decimal probabilities, some placed on lesions. The official
exclusions apply (129 slides for the AUC, 128 for the FROC).

Each measurement runs in a fresh process so its peak RSS is its own:

* ``floor``: reading the inputs and rasterising each annotation at level 5, what any
  evaluator must do (the official script reads level-5 mask images instead);
* ``evaluate``: ``python -m vistumor.evaluate`` as a user runs it (1000 bootstrap resamples);
* ``evaluate_no_ci``: the same with one resample, to show what the intervals cost.

    python bench/bench_evaluate.py                       # writes bench/results/evaluate_cpu.json
    python bench/bench_evaluate.py --workdir /tmp/vt-eval --out /tmp/evaluate.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

N_TUMOR, N_NORMAL = 60, 70
RESULTS = Path(__file__).resolve().parent / "results" / "evaluate_cpu.json"


def star(rng: np.random.Generator, cx: float, cy: float, radius: float) -> np.ndarray:
    """A random star-shaped polygon (level-0 px) of about ``radius``."""
    angles = np.sort(rng.uniform(0, 2 * np.pi, 40))
    radii = radius * rng.uniform(0.6, 1.0, 40)
    return np.column_stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)])


def write_xml(path: Path, lesions: list[np.ndarray]) -> None:
    parts = ['<?xml version="1.0"?>', "<ASAP_Annotations><Annotations>"]
    for k, polygon in enumerate(lesions):
        parts.append(f'<Annotation Name="lesion {k}" Type="Polygon" PartOfGroup="_0"><Coordinates>')
        parts += [f'<Coordinate Order="{i}" X="{x:.1f}" Y="{y:.1f}" />' for i, (x, y) in enumerate(polygon)]
        parts.append("</Coordinates></Annotation>")
    parts.append("</Annotations></ASAP_Annotations>")
    path.write_text("\n".join(parts))


def write_dataset(work: Path, seed: int = 0) -> dict[str, Path]:
    """Reference CSV, ``xml/`` and ``predictions/`` under ``work``."""
    rng = np.random.default_rng(seed)
    (work / "xml").mkdir(parents=True, exist_ok=True)
    (work / "predictions").mkdir(parents=True, exist_ok=True)
    tumor = set(rng.choice(np.arange(1, 131), N_TUMOR, replace=False).tolist())
    rows = ["slide,label,width,height"]
    for i in range(1, 131):
        name = f"test_{i:03d}"
        width, height = (int(v) for v in rng.integers(90_000, 110_001, 2))
        rows.append(f"{name},{'tumor' if i in tumor else 'normal'},{width},{height}")
        centres = rng.uniform(0.2, 0.8, (int(rng.integers(2, 7)), 2)) * (width, height)
        if i in tumor:
            radii = rng.choice([60.0, 150.0, 400.0, 1200.0, 3000.0], len(centres))
            write_xml(work / "xml" / f"{name}.xml", [star(rng, x, y, r) for (x, y), r in zip(centres, radii,
                                                                                              strict=True)])
        n = int(rng.integers(20, 301))
        xy = rng.uniform(0, 1, (n, 2)) * (width - 1, height - 1)
        if i in tumor:
            xy[: len(centres)] = centres
        probs = np.round(rng.beta(0.7, 2.0, n), 5)
        if i in tumor:  # the detections on lesions are confident ones
            probs[: len(centres)] = np.round(rng.uniform(0.6, 1.0, len(centres)), 5)
        lines = [f"{p:.5f},{int(x)},{int(y)}" for p, (x, y) in zip(probs, xy, strict=True)]
        (work / "predictions" / f"{name}.csv").write_text("\n".join(lines) + "\n")
    (work / "reference.csv").write_text("\n".join(rows) + "\n")
    return {"reference": work / "reference.csv", "annotations": work / "xml",
            "predictions": work / "predictions"}


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM, not inherited across fork + exec)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(kind: str, work: Path) -> dict:
    from vistumor.evaluate.cli import main
    from vistumor.evaluate.io import annotation_files, prediction_files, read_detections, read_reference
    from vistumor.wsi.annotations import read_annotations

    start = time.perf_counter()
    if kind == "floor":
        reference = read_reference(work / "reference.csv")
        dims = {slide.slide: slide.dimensions for slide in reference}
        detections = sum(len(read_detections(p)) for p in prediction_files(work / "predictions").values())
        tumor_px = sum(int(read_annotations(p).mask(32, dims[name]).sum())
                       for name, p in annotation_files(work / "xml").items())
        extra = {"slides": len(reference), "detections": detections, "tumor_px_level5": tumor_px}
    else:
        out = Path(tempfile.mkdtemp(prefix="evaluation-", dir=work))
        argv = ["--predictions", str(work / "predictions"), "--annotations", str(work / "xml"),
                "--reference", str(work / "reference.csv"), "--out", str(out)]
        if kind == "evaluate_no_ci":
            argv += ["--bootstrap", "1"]
        if main(argv) != 0:
            raise SystemExit(f"evaluation failed ({kind})")
        report = json.loads((out / "evaluation.json").read_text())
        extra = {"froc": round(report["froc"], 4), "auc": round(report["auc"], 4), "slides": report["slides"],
                 "lesions": len(report["lesions"]), "itc": sum(le["itc"] for le in report["lesions"])}
    seconds = time.perf_counter() - start
    return {"kind": kind, "seconds": round(seconds, 3), "peak_rss_mb": round(peak_rss_mb(), 1), **extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--measure", choices=["floor", "evaluate", "evaluate_no_ci"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="vistumor-bench-eval-"))
    if args.measure:
        print(json.dumps(measure(args.measure, work)))
        return
    if not (work / "reference.csv").is_file():
        write_dataset(work)
    results = {"cpus": os.cpu_count()}
    for kind in ("floor", "evaluate", "evaluate_no_ci"):
        cmd = [sys.executable, __file__, "--workdir", str(work), "--measure", kind]
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        results[kind] = json.loads(done.stdout.strip().splitlines()[-1])
    floor, full = results["floor"], results["evaluate"]
    results["ratio_to_floor"] = round(full["seconds"] / floor["seconds"], 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(f"\n130 slides: evaluation {full['seconds']:.2f} s (peak {full['peak_rss_mb']:.0f} MB), "
          f"{results['evaluate_no_ci']['seconds']:.2f} s without intervals; reading the inputs and "
          f"rasterising the annotations alone "
          f"{floor['seconds']:.2f} s (peak {floor['peak_rss_mb']:.0f} MB)")


if __name__ == "__main__":
    main()
