// Live updates: the server says "change" (server-sent events, at most twice a second)
// and the page fetches its fragment again and swaps it in. Without JavaScript the page
// is complete as served; reload to update.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live || !window.EventSource || !window.fetch) return;
  var url = live.getAttribute("data-fragment");
  var status = document.getElementById("live-status");
  var busy = false, again = false, updates = 0;
  function typing() {
    var a = document.activeElement;
    return a && live.contains(a) && /^(INPUT|TEXTAREA|SELECT)$/.test(a.tagName);
  }
  function refresh() {
    if (busy || typing()) { again = true; return; }
    busy = true;
    fetch(url, { credentials: "same-origin" })
      .then(function (r) { if (!r.ok) throw new Error(r.status); return r.text(); })
      .then(function (html) {
        live.innerHTML = html;
        updates += 1;
        live.setAttribute("data-updates", String(updates));
        if (status) status.textContent = "Live: updated " + new Date().toLocaleTimeString() + ".";
      })
      .catch(function () {
        if (status) status.textContent = "Live updates interrupted; retrying.";
      })
      .then(function () {
        busy = false;
        if (again) { again = false; setTimeout(refresh, 500); }
      });
  }
  var es = new EventSource("/live");
  es.addEventListener("change", refresh);
  es.addEventListener("open", function () {
    document.body.setAttribute("data-live", "on");
    refresh();
  });
  document.addEventListener("focusout", function () { if (again && !busy) { again = false; refresh(); } });
})();
