// Live updates: the server says "change" (server-sent events, at most twice a second)
// and the page fetches its fragment again and swaps it in. Without JavaScript the page
// is complete as served; reload to update.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live || !window.EventSource || !window.fetch) return;
  var url = live.getAttribute("data-fragment");
  var status = document.getElementById("live-status");
  var busy = false, again = false, updates = 0, pending = null;
  function typing() {
    var a = document.activeElement;
    return a && live.contains(a) && /^(INPUT|TEXTAREA|SELECT)$/.test(a.tagName);
  }
  // A form with something written in it (a reason, a note) is never swapped away: the
  // update waits until it is sent or emptied.
  function dirty() {
    var els = live.querySelectorAll("input, textarea");
    for (var i = 0; i < els.length; i++) {
      var e = els[i];
      var text = e.tagName === "TEXTAREA" || /^(text|search|number)$/.test(e.type);
      if (text && e.value !== e.defaultValue) return true;
    }
    return false;
  }
  function held() { return typing() || dirty(); }
  function refresh() {
    if (busy || held()) {
      again = true;
      // One retry pending at a time, however many changes arrive meanwhile.
      if (!busy && !pending) pending = setTimeout(function () { pending = null; retry(); }, 2000);
      return;
    }
    busy = true;
    fetch(url, { credentials: "same-origin" })
      .then(function (r) { if (!r.ok) throw new Error(r.status); return r.text(); })
      .then(function (html) {
        if (held()) { again = true; return; }
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
  function retry() { if (again && !busy) { again = false; refresh(); } }
  var es = new EventSource("/live");
  es.addEventListener("change", refresh);
  es.addEventListener("open", function () {
    document.body.setAttribute("data-live", "on");
    refresh();
  });
  document.addEventListener("focusout", retry);
})();
