// Progressive enhancement only: every page works without this file.
// A run in progress: poll its state and counts once a second instead of reloading
// the whole page (the <noscript> meta refresh does that without JavaScript).
(function () {
  "use strict";
  var box = document.querySelector("[data-poll]");
  if (!box) return;
  var url = box.getAttribute("data-poll");
  var bar = document.getElementById("bar");
  var count = document.getElementById("count");
  var phase = document.getElementById("phase");
  var shown = box.getAttribute("data-status");
  function tick() {
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (run) {
        if (!run) { setTimeout(tick, 2000); return; }
        if (run.status !== shown) { window.location.reload(); return; }
        var p = run.progress || {};
        var n = run.status === "planning" ? p.objects_listed : p.changes_staged;
        if (phase && run.phase) phase.textContent = run.phase;
        if (count && n !== undefined) count.textContent = n.toLocaleString("en");
        if (bar && n !== undefined && bar.hasAttribute("max")) bar.value = Math.min(n, bar.max);
        setTimeout(tick, 1000);
      })
      .catch(function () { setTimeout(tick, 2000); });
  }
  setTimeout(tick, 500);
})();
