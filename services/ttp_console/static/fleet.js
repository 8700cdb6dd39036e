// The fleet page: reload the banner and table from /fleet/fragment every 5 seconds.
"use strict";
(function () {
  var box = document.getElementById("fleet");
  if (!box) { return; }
  var url = box.getAttribute("data-fragment");
  var busy = false;
  function refresh() {
    if (busy || document.hidden) { return; }
    busy = true;
    fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (response) {
        if (response.redirected || response.status === 401) { window.location.reload(); return null; }
        return response.text();
      })
      .then(function (html) {
        // The fragment is the console's own server-rendered, autoescaped HTML.
        if (html !== null) { box.innerHTML = html; }
      })
      .catch(function () { /* keep the last table; the next round tries again */ })
      .finally(function () { busy = false; });
  }
  setInterval(refresh, 5000);
})();
