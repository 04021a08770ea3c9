"""The two HTML pages (index and slide view) and the JSON the slide view reads.

Pages are templates from ``static/`` filled on the server: every name from the run goes
through :func:`html.escape` (text and attributes) and :func:`urllib.parse.quote` (links),
so a slide called ``<script>`` is shown, never run. The slide view's script fills in the
rest from ``/api/slide/<name>`` with ``textContent`` only.
"""

from __future__ import annotations

import html
from importlib import resources
from string import Template
from typing import Any
from urllib.parse import quote

from vistumor.viewer.layers import HeatTiles, describe
from vistumor.viewer.run import RunFolder

STATIC = resources.files("vistumor.viewer") / "static"


def template(name: str) -> Template:
    return Template((STATIC / name).read_text(encoding="utf-8"))


def _text(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _number(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else ""


def index_page(run: RunFolder) -> str:
    """One row per slide: name, label, score and lesions per model, status, thumbnail."""
    models = list(run.models)
    several = len(models) > 1
    heads = "".join(
        f'<th data-sort="number" title="click to sort">score{f" ({_text(m)})" if several else ""}</th>'
        f'<th data-sort="number">lesions{f" ({_text(m)})" if several else ""}</th>' for m in models)
    tables = {m: run.table(m) for m in models}
    status = run.status()
    rows = []
    for name, entry in run.slides.items():
        link = f"/view/{quote(name, safe='')}"
        cells = [f'<td><a href="{link}">{_text(name)}</a></td>', f"<td>{_text(entry.label or '')}</td>"]
        for m in models:
            row = tables[m].get(name, {})
            score, lesions = row.get("score"), row.get("lesions")
            cells.append(f'<td class="num" data-value="{_number(score, 6)}">{_number(score)}</td>')
            cells.append(f'<td class="num" data-value="{_number(lesions, 0)}">{_number(lesions, 0)}</td>')
        state = status.get(name, {})
        cells.append(f'<td title="{_text(state.get("reason"))}">{_text(_status(state))}</td>')
        thumb = f'/thumb/{quote(name, safe="")}.jpeg' if entry.path else ""
        image = f'<img src="{thumb}" alt="" loading="lazy">' if thumb else "slide file not found"
        figures = " ".join(f'<a href="/figure/{quote(m, safe="")}/{quote(name, safe="")}.png">'
                           f'figure{f" ({_text(m)})" if several else ""}</a>' for m in models)
        cells.append(f'<td class="thumb"><a href="{link}">{image}</a>{figures}</td>')
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return template("index.html").substitute(
        run=_text(run.root), heads=heads, rows="\n".join(rows), summary=_evaluations(run))


def _status(row: dict[str, Any]) -> str:
    """A slide's status; ``skipped`` (a rerun found it done) reads as done."""
    status = row.get("status") or ""
    return "done (earlier run)" if status == "skipped" else status


def _evaluations(run: RunFolder) -> str:
    parts = []
    for m in run.models:
        found = run.evaluation(m)
        if found is None:
            parts.append(f"<li>{_text(m)}: not evaluated</li>")
        else:
            parts.append(f"<li>{_text(m)}: FROC {_number(found.get('froc'))}, "
                         f"slide AUC {_number(found.get('auc'))}</li>")
    return "".join(parts)


def slide_page(run: RunFolder, name: str) -> str:
    """The slide view's frame; :class:`~vistumor.viewer.run.NotFound` for an unknown slide."""
    entry = run.slide(name)
    return template("slide.html").substitute(slide=_text(entry.name))


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
