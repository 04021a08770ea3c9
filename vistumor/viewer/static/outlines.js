/* VisTumor outline overlay: ground truth, predicted lesions (with their review status),
 * drawn lesions and the polygon being drawn, as SVG paths in level-0 px.
 *
 * One <svg> covers the viewer; its <g> carries the matrix from level-0 px to viewer-element
 * px, computed with OpenSeadragon's own TiledImage.imageToViewerElementCoordinates and set
 * again on every frame ("animation", "update-viewport", "resize"), so the outlines stay on
 * the tissue at any zoom. Strokes do not scale (vector-effect in viewer.css). No rotation.
 */
window.VistumorOutlines = (function () {
  "use strict";
  const SVG_NS = "http://www.w3.org/2000/svg";
  const GROUPS = ["truth", "lesions", "drawn", "draft"];

  function svgNode(tag, attrs) {
    const node = document.createElementNS(SVG_NS, tag);
    Object.entries(attrs).forEach(([k, v]) => node.setAttribute(k, v));
    return node;
  }

  function pathData(rings, open) {
    return rings.map((ring) => "M" + ring.map((p) => p[0] + " " + p[1]).join("L") + (open ? "" : "Z")).join("");
  }

  /* even-odd rule over every ring, as the SVG fill */
  function inside(rings, x, y) {
    let hit = false;
    rings.forEach((ring) => {
      for (let i = 0, j = ring.length - 1; i < ring.length; j = i++) {
        const [xi, yi] = ring[i], [xj, yj] = ring[j];
        if ((yi > y) !== (yj > y) && x < ((xj - xi) * (y - yi)) / (yj - yi) + xi) hit = !hit;
      }
    });
    return hit;
  }

  class Outlines {
    /* viewer: the OpenSeadragon viewer; slide: its TiledImage of the slide (level-0 px). */
    constructor(viewer, slide) {
      this.viewer = viewer;
      this.slide = slide;
      this.lesions = [];
      this.svg = svgNode("svg", { class: "vt-overlay", id: "vt-overlay" });
      this.root = svgNode("g", { id: "vt-root" });
      this.groups = {};
      GROUPS.forEach((name) => { this.groups[name] = svgNode("g", { id: "vt-" + name }); });
      this.root.append(...GROUPS.map((name) => this.groups[name]));
      this.svg.append(this.root);
      viewer.canvas.appendChild(this.svg);
      const place = () => this.place();
      ["animation", "update-viewport", "resize"].forEach((name) => viewer.addHandler(name, place));
      this.place();
    }

    /* level-0 px -> viewer-element px: a scale and a shift */
    place() {
      const width = this.slide.getContentSize().x;
      const origin = this.slide.imageToViewerElementCoordinates(new OpenSeadragon.Point(0, 0));
      const right = this.slide.imageToViewerElementCoordinates(new OpenSeadragon.Point(width, 0));
      const s = (right.x - origin.x) / width;
      this.root.setAttribute("transform", "matrix(" + [s, 0, 0, s, origin.x, origin.y].join(" ") + ")");
    }

    /* truth: rings of the annotation; lesions: [{rings, ...}] */
    draw(truth, lesions) {
      this.lesions = lesions;
      GROUPS.forEach((name) => this.groups[name].replaceChildren());
      if (truth.length) this.groups.truth.append(svgNode("path", { d: pathData(truth), class: "vt-truth" }));
      lesions.forEach((lesion, i) => {
        this.groups.lesions.append(svgNode("path", { d: pathData(lesion.rings), class: "vt-lesion", "data-index": i }));
      });
      this.place();
    }

    show(name, visible) {
      this.groups[name].style.display = visible ? "" : "none";
    }

    shown(name) {
      return this.groups[name].style.display !== "none";
    }

    /* statuses[i]: the review status of lesion i (confirmed, rejected, unreviewed) */
    mark(statuses) {
      this.groups.lesions.querySelectorAll("path").forEach((p, i) => {
        p.classList.toggle("confirmed", statuses[i] === "confirmed");
        p.classList.toggle("rejected", statuses[i] === "rejected");
      });
    }

    /* polygons: [[[x, y], ...], ...] drawn by the reviewer */
    drawn(polygons) {
      this.groups.drawn.replaceChildren(...polygons.map((points, i) =>
        svgNode("path", { d: pathData([points]), class: "vt-drawn", "data-index": i })));
    }

    /* the polygon being drawn: its vertices so far and a line to the cursor (or nothing) */
    draft(points, cursor) {
      this.groups.draft.replaceChildren();
      if (!points.length) return;
      const line = cursor ? points.concat([cursor]) : points;
      this.groups.draft.append(
        svgNode("path", { d: pathData([line], true), class: "vt-draft" }),
        svgNode("path", { d: points.map((p) => "M" + p[0] + " " + p[1] + "l0 0").join(""), class: "vt-vertices" }));
    }

    select(index) {
      this.groups.lesions.querySelectorAll("path").forEach((p, i) => p.classList.toggle("selected", i === index));
    }

    /* index of the shown lesion under level-0 (x, y), or -1 */
    lesionAt(x, y) {
      return this.shown("lesions") ? this.lesions.findIndex((lesion) => inside(lesion.rings, x, y)) : -1;
    }
  }

  return Outlines;
})();
