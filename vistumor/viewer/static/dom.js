/* Two DOM helpers the slide view's scripts share. */
window.VistumorDom = {
  $: (id) => document.getElementById(id),
  /** An element with properties set and, optionally, its text. */
  el(tag, props, text) {
    const node = document.createElement(tag);
    Object.entries(props || {}).forEach(([k, v]) => { node[k] = v; });
    if (text !== undefined) node.textContent = text;
    return node;
  },
};
