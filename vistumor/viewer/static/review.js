/* VisTumor review: a reviewer confirms or rejects each predicted lesion, draws missed ones
 * as polygons, writes a comment and saves (POST /api/review/<model>/<slide>; the server checks
 * and writes reviews/<model>/<slide>.geojson, .xml and .review.json under the run folder).
 *
 * Drawing: "Draw a missed lesion", then click the vertices on the slide (level-0 px through
 * the slide's TiledImage.viewerElementToImageCoordinates; OpenSeadragon's mouse navigation is
 * off meanwhile, its zoom buttons and navigator still work); double-click, Enter or "Close
 * polygon" ends it, Backspace removes the last vertex, Esc cancels; a drag adds nothing. One review per model,
 * kept in memory while the page is open; the reviewer's name is kept in localStorage.
 *
 * A save sends the version of the review it changes (based_on; 0 when none was saved): when a
 * colleague saved the review meanwhile, the server answers 409 and the reason is shown.
 */
window.VistumorReview = (function () {
  "use strict";
  const OSD = window.OpenSeadragon;
  const STATUSES = ["confirmed", "rejected", "unreviewed"];
  const LABELS = { confirmed: "Confirm", rejected: "Reject", unreviewed: "Unreviewed" };
  const NAME_KEY = "vistumor.reviewer";
  const SAME_CLICK_PX = 4;  // the second click of a double-click adds no vertex
  const enc = encodeURIComponent;
  const { $, el } = window.VistumorDom;

  function storedName() {
    try { return localStorage.getItem(NAME_KEY) || ""; } catch (err) { return ""; }
  }

  function storeName(name) {
    try { localStorage.setItem(NAME_KEY, name); } catch (err) { /* private mode: the field keeps it */ }
  }

  /* proper crossing of segments ab and cd (shared end points do not count) */
  function crosses(a, b, c, d) {
    const side = (p, q, r) => Math.sign((q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0]));
    return side(a, b, c) * side(a, b, d) < 0 && side(c, d, a) * side(c, d, b) < 0;
  }

  function selfCrossing(points) {
    const n = points.length;
    for (let i = 0; i < n; i++) {
      for (let j = i + 2; j < n; j++) {
        if (i === 0 && j === n - 1) continue;  // neighbours through the closing edge
        if (crosses(points[i], points[(i + 1) % n], points[j], points[(j + 1) % n])) return true;
      }
    }
    return false;
  }

  class Review {
    /* app: window.vistumorApp (viewer, slide, outlines, info); hooks: {say, select, goTo} */
    constructor(app, slideName, hooks) {
      this.app = app;
      this.slideName = slideName;
      this.hooks = hooks;
      this.byModel = {};
      this.current = null;
      this.model = null;
      this.lesions = [];
      this.drawing = false;
      this.points = [];
      this.name = $("reviewer");
      this.comment = $("comment");
      this.name.value = storedName();
      this.name.addEventListener("change", () => storeName(this.name.value.trim()));
      this.comment.addEventListener("input", () => {
        if (!this.current) return;
        this.current.comment = this.comment.value;
        this.changed();
      });
      $("draw").addEventListener("click", () => this.startDrawing());
      $("draw-finish").addEventListener("click", () => this.finishDrawing());
      $("draw-cancel").addEventListener("click", () => this.stopDrawing());
      $("save-review").addEventListener("click", () => this.save());
      const canvas = app.viewer.canvas;
      canvas.addEventListener("mousedown", (e) => { this.pressed = this.imagePoint(e).element; });
      canvas.addEventListener("click", (e) => this.onClick(e));
      canvas.addEventListener("dblclick", (e) => { if (this.drawing) { e.preventDefault(); this.finishDrawing(); } });
      canvas.addEventListener("mousemove", (e) => { if (this.drawing) this.drawDraft(this.imagePoint(e).image); });
      document.addEventListener("keydown", (e) => this.onKey(e));
      window.addEventListener("beforeunload", (e) => {
        if (Object.values(this.byModel).some((r) => r.dirty)) { e.preventDefault(); e.returnValue = ""; }
      });
    }

    url(model) {
      return "/api/review/" + enc(model) + "/" + enc(this.slideName);
    }

    /* the model's review: from memory, else the saved one (a promise) */
    fetch(model) {
      if (this.byModel[model]) return Promise.resolve(this.byModel[model]);
      return fetch(this.url(model)).then((r) => {
        if (!r.ok) return r.text().then((text) => { throw new Error(text.trim() || "HTTP " + r.status); });
        return r.json();
      }).then((answer) => this.fromSaved(answer), (err) => {
        const empty = this.fromSaved({ saved: false });  // the lesions still show; saving replaces the file
        empty.error = "the saved review cannot be read (" + err.message + ")";
        return empty;
      }).then((review) => (this.byModel[model] = this.byModel[model] || review));
    }

    fromSaved(answer) {
      const saved = answer.saved ? answer.review : null;
      return {
        statuses: Object.assign({}, saved ? saved.lesions : {}),
        drawn: saved ? saved.drawn.map((d) => d.points) : [],
        comment: saved ? saved.comment : "",
        saved: saved ? { reviewer: saved.reviewer, at: saved.reviewed_at } : null,
        version: saved ? saved.version || 1 : 0,  // what a save is based on (the server refuses another: 409)
        stale: !!answer.stale,
        dirty: false,
      };
    }

    /* show the model's review on its lesions ([{id, rings, ...}]) */
    show(model, lesions) {
      this.stopDrawing();
      this.model = model;
      this.lesions = lesions;
      this.current = this.byModel[model];
      const known = new Set(lesions.map((lesion) => String(lesion.id)));
      const dropped = Object.keys(this.current.statuses).filter((id) => !known.has(id));
      dropped.forEach((id) => { delete this.current.statuses[id]; });
      this.comment.value = this.current.comment;
      if (!this.name.value && this.current.saved) this.name.value = this.current.saved.reviewer;
      this.render();
      if (this.current.error) this.state(this.current.error, true);
      if (dropped.length || this.current.stale) {
        this.state("the lesions changed since this review was saved" +
          (dropped.length ? ": " + dropped.length + " status(es) dropped" : ""), true);
      }
    }

    status(index) {
      const lesion = this.lesions[index];
      return (lesion && this.current && this.current.statuses[String(lesion.id)]) || "unreviewed";
    }

    setStatus(index, status) {
      this.current.statuses[String(this.lesions[index].id)] = status;
      this.changed();
      this.render();
      this.hooks.select(index);
    }

    changed() {
      this.current.dirty = true;
      this.state("unsaved changes");
    }

    state(text, error) {
      const line = $("review-state");
      line.textContent = text;
      line.classList.toggle("message", !!error);
      line.classList.toggle("muted", !error);
    }

    /* the confirm / reject / unreviewed buttons of lesion `index`, for the lesion panel */
    controls(index) {
      const box = el("div", { className: "review-buttons" });
      box.setAttribute("role", "group");
      box.setAttribute("aria-label", "review this lesion");
      const now = this.status(index);
      STATUSES.forEach((status) => {
        const button = el("button", { type: "button", className: "status-" + status }, LABELS[status]);
        button.dataset.status = status;
        button.setAttribute("aria-pressed", String(status === now));
        button.addEventListener("click", () => this.setStatus(index, status));
        box.append(button);
      });
      return box;
    }

    render() {
      if (!this.current) return;
      const statuses = this.lesions.map((lesion, i) => this.status(i));
      this.app.outlines.mark(statuses);
      this.app.outlines.drawn(this.current.drawn);
      const count = (s) => statuses.filter((x) => x === s).length;
      $("review-summary").textContent = this.lesions.length + " predicted lesion(s): " + count("confirmed") +
        " confirmed, " + count("rejected") + " rejected, " + count("unreviewed") + " unreviewed; " +
        this.current.drawn.length + " drawn";
      $("review-lesions").replaceChildren(...this.lesions.map((lesion, i) => {
        const p = lesion.tumor_probability;
        const item = el("li", { className: "status-" + statuses[i], title: "show this lesion" },
          "lesion " + (i + 1) + (typeof p === "number" ? " · p " + p.toFixed(3) : "") + " · " + statuses[i]);
        item.dataset.index = i;
        item.addEventListener("click", () => {
          const ring = lesion.rings[0];
          const xs = ring.map((v) => v[0]), ys = ring.map((v) => v[1]);
          this.hooks.goTo((Math.min(...xs) + Math.max(...xs)) / 2, (Math.min(...ys) + Math.max(...ys)) / 2);
          this.hooks.select(i);
        });
        return item;
      }));
      $("drawn-list").replaceChildren(...this.current.drawn.map((points, k) => {
        const item = el("li", {}, "drawn lesion " + (k + 1) + " (" + points.length + " vertices) ");
        const remove = el("button", { type: "button", className: "link" }, "remove");
        remove.addEventListener("click", () => { this.current.drawn.splice(k, 1); this.changed(); this.render(); });
        item.append(remove);
        return item;
      }));
      if (!this.current.dirty) {
        this.state(this.current.saved ? "saved by " + this.current.saved.reviewer + " at " + this.current.saved.at
          : "not reviewed yet");
      }
    }

    // -- drawing ------------------------------------------------------------------------

    startDrawing() {
      if (this.drawing || !this.current) return;
      this.drawing = true;
      this.points = [];
      this.app.viewer.setMouseNavEnabled(false);
      document.getElementById("osd").classList.add("drawing");
      this.toggleDrawButtons();
      this.hooks.say("");
    }

    stopDrawing() {
      if (!this.drawing) return;
      this.drawing = false;
      this.points = [];
      this.app.outlines.draft([]);
      this.app.viewer.setMouseNavEnabled(true);
      document.getElementById("osd").classList.remove("drawing");
      this.toggleDrawButtons();
    }

    toggleDrawButtons() {
      $("draw").hidden = this.drawing;
      $("draw-finish").hidden = $("draw-cancel").hidden = $("draw-hint").hidden = !this.drawing;
    }

    imagePoint(e) {
      const box = this.app.viewer.element.getBoundingClientRect();
      const element = new OSD.Point(e.clientX - box.left, e.clientY - box.top);
      return { element: element, image: this.app.slide.viewerElementToImageCoordinates(element) };
    }

    onClick(e) {
      if (!this.drawing) return;
      const p = this.imagePoint(e);
      if (this.pressed && p.element.distanceTo(this.pressed) >= SAME_CLICK_PX) return;  // a drag, not a click
      if (this.lastClick && this.points.length && p.element.distanceTo(this.lastClick) < SAME_CLICK_PX) return;
      const info = this.app.info;
      if (p.image.x < 0 || p.image.y < 0 || p.image.x > info.width || p.image.y > info.height) {
        this.hooks.say("that point lies outside the slide");
        return;
      }
      this.hooks.say("");
      this.lastClick = p.element;
      this.points.push([Math.round(p.image.x * 100) / 100, Math.round(p.image.y * 100) / 100]);
      this.drawDraft(null);
    }

    drawDraft(cursor) {
      this.app.outlines.draft(this.points, cursor && this.points.length ? [cursor.x, cursor.y] : null);
    }

    finishDrawing() {
      if (!this.drawing) return;
      if (this.points.length < 3) { this.hooks.say("a lesion needs at least 3 vertices"); return; }
      if (selfCrossing(this.points)) { this.hooks.say("the outline crosses itself: Backspace removes vertices"); return; }
      this.current.drawn.push(this.points);
      this.stopDrawing();
      this.changed();
      this.render();
    }

    onKey(e) {
      if (!this.drawing || ["INPUT", "TEXTAREA", "SELECT"].includes(e.target.tagName)) return;
      if (e.key === "Escape") this.stopDrawing();
      else if (e.key === "Enter") this.finishDrawing();
      else if (e.key === "Backspace") { e.preventDefault(); this.points.pop(); this.drawDraft(null); }
    }

    // -- saving -------------------------------------------------------------------------

    save() {
      const reviewer = this.name.value.trim();
      if (!reviewer) { this.state("enter the reviewer's name first", true); this.name.focus(); return; }
      storeName(reviewer);
      const model = this.model, review = this.current;
      const statuses = {};
      this.lesions.forEach((lesion, i) => { statuses[String(lesion.id)] = this.status(i); });
      const body = JSON.stringify({ reviewer: reviewer, comment: review.comment, lesions: statuses,
        drawn: review.drawn.map((points) => ({ points: points })), based_on: review.version });
      $("save-review").disabled = true;
      fetch(this.url(model), { method: "POST", headers: { "Content-Type": "application/json" }, body: body })
        .then((r) => r.text().then((text) => {
          if (!r.ok) throw new Error(text.trim().replace(/^\d{3} /, ""));  // the server's one line
          return JSON.parse(text);
        }))
        .then((answer) => {
          this.byModel[model] = this.fromSaved(answer);
          if (model === this.model) this.show(model, this.lesions);
          this.app.saved = answer;  // for scripts and tests
        })
        .catch((err) => this.state("not saved: " + err.message, true))
        .finally(() => { $("save-review").disabled = false; });
    }
  }

  return Review;
})();
