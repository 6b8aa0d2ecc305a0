// virtplane console: live updates of the page from /ui/stream (server-sent events). Pages are complete
// without this script; it only keeps what they show current. An element with data-obj="Kind/name" holds
// cells with data-path="status.phase" (text) or a .bar with data-num/data-den paths; each watch event of
// that object rewrites the cells of the part it carries (spec or status). EventSource reconnects by itself
// and sends Last-Event-ID: the server resumes after the last revision this page saw.
"use strict";
(function () {
  var body = document.body;
  var kinds = body.dataset.watch;
  if (!kinds || !window.EventSource) { return; }
  var live = document.getElementById("live");
  var revision = parseInt(body.dataset.revision || "0", 10);
  window.vpConsole = { revision: revision, updates: 0, lastUpdate: null, state: "connecting" };

  function lookup(obj, path) {
    var value = obj;
    var parts = path.split(".");
    for (var i = 0; i < parts.length; i++) {
      if (value === null || typeof value !== "object") { return null; }
      value = value[parts[i]];
      if (value === undefined) { return null; }
    }
    return value;
  }
  function text(value) {
    if (value === null || value === undefined) { return ""; }
    if (value === true) { return "yes"; }
    if (value === false) { return "no"; }
    if (Array.isArray(value)) { return value.map(text).join(", "); }
    if (typeof value === "object") { return Object.keys(value).map(function (k) { return k + "=" + text(value[k]); }).join(", "); }
    return String(value);
  }
  function bytes(n) {
    var units = ["B", "KiB", "MiB", "GiB", "TiB"];
    for (var i = 0; i < units.length; i++) {
      if (n < 1024 || i === units.length - 1) { return i === 0 ? n.toFixed(0) + " B" : n.toFixed(1) + " " + units[i]; }
      n /= 1024;
    }
  }
  function number(n) { return String(Math.round(n * 1e6) / 1e6); }
  function setBar(bar, whole) {
    var num = lookup(whole, bar.dataset.num);
    var den = bar.dataset.den ? lookup(whole, bar.dataset.den) : null;
    var percent = null, label = "—";
    if (!bar.dataset.den) {
      if (typeof num === "number") { percent = Math.trunc(num); label = percent + "%"; }
    } else if (typeof num === "number" && typeof den === "number" && den > 0) {
      var used = bar.dataset.free ? den - num : num;
      percent = Math.max(0, Math.min(100, Math.round(100 * used / den)));
      label = bar.dataset.unit === "bytes" ? bytes(used) + " / " + bytes(den) + " (" + percent + "%)"
        : number(used) + " / " + number(den) + " (" + percent + "%)";
    }
    var progress = bar.querySelector("progress");
    progress.value = percent === null ? 0 : percent;
    progress.setAttribute("aria-label", label);
    bar.querySelector(".bar-label").textContent = label;
  }
  function rootOf(path) { return path.split(".")[0]; }
  function apply(event) {
    var key = event.kind + "/" + event.name;
    var holders = document.querySelectorAll('[data-obj="' + CSS.escape(key) + '"]');
    if (!holders.length) {
      if (event.type === "PUT" && event.part === "spec" && event.kind === kinds.split(",")[0] && document.querySelector("table.objects")) {
        var note = document.getElementById("new-objects");
        if (note) { note.hidden = false; }
      }
      return;
    }
    var whole = {};
    var root = event.part === "status" ? "status" : null;
    if (event.part === "status") { whole.status = event.object || {}; }
    else if (event.object) { whole = event.object; }
    holders.forEach(function (holder) {
      if (event.type === "DELETE" && event.part === "spec") { holder.classList.add("gone"); return; }
      holder.querySelectorAll("[data-path]").forEach(function (cell) {
        var r = rootOf(cell.dataset.path);
        if ((root === "status") !== (r === "status")) { return; }
        var raw = lookup(whole, cell.dataset.path);
        var value = cell.dataset.unit === "bytes" && typeof raw === "number" ? bytes(raw) : text(raw);
        if (cell.textContent !== value) { cell.textContent = value; }
      });
      holder.querySelectorAll(".bar").forEach(function (bar) {
        if ((root === "status") !== (rootOf(bar.dataset.num) === "status")) { return; }
        setBar(bar, whole);
      });
    });
    window.vpConsole.updates += 1;
    window.vpConsole.lastUpdate = { revision: event.revision, at: Date.now(), key: key };
  }
  function say(message) { live.hidden = false; live.textContent = message; }

  var shown = {};
  document.querySelectorAll("[data-obj]").forEach(function (el) { shown[el.dataset.obj] = true; });
  var url = "/ui/stream?kinds=" + encodeURIComponent(kinds) + "&resourceVersion=" + (revision + 1) +
    "&objects=" + encodeURIComponent(Object.keys(shown).join(","));
  if (document.querySelector("table.objects")) { url += "&listing=" + encodeURIComponent(kinds.split(",")[0]); }
  var source = new EventSource(url);
  source.onopen = function () { window.vpConsole.state = "live"; say("Live"); };
  source.onerror = function () {
    // A network error: the browser reconnects by itself (Last-Event-ID). A refusal (401, 403) closes it.
    if (source.readyState === EventSource.CLOSED) {
      window.vpConsole.state = "closed";
      say("Not live (session expired, or your role may not watch these objects): reload to see changes");
    } else {
      window.vpConsole.state = "reconnecting";
      say("Reconnecting…");
    }
  };
  source.onmessage = function (message) {
    var event = JSON.parse(message.data);
    window.vpConsole.revision = event.revision;
    apply(event);
  };
}());
