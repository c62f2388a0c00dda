/* Progressive enhancement only: every page works without this file.
   Copy buttons (token reveal) and confirm prompts for htmx deletes. */
(function () {
  "use strict";
  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy-target]");
    if (!button) return;
    var input = document.getElementById(button.getAttribute("data-copy-target"));
    if (!input) return;
    input.select();
    var done = function () {
      var label = button.getAttribute("data-copied-label") || "Copied";
      button.textContent = label;
      button.setAttribute("aria-live", "polite");
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(input.value).then(done, function () {
        document.execCommand("copy");
        done();
      });
    } else {
      document.execCommand("copy");
      done();
    }
  });
})();

/* Forms marked data-swap-400 show the server's inline errors: htmx does not
   swap 4xx answers by default, but a refused form's 400 carries the form. */
document.addEventListener("htmx:beforeSwap", function (event) {
  var elt = event.detail.requestConfig && event.detail.requestConfig.elt;
  if (event.detail.xhr.status === 400 && elt && elt.hasAttribute("data-swap-400")) {
    event.detail.shouldSwap = true;
    event.detail.isError = false;
  }
});

/* Forms marked data-swap-403 show a refusal (e.g. deciding your own approval
   request) in place of the element they target, like data-swap-400 does. */
document.addEventListener("htmx:beforeSwap", function (event) {
  var elt = event.detail.requestConfig && event.detail.requestConfig.elt;
  if (event.detail.xhr.status === 403 && elt && elt.hasAttribute("data-swap-403")) {
    event.detail.shouldSwap = true;
    event.detail.isError = false;
  }
});

/* Approval inbox: when the nav badge's count rises while a later page of the
   inbox is open, offer to show the new requests. (The first page takes new
   cards above the others as they come, with #inbox-cursor; it never redraws
   the cards it shows: a reviewer may be halfway through typing a reason.) */
(function () {
  "use strict";
  var badge = document.getElementById("pending-badge");
  var last = badge ? parseInt(badge.getAttribute("data-count"), 10) : null;
  document.addEventListener("htmx:load", function (event) {
    var elt = event.detail && event.detail.elt;
    if (!elt || elt.id !== "pending-badge") return;
    var count = parseInt(elt.getAttribute("data-count"), 10);
    var news = document.getElementById("inbox-news");
    var live = document.getElementById("inbox-cursor");
    if (news && !live && last !== null && count > last) news.hidden = false;
    last = count;
  });
})();

/* --- issue 18: reports, diffs, wording (date-times) --- */
/* Date-times come from the server as "2026-12-06 14:05 UTC" in a <time data-when>
   (governance/templatetags/warden.py, ``when``). Here they are shown in the
   browser's time zone, with the relative time ("3 hours ago") as the tooltip.
   Without this script they stay in UTC, which their text says. */
(function () {
  "use strict";
  if (!window.Intl || !Intl.DateTimeFormat) return;
  var pad = function (n) { return (n < 10 ? "0" : "") + n; };
  var zoneName = function (date) {
    try {
      var parts = new Intl.DateTimeFormat(undefined, { timeZoneName: "short" }).formatToParts(date);
      for (var i = 0; i < parts.length; i++) {
        if (parts[i].type === "timeZoneName") return parts[i].value;
      }
    } catch (e) { /* an old browser: no zone name */ }
    return "";
  };
  var units = [["year", 31536000], ["month", 2592000], ["week", 604800], ["day", 86400],
               ["hour", 3600], ["minute", 60], ["second", 1]];
  var relative = function (date) {
    var seconds = (date.getTime() - Date.now()) / 1000;
    var rtf = Intl.RelativeTimeFormat ? new Intl.RelativeTimeFormat(undefined, { numeric: "auto" }) : null;
    for (var i = 0; i < units.length; i++) {
      if (Math.abs(seconds) >= units[i][1] || units[i][0] === "second") {
        var n = Math.round(seconds / units[i][1]);
        if (rtf) return rtf.format(n, units[i][0]);
        return Math.abs(n) + " " + units[i][0] + (Math.abs(n) === 1 ? "" : "s") + (n < 0 ? " ago" : " from now");
      }
    }
    return "";
  };
  var localise = function (root) {
    root = root || document;
    var nodes = Array.prototype.slice.call(root.querySelectorAll ? root.querySelectorAll("time[data-when]") : []);
    if (root.matches && root.matches("time[data-when]")) nodes.push(root);
    for (var i = 0; i < nodes.length; i++) {
      var node = nodes[i];
      var date = new Date(node.getAttribute("datetime"));
      if (isNaN(date.getTime())) continue;
      if (!node.hasAttribute("data-localised")) {
        var text = date.getFullYear() + "-" + pad(date.getMonth() + 1) + "-" + pad(date.getDate()) +
          " " + pad(date.getHours()) + ":" + pad(date.getMinutes());
        if (node.getAttribute("data-when") === "seconds") text += ":" + pad(date.getSeconds());
        var zone = zoneName(date);
        node.textContent = zone ? text + " " + zone : text;
        node.setAttribute("data-localised", "");
      }
      node.title = relative(date);
    }
  };
  localise(document);
  document.addEventListener("htmx:load", function (event) { localise(event.detail && event.detail.elt); });
  /* Tooltips stay true on a page left open. */
  window.setInterval(function () { localise(document); }, 60000);
})();
