// Live updates: the server says "changed" over server-sent events; the page then
// fetches itself again and swaps in its <main id="live"> (no framework, no state).
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live || !window.EventSource) { return; }
  var busy = false;
  function refresh() {
    if (busy) { return; }
    var active = document.activeElement;
    if (active && (active.tagName === "TEXTAREA" || active.tagName === "INPUT" ||
                   active.tagName === "SELECT") && live.contains(active)) { return; }
    busy = true;
    fetch(window.location.href, {credentials: "same-origin"})
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (html) {
          var doc = new DOMParser().parseFromString(html, "text/html");
          var fresh = doc.getElementById("live");
          if (fresh) {
            live.innerHTML = fresh.innerHTML;
            live.dataset.version = fresh.dataset.version || "";
          }
        }
      })
      .finally(function () { busy = false; });
  }
  var source = new EventSource("/live?v=" + encodeURIComponent(live.dataset.version || ""));
  source.addEventListener("changed", refresh);
})();
