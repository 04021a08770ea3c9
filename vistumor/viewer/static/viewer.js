/* VisTumor slide view: OpenSeadragon with the slide (item 0), the heatmap layers (tiled images
 * with the slide's Deep Zoom geometry) and an SVG overlay of outlines in level-0 px.
 *
 * The outlines are drawn by outlines.js, the review (confirm / reject lesions, draw missed
 * ones, save) is review.js. The chosen model, layers and opacities live in the URL hash: a
 * reload shows the same view. Text from the run is set with textContent only.
 */
(function () {
  "use strict";
  const OSD = window.OpenSeadragon;
  const LAYERS = ["probability", "cam"];
  const OUTLINES = { truth: "ground truth", lesions: "predicted lesions" };
  const DEFAULT_SHOWN = ["probability", "truth", "lesions"];
  const DEFAULT_OPACITY = 0.6;
  const slideName = document.body.dataset.slide;
  const enc = encodeURIComponent;
  const app = (window.vistumorApp = { ready: false, generation: 0, heat: {}, lesions: [], truth: [] });
  let state = null;

  const { $, el } = window.VistumorDom;

  function fmt(value, digits) {
    return typeof value === "number" && Number.isFinite(value) ? value.toFixed(digits === undefined ? 3 : digits) : "–";
  }

  function facts(dl, rows) {
    dl.replaceChildren();
    rows.forEach(([key, value]) => { dl.append(el("dt", {}, key), el("dd", {}, value)); });
  }

  function getJSON(url) {
    return fetch(url).then((r) => { if (!r.ok) throw new Error(url + ": HTTP " + r.status); return r.json(); });
  }

  function say(text) { $("message").textContent = text; }

  // -- the state in the URL hash ---------------------------------------------------------

  function readState(models) {
    const p = new URLSearchParams(location.hash.slice(1));
    const model = models.includes(p.get("model")) ? p.get("model") : models[0];
    const shown = new Set(p.has("show") ? p.get("show").split(",").filter(Boolean) : DEFAULT_SHOWN);
    const opacity = {};
    LAYERS.forEach((layer) => {
      const v = parseFloat(p.get(layer));
      opacity[layer] = Number.isFinite(v) ? Math.min(1, Math.max(0, v)) : DEFAULT_OPACITY;
    });
    return { model: model, shown: shown, opacity: opacity };
  }

  function writeState() {
    const p = new URLSearchParams();
    p.set("model", state.model);
    p.set("show", Array.from(state.shown).join(","));
    LAYERS.forEach((layer) => p.set(layer, state.opacity[layer].toFixed(2)));
    history.replaceState(null, "", "#" + p.toString());
  }

  // -- the viewer ------------------------------------------------------------------------

  function openViewer() {
    const viewer = (app.viewer = OSD({
      id: "osd",
      prefixUrl: "/static/openseadragon/images/",
      tileSources: "/slide/" + enc(slideName) + ".dzi",
      drawer: "canvas",
      showNavigator: true,
      navigatorPosition: "BOTTOM_RIGHT",
      showRotationControl: false,
      maxZoomPixelRatio: 2,
      visibilityRatio: 0.5,
      gestureSettingsMouse: { clickToZoom: false },
    }));
    viewer.addHandler("open", () => {
      app.slide = viewer.world.getItemAt(0);
      app.outlines = new window.VistumorOutlines(viewer, app.slide);
      app.review = new window.VistumorReview(app, slideName, { say: say, select: select, goTo: goTo });
      loadModel();
    });
    viewer.addHandler("open-failed", (e) => say("cannot open the slide: " + e.message));
    viewer.addHandler("canvas-click", onClick);
  }

  function layerOpacity(layer) {
    return state.shown.has(layer) ? state.opacity[layer] : 0;
  }

  function loadModel() {
    const generation = ++app.generation;
    app.ready = false;
    Object.values(app.heat).forEach((item) => app.viewer.world.removeItem(item));
    app.heat = {};
    const model = app.info.models[state.model];
    const bounds = app.slide.getBounds();
    LAYERS.filter((layer) => model.layers[layer].available).forEach((layer) => {
      app.viewer.addTiledImage({
        tileSource: "/heat/" + enc(state.model) + "/" + layer + "/" + enc(slideName) + ".dzi",
        x: bounds.x, y: bounds.y, width: bounds.width,
        opacity: layerOpacity(layer),
        success: (e) => {
          if (generation !== app.generation) { app.viewer.world.removeItem(e.item); return; }
          app.heat[layer] = e.item;
        },
        error: (e) => say("heatmap " + layer + ": " + e.message),
      });
    });
    fillModel();
    loadOutlines(generation);
  }

  // -- outlines (outlines.js) --------------------------------------------------------------

  function loadOutlines(generation) {
    app.truthRequest = app.truthRequest || getJSON("/api/truth/" + enc(slideName));
    const lesions = getJSON("/api/lesions/" + enc(state.model) + "/" + enc(slideName));
    const model = state.model;
    app.review.stopDrawing();
    Promise.all([app.truthRequest, lesions, app.review.fetch(model)]).then(([truth, predicted]) => {
      if (generation !== app.generation) return;
      app.truth = truth.rings;
      app.lesions = predicted.lesions;
      app.outlines.draw(app.truth, app.lesions);
      app.review.show(model, app.lesions);
      select(-1);
      showOutlines();
      app.ready = true;
    }).catch((err) => say(String(err)));
  }

  function showOutlines() {
    if (app.outlines) Object.keys(OUTLINES).forEach((name) => app.outlines.show(name, state.shown.has(name)));
  }

  /* every visible layer drawn at full resolution for the current view, outlines drawn */
  app.loaded = function () {
    if (!app.ready || !app.viewer || !app.slide) return false;
    const model = app.info.models[state.model];
    const expected = 1 + LAYERS.filter((layer) => model.layers[layer].available).length;
    const world = app.viewer.world;
    if (world.getItemCount() !== expected) return false;
    for (let i = 0; i < expected; i++) {
      const item = world.getItemAt(i);
      if (item.getOpacity() > 0 && !item.getFullyLoaded()) return false;
    }
    return true;
  };

  function onClick(e) {
    if (!e.quick || !app.outlines) return;
    const p = app.slide.viewerElementToImageCoordinates(e.position);
    select(app.outlines.lesionAt(p.x, p.y));
  }

  function select(index) {
    app.outlines.select(index);
    app.selected = index;
    const box = $("lesion");
    const lesion = app.lesions[index];
    box.classList.toggle("muted", !lesion);
    if (!lesion) { box.textContent = "click a predicted lesion"; return; }
    const dl = el("dl");
    facts(dl, [["lesion", String(lesion.id)], ["tumor probability", fmt(lesion.tumor_probability)],
      ["mean probability", fmt(lesion.mean_probability)], ["area", fmt(lesion.area_mm2, 4) + " mm²"],
      ["review", app.review.status(index)]]);
    box.replaceChildren(dl, app.review.controls(index));
  }

  // -- the panel ---------------------------------------------------------------------------

  function fillSlide() {
    const info = app.info;
    facts($("facts"), [["label", info.label || "unknown"], ["status", info.status || "–"],
      ["size", info.width ? info.width + " × " + info.height + " px" : "slide file not found"],
      ["µm/px", fmt(info.mpp, 4)]]);
    const chooser = $("model");
    Object.keys(info.models).forEach((name) => chooser.append(el("option", { value: name }, name)));
    chooser.value = state.model;
    chooser.disabled = chooser.options.length < 2;
    chooser.addEventListener("change", () => {
      state.model = chooser.value;
      writeState();
      if (app.slide) loadModel(); else fillModel();
    });
    Object.entries(OUTLINES).forEach(([name, title]) => {
      const box = el("input", { type: "checkbox", checked: state.shown.has(name) });
      box.dataset.outline = name;
      box.addEventListener("change", () => { toggle(name, box.checked); showOutlines(); });
      const none = name === "truth" && !info.annotation;
      box.disabled = none;
      const label = el("label", { className: "check " + name });
      label.append(box, " " + title + (none ? " (none)" : ""));
      $("overlays").append(label);
    });
  }

  function toggle(name, on) {
    if (on) state.shown.add(name); else state.shown.delete(name);
    writeState();
  }

  function fillModel() {
    const model = app.info.models[state.model];
    facts($("model-facts"), [["score", fmt(model.score)], ["lesions", fmt(model.lesions, 0)],
      ["largest", fmt(model.largest_lesion_mm2, 4) + " mm²"], ["detections", fmt(model.detections, 0)],
      ["checkpoint", model.checkpoint || "–"], ["input", model.input_size ? model.input_size + " px" : "–"]]);
    $("layers").replaceChildren(...LAYERS.map((layer) => layerControl(layer, model.layers[layer])));
    fillEvaluation(model.evaluation);
  }

  function layerControl(layer, meta) {
    const box = el("div", { className: "layer" });
    if (!meta.available) { box.append(el("p", { className: "muted" }, meta.title + ": not in this run")); return box; }
    const check = el("input", { type: "checkbox", checked: state.shown.has(layer) });
    check.dataset.layer = layer;
    const slider = el("input", { type: "range", min: 0, max: 1, step: 0.05, value: state.opacity[layer] });
    slider.setAttribute("aria-label", meta.title + " opacity");
    const apply = () => { if (app.heat[layer]) app.heat[layer].setOpacity(layerOpacity(layer)); };
    check.addEventListener("change", () => { toggle(layer, check.checked); apply(); });
    slider.addEventListener("input", () => { state.opacity[layer] = parseFloat(slider.value); writeState(); apply(); });
    const label = el("label", { className: "check" });
    label.append(check, " " + meta.title);
    const bar = el("div", { className: "colorbar" });
    bar.style.background = "linear-gradient(to right, " + meta.stops.join(", ") + ")";
    const ticks = el("div", { className: "ticks" });
    ticks.append(el("span", {}, fmt(meta.vmin, 2)), el("span", {}, "opacity"), el("span", {}, fmt(meta.vmax, 2)));
    box.append(label, slider, bar, ticks);
    return box;
  }

  function fillEvaluation(found) {
    const box = $("evaluation");
    box.classList.toggle("muted", !found.evaluated);
    if (!found.evaluated) { box.textContent = "not evaluated"; return; }
    const dl = el("dl");
    facts(dl, [["run FROC", fmt(found.froc)], ["run slide AUC", fmt(found.auc)],
      ["lesions hit", found.hits + " of " + found.counted +
        (found.lesions.length > found.counted ? " (+" + (found.lesions.length - found.counted) + " ITC, not counted)" : "")],
      ["false positives", found.false_positives === undefined || found.false_positives === null
        ? "–" : String(found.false_positives)]]);
    const list = el("ul", { className: "froc" });
    found.lesions.forEach((lesion) => {
      const hit = lesion.probability !== null && lesion.probability !== undefined;
      const item = el("li", { className: hit ? "hit" : "miss" },
        "lesion " + lesion.label + (lesion.itc ? " (ITC)" : "") + ": " + (hit ? "hit, p " + fmt(lesion.probability) : "missed"));
      if (hit) {
        item.title = "show the detection";
        item.addEventListener("click", () => goTo(lesion.x, lesion.y));
      }
      list.append(item);
    });
    box.replaceChildren(dl, list);
  }

  function goTo(x, y) {
    if (!app.slide) return;
    app.viewer.viewport.panTo(app.slide.imageToViewportCoordinates(x, y));
    app.viewer.viewport.zoomTo(app.slide.imageToViewportZoom(0.5));
  }

  // -- start ------------------------------------------------------------------------------

  /* a hash typed or pasted by hand (replaceState raises no hashchange) */
  window.addEventListener("hashchange", () => {
    if (!app.info) return;
    state = app.state = readState(Object.keys(app.info.models));
    $("model").value = state.model;
    document.querySelectorAll("#overlays input").forEach((box) => { box.checked = state.shown.has(box.dataset.outline); });
    showOutlines();
    if (app.slide) loadModel(); else fillModel();
  });

  getJSON("/api/slide/" + enc(slideName)).then((info) => {
    app.info = info;
    state = app.state = readState(Object.keys(info.models));
    writeState();
    fillSlide();
    if (!Object.keys(info.models).length) { say("this run has no models"); return; }
    if (!info.found) {
      say("the slide file is not found: only the panel can be shown");
      $("review").hidden = true;  // a review needs the slide (its drawn lesions, its bounds)
      fillModel();
      return;
    }
    openViewer();
  }).catch((err) => say(String(err)));
})();
