// modelmill console: the only script. Confirms actions, keeps a live page current, adds keyboard shortcuts.
// No library, no network beyond this console's own pages.
(function () {
  "use strict";

  // Actions (promote, roll back) ask first; the server checks the CSRF token whatever happens here.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form.getAttribute && form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) {
      event.preventDefault();
    }
  });

  // A live page (data-poll="3") re-reads itself and swaps its #live part, unless a form in it has focus.
  var seconds = parseInt(document.body.getAttribute("data-poll") || "0", 10);
  if (seconds > 0 && window.fetch && window.DOMParser) {
    var busy = false;
    window.setInterval(function () {
      var live = document.getElementById("live");
      if (!live || busy || document.hidden || live.contains(document.activeElement)) {
        return;
      }
      busy = true;
      // The same page, query included (a rollout picked by ?id= stays that rollout).
      window.fetch(window.location.pathname + window.location.search, {credentials: "same-origin", headers: {"Accept": "text/html"}})
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (text) {
          if (text === null) { return; }
          var next = new DOMParser().parseFromString(text, "text/html").getElementById("live");
          if (next) { live.innerHTML = next.innerHTML; live.setAttribute("data-updated", String(Date.now())); }
        })
        .catch(function () { /* the next tick tries again */ })
        .then(function () { busy = false; });
    }, seconds * 1000);
  }

  // Keyboard: "g" then a letter goes to a page (o overview, r runs, l rollouts, e experiments,
  // m monitoring, i ingestion); "/" focuses the page's search box.
  var pages = {o: "", r: "runs", l: "rollouts", e: "experiments", m: "monitoring", i: "ingestion"};
  var pending = false;
  var brand = document.querySelector("header .brand");
  var base = brand ? brand.getAttribute("href").replace(/\/$/, "") : "";
  document.addEventListener("keydown", function (event) {
    var tag = (event.target.tagName || "").toLowerCase();
    if (tag === "input" || tag === "textarea" || event.ctrlKey || event.metaKey || event.altKey) {
      return;
    }
    if (event.key === "/") {
      var box = document.querySelector("form.search input");
      if (box) { event.preventDefault(); box.focus(); }
      return;
    }
    if (pending && Object.prototype.hasOwnProperty.call(pages, event.key)) {
      pending = false;
      window.location.href = base + "/" + pages[event.key];
      return;
    }
    pending = event.key === "g";
  });
}());
