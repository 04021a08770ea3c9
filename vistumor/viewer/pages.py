"""The two HTML pages (index and slide view) and the JSON the slide view reads.

Pages are Jinja2 templates (``templates/``) with autoescaping: every name from the run is
escaped as text and attribute, and quoted whole (filter ``q``) in links, so a slide called
``<script>`` is shown, never run. Numbers are formatted here, the templates only place them.
The slide view's script fills in the rest from ``/api/slide/<name>`` with ``textContent`` only.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from vistumor.viewer.layers import HeatTiles, describe
from vistumor.viewer.run import RunFolder

TEMPLATES = Environment(loader=PackageLoader("vistumor.viewer", "templates"), autoescape=select_autoescape(["html"]),
                        undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
TEMPLATES.filters["q"] = lambda value: quote(str(value), safe="")  # one URL path segment


def _number(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else ""


def index_page(run: RunFolder) -> str:
    """One row per slide: name, label, score and lesions per model, status, thumbnail, figures."""
    models = list(run.models)
    tables = {m: run.table(m) for m in models}
    status = run.status()
    rows = []
    for name, entry in run.slides.items():
        state = status.get(name, {})
        cells = [{"score": _number(row.get("score")), "score_value": _number(row.get("score"), 6),
                  "lesions": _number(row.get("lesions"), 0)} for row in (tables[m].get(name, {}) for m in models)]
        rows.append({"name": name, "label": entry.label or "", "models": cells, "found": entry.path is not None,
                     "status": _status(state), "reason": state.get("reason") or ""})
    return TEMPLATES.get_template("index.html").render(
        run=str(run.root), models=models, several=len(models) > 1, rows=rows, evaluations=_evaluations(run))


def _status(row: dict[str, Any]) -> str:
    """A slide's status; ``skipped`` (a rerun found it done) reads as done."""
    status = row.get("status") or ""
    return "done (earlier run)" if status == "skipped" else status


def _evaluations(run: RunFolder) -> list[dict[str, Any]]:
    out = []
    for m in run.models:
        found = run.evaluation(m)
        out.append({"model": m, "evaluated": found is not None, "froc": _number((found or {}).get("froc")),
                    "auc": _number((found or {}).get("auc"))})
    return out


def slide_page(run: RunFolder, name: str) -> str:
    """The slide view's frame; :class:`~vistumor.viewer.run.NotFound` for an unknown slide."""
    return TEMPLATES.get_template("slide.html").render(slide=run.slide(name).name)


def run_info(run: RunFolder) -> dict[str, Any]:
    """``/api/run``: the slides and models, for scripts."""
    return {"root": str(run.root), "slides": [{"slide": s.name, "label": s.label, "found": s.path is not None}
                                              for s in run.slides.values()],
            "models": [{"name": m.name, "checkpoint": m.checkpoint} for m in run.models.values()]}


def slide_info(run: RunFolder, heat: HeatTiles, name: str, size: tuple[int, int] | None,
               mpp: float | None) -> dict[str, Any]:
    """``/api/slide/<name>``: what the slide view shows, per model."""
    entry = run.slide(name)
    models = {}
    for m in run.models.values():
        row = run.table(m.name).get(name, {})
        models[m.name] = {
            "checkpoint": m.checkpoint, "input_size": m.input_size,
            **{k: row.get(k) for k in ("score", "lesions", "detections", "largest_lesion_mm2", "status",
                                       "reason")},
            "layers": describe(heat, m.name, name), "evaluation": slide_evaluation(run, m.name, name),
        }
    return {"slide": entry.name, "label": entry.label, "found": entry.path is not None,
            "width": size[0] if size else None, "height": size[1] if size else None, "mpp": mpp,
            "annotation": entry.annotation is not None, "status": _status(run.status().get(name, {})),
            "models": models}


def slide_evaluation(run: RunFolder, model: str, slide: str) -> dict[str, Any]:
    """FROC hits and misses of one slide, and the run's scores (``evaluated: false`` when the
    evaluation has not run); ``hits`` of ``counted`` leave out ITCs, as the FROC does."""
    found = run.evaluation(model)
    if found is None:
        return {"evaluated": False}
    lesions = [lesion for lesion in found.get("lesions") or [] if lesion.get("slide") == slide]
    counted = [lesion for lesion in lesions if not lesion.get("itc")]
    per_slide = (found.get("false_positives") or {}).get("per_slide") or {}
    return {"evaluated": True, "mode": found.get("mode"), "froc": found.get("froc"), "auc": found.get("auc"),
            "sensitivity_at_fp": found.get("sensitivity_at_fp"), "lesions": lesions,
            "hits": sum(lesion.get("probability") is not None for lesion in counted), "counted": len(counted),
            "false_positives": per_slide.get(slide), "in_evaluation": slide in per_slide or bool(lesions)}
