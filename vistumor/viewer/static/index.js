/* VisTumor index: sort the slide table by a numeric column (click its header; again to reverse). */
(function () {
  "use strict";
  const table = document.getElementById("slides");
  if (!table) return;
  const body = table.tBodies[0];
  table.querySelectorAll("th[data-sort]").forEach(function (th) {
    th.classList.add("sortable");
    th.addEventListener("click", function () {
      const column = th.cellIndex;
      const descending = th.dataset.order !== "desc";
      table.querySelectorAll("th[data-sort]").forEach(function (other) { delete other.dataset.order; });
      th.dataset.order = descending ? "desc" : "asc";
      const value = function (row) {
        const v = parseFloat(row.cells[column].dataset.value);
        return Number.isFinite(v) ? v : null;
      };
      const rows = Array.from(body.rows);
      rows.sort(function (a, b) {
        const x = value(a), y = value(b);
        if (x === null || y === null) return (x === null) - (y === null);  // empty cells last
        return descending ? y - x : x - y;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
})();
