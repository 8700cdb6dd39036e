// Expiry countdowns: every <time class="countdown" datetime="..."> shows the time left.
"use strict";
(function () {
  function format(seconds) {
    if (seconds <= 0) { return "expired"; }
    var d = Math.floor(seconds / 86400), h = Math.floor((seconds % 86400) / 3600);
    var m = Math.floor((seconds % 3600) / 60), s = Math.floor(seconds % 60);
    if (d) { return "in " + d + "d " + h + "h"; }
    if (h) { return "in " + h + "h " + m + "m"; }
    if (m) { return "in " + m + "m " + s + "s"; }
    return "in " + s + "s";
  }
  function tick() {
    var now = Date.now();
    document.querySelectorAll("time.countdown[datetime]").forEach(function (el) {
      var at = Date.parse(el.getAttribute("datetime"));
      if (!isNaN(at)) { el.textContent = format((at - now) / 1000); }
    });
  }
  tick();
  setInterval(tick, 1000);
})();
