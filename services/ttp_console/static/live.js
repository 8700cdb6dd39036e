// Live tags: rows from the page's SSE stream (/live/stream?...), newest first.
// Every value is written as text (textContent), never as HTML: tags carry attacker input.
"use strict";
(function () {
  var table = document.getElementById("live-table");
  var rows = document.getElementById("live-rows");
  var status = document.getElementById("live-status");
  if (!table || !rows || !status) { return; }
  var MAX_ROWS = 500;
  var received = 0, dropped = 0;

  function say(text) { status.textContent = text; }
  function summary() {
    var text = received + (received === 1 ? " tag" : " tags") + " received";
    if (dropped) { text += ", " + dropped + " not shown (the browser fell behind)"; }
    say(text);
  }
  function cell(tr, className) {
    var td = document.createElement("td");
    if (className) { td.className = className; }
    tr.appendChild(td);
    return td;
  }
  function link(parent, href, text, className) {
    var a = document.createElement("a");
    a.href = href;
    a.textContent = text;
    if (className) { a.className = className; }
    parent.appendChild(a);
    return a;
  }
  function muted(parent, text) {
    var span = document.createElement("span");
    span.className = "muted";
    span.textContent = text;
    parent.appendChild(document.createTextNode(" "));
    parent.appendChild(span);
  }
  function addRow(tag) {
    var tr = document.createElement("tr");
    tr.className = "fresh";
    cell(tr, "nowrap").textContent = tag.time;
    var technique = cell(tr);
    link(technique, "/techniques/" + encodeURIComponent(tag.technique), tag.technique);
    muted(technique, tag.technique_name || "");
    link(cell(tr), "/rules/" + encodeURIComponent(tag.rule_id), tag.rule_id);
    var source = cell(tr);
    var code = document.createElement("span");
    code.className = "mono";
    code.textContent = tag.source_kind + "/" + tag.source_id;
    source.appendChild(code);
    var attacker = cell(tr);
    if (tag.attacker_uuid) {
      link(attacker, "/attackers/" + encodeURIComponent(tag.attacker_uuid), tag.attacker_uuid, "mono");
    }
    cell(tr, "num").textContent = Number(tag.confidence).toFixed(2);
    var evidence = document.createElement("dl");
    evidence.className = "evidence";
    (tag.evidence || []).forEach(function (pair) {
      var dt = document.createElement("dt");
      dt.textContent = pair[0];
      var dd = document.createElement("dd");
      var c = document.createElement("code");
      c.textContent = pair[1];
      dd.appendChild(c);
      evidence.appendChild(dt);
      evidence.appendChild(dd);
    });
    cell(tr).appendChild(evidence);
    rows.insertBefore(tr, rows.firstChild);
    while (rows.children.length > MAX_ROWS) { rows.removeChild(rows.lastChild); }
  }

  // The browser reconnects by itself after a stream ends or the network drops. It gives up
  // for good (readyState CLOSED) when the console answers with an error status or a redirect
  // (to the login page, once the session ended), without telling the page which: a HEAD
  // request, which opens nothing, answers the status a new stream would get now.
  var url = table.getAttribute("data-stream");
  var FIRST_RETRY_S = 5, MAX_RETRY_S = 120;
  var retryS = 0;

  function retryLater(why) {
    retryS = retryS ? Math.min(retryS * 2, MAX_RETRY_S) : FIRST_RETRY_S;
    say(why + " Retrying in " + retryS + " s; reload the page to retry now.");
    window.setTimeout(connect, retryS * 1000);
  }
  function explainClosed() {
    fetch(url, { method: "HEAD", credentials: "same-origin", redirect: "manual", cache: "no-store" })
      .then(function (response) {
        if (response.type === "opaqueredirect" || response.status === 401 || response.status === 403) {
          say("The live stream stopped: your session ended. Reload the page to log in again.");
        } else if (response.status === 429) {
          retryLater("The live stream was refused: you have too many Live tags pages open (other tabs or windows); close one.");
        } else if (response.status === 503) {
          retryLater("The live stream was refused: the console is busy or restarting.");
        } else if (response.ok) {
          retryLater("The live stream stopped.");
        } else {
          say("The live stream was refused (HTTP " + response.status + "): reload the page.");
        }
      }, function () {
        retryLater("The live stream stopped: the console cannot be reached.");
      });
  }
  function connect() {
    var source = new EventSource(url);
    source.onopen = function () { retryS = 0; summary(); };
    source.addEventListener("tag", function (event) {
      try { addRow(JSON.parse(event.data)); received += 1; } catch (e) { return; }
      summary();
    });
    source.addEventListener("dropped", function (event) {
      try { dropped += JSON.parse(event.data).count; } catch (e) { return; }
      summary();
    });
    source.addEventListener("bye", function () { say("The console closed the stream; reconnecting…"); });
    source.onerror = function () {
      if (source.readyState === EventSource.CLOSED) {
        say("The live stream stopped; checking why…");
        explainClosed();
      } else {
        say("Disconnected; reconnecting…");
      }
    };
  }
  connect();
})();
