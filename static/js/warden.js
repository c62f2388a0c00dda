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

/* --- landing and phone layout (issue 18: home, narrow screens) --- */

/* On a narrow screen the navigation folds behind its Menu button (a real button:
   Enter and Space toggle it; Escape folds it again and gives the button focus).
   Without this script the button stays hidden and the navigation is unfolded. */
(function () {
  "use strict";
  var nav = document.getElementById("main-nav");
  var button = nav && nav.querySelector(".nav-toggle");
  if (!button) return;
  function set(open) {
    nav.classList.toggle("nav-open", open);
    button.setAttribute("aria-expanded", open ? "true" : "false");
  }
  nav.classList.add("nav-collapsible");
  button.hidden = false;
  button.addEventListener("click", function () {
    set(button.getAttribute("aria-expanded") !== "true");
  });
  nav.addEventListener("keydown", function (event) {
    if (event.key === "Escape" && nav.classList.contains("nav-open")) {
      set(false);
      button.focus();
    }
  });
})();

/* --- issue 18: careful with production, mask preview, feedback where the eyes are --- */

/* Careful with production: a submit button marked data-reason-prompt asks for
   confirmation and a reason in a dialog before its form is sent; the reason goes
   along as "reason". Without JavaScript the server asks for it on a page. */
(function () {
  "use strict";
  var dialog = null;
  var pending = null;

  function build() {
    dialog = document.createElement("dialog");
    dialog.id = "reason-dialog";
    dialog.className = "reason-dialog";
    dialog.setAttribute("aria-labelledby", "reason-dialog-title");
    dialog.innerHTML =
      '<form method="dialog" class="form">' +
      '<h2 id="reason-dialog-title"></h2>' +
      '<div class="field"><label for="reason-dialog-input">Reason</label>' +
      '<textarea id="reason-dialog-input" rows="3" maxlength="2000" required></textarea>' +
      '<span class="help">Kept for good in the configuration history and the audit trail. ' +
      "Do not include personal data.</span></div>" +
      '<div class="form-actions">' +
      '<button type="submit" value="confirm" class="btn btn-danger" id="reason-dialog-confirm"></button>' +
      '<button type="submit" value="cancel" class="btn" id="reason-dialog-cancel" formnovalidate>Cancel</button>' +
      "</div></form>";
    document.body.appendChild(dialog);
    dialog.addEventListener("close", function () {
      var button = pending;
      pending = null;
      if (!button) return;
      button.focus();
      var reason = dialog.querySelector("textarea").value.trim();
      if (dialog.returnValue !== "confirm" || !reason) return;
      var form = button.form;
      var extra = [["reason", reason]];
      if (button.name) extra.push([button.name, button.value]);
      extra.forEach(function (pair) {
        var input = document.createElement("input");
        input.type = "hidden";
        input.name = pair[0];
        input.value = pair[1];
        input.setAttribute("data-reason-extra", "");
        form.appendChild(input);
      });
      button.setAttribute("data-reason-given", "");
      form.requestSubmit(button);
      button.removeAttribute("data-reason-given");
      // Sent (htmx has read the values): a later click asks again.
      form.querySelectorAll("[data-reason-extra]").forEach(function (input) {
        input.remove();
      });
    });
  }

  /* For changes that are not a button's (a drag and drop): ask, then call done(reason),
     or done(null) when cancelled. */
  window.wardenAskReason = function (title, confirm, done) {
    if (!dialog) build();
    pending = null;
    dialog.querySelector("h2").textContent = title;
    dialog.querySelector("#reason-dialog-confirm").textContent = confirm;
    dialog.querySelector("textarea").value = "";
    dialog.returnValue = "";
    dialog.addEventListener(
      "close",
      function () {
        var reason = dialog.querySelector("textarea").value.trim();
        done(dialog.returnValue === "confirm" && reason ? reason : null);
      },
      { once: true }
    );
    dialog.showModal();
    dialog.querySelector("textarea").focus();
  };

  document.addEventListener(
    "click",
    function (event) {
      var button = event.target.closest("button[data-reason-prompt]");
      if (!button || !button.form || button.hasAttribute("data-reason-given")) return;
      event.preventDefault();
      if (!dialog) build();
      pending = button;
      dialog.querySelector("h2").textContent = button.getAttribute("data-reason-prompt");
      dialog.querySelector("#reason-dialog-confirm").textContent =
        button.getAttribute("data-reason-confirm") || "Confirm";
      dialog.querySelector("textarea").value = "";
      dialog.returnValue = "";
      dialog.showModal();
      dialog.querySelector("textarea").focus();
    },
    true
  );
})();

/* Guardrail order: drag a row (tbody[data-reorder]) and the whole new order is
   posted at once (hx-trigger "warden:reorder"). The arrow buttons are the
   keyboard's way to do the same, one step at a time. */
(function () {
  "use strict";
  var dragged = null;
  var before = "";

  function orderOf(body) {
    return Array.prototype.map
      .call(body.querySelectorAll("input[name=order]"), function (input) {
        return input.value;
      })
      .join(",");
  }

  document.addEventListener("dragstart", function (event) {
    var row = event.target.closest && event.target.closest("tbody[data-reorder] > tr");
    if (!row) return;
    dragged = row;
    before = orderOf(row.parentNode);
    row.classList.add("dragging");
    event.dataTransfer.effectAllowed = "move";
    event.dataTransfer.setData("text/plain", row.getAttribute("data-name") || "");
  });

  document.addEventListener("dragover", function (event) {
    if (!dragged) return;
    var row = event.target.closest && event.target.closest("tr");
    if (!row || row.parentNode !== dragged.parentNode || row === dragged) return;
    event.preventDefault();
    var box = row.getBoundingClientRect();
    var after = event.clientY > box.top + box.height / 2;
    row.parentNode.insertBefore(dragged, after ? row.nextSibling : row);
  });

  document.addEventListener("drop", function (event) {
    if (dragged) event.preventDefault();
  });

  /* The rows protecting each production datasource (data-protects), in page order. */
  function productionOrder(body, ids) {
    var rows = {};
    Array.prototype.forEach.call(body.querySelectorAll("tr[data-protects]"), function (row) {
      rows[row.id.replace("guardrail-", "")] = row.getAttribute("data-protects").split(", ");
    });
    var seen = {};
    ids.forEach(function (id) {
      (rows[id] || []).forEach(function (name) {
        if (name) (seen[name] = seen[name] || []).push(id);
      });
    });
    return JSON.stringify(seen);
  }

  function restore(body, ids) {
    var last = body.querySelector("tr[hidden]"); // the reason's row stays last
    ids.forEach(function (id) {
      body.insertBefore(document.getElementById("guardrail-" + id), last);
    });
  }

  document.addEventListener("dragend", function () {
    if (!dragged) return;
    var body = dragged.parentNode;
    dragged.classList.remove("dragging");
    dragged = null;
    var after = orderOf(body);
    if (after === before || !window.htmx) return;
    var reasonInput = body.querySelector("input[name=reason]");
    var old = before.split(",");
    if (!reasonInput || productionOrder(body, old) === productionOrder(body, after.split(","))) {
      window.htmx.trigger(body, "warden:reorder");
      return;
    }
    // Guardrails that protect production change their order: a reason first, as the
    // arrow buttons ask; cancelled, the rows go back.
    window.wardenAskReason(
      "Change the order of guardrails that protect production?",
      "Save the order",
      function (reason) {
        if (reason === null) {
          restore(body, old);
          return;
        }
        reasonInput.value = reason;
        window.htmx.trigger(body, "warden:reorder");
      }
    );
  });
})();

/* Masking rule form: show each strategy parameter only for the strategies that
   take it (data-strategies on its input; all are shown without JavaScript). */
(function () {
  "use strict";
  function sync(root) {
    var strategy = root.querySelector("select[name=strategy]");
    if (!strategy) return;
    root.querySelectorAll("[data-strategies]").forEach(function (input) {
      var field = input.closest(".field");
      var used = input.getAttribute("data-strategies").split(" ");
      if (field) field.hidden = used.indexOf(strategy.value) === -1;
    });
  }
  document.addEventListener("change", function (event) {
    if (event.target.name === "strategy" && event.target.form) sync(event.target.form);
  });
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("form[data-masking-form]").forEach(sync);
  });
})();

/* Feedback where the eyes are. The simulator's result scrolls into view and takes
   focus when it arrives. After an inline decision in a list marked
   data-next-focus="<selector of undecided items>", focus moves to the next
   undecided item (the one after, else the one before), unless the answer shows
   an error. */
(function () {
  "use strict";
  function focusOn(elt) {
    if (!elt.hasAttribute("tabindex")) elt.setAttribute("tabindex", "-1");
    elt.scrollIntoView({ block: "nearest" });
    elt.focus({ preventScroll: true });
  }

  document.addEventListener("htmx:afterSettle", function (event) {
    var target = event.detail.target;
    if (!target) return;
    if (target.id === "simulator") {
      var result = document.getElementById("simulation-result");
      if (result) {
        if (!result.hasAttribute("tabindex")) result.setAttribute("tabindex", "-1");
        result.scrollIntoView({ block: "start" });
        result.focus({ preventScroll: true });
      }
      return;
    }
  });

  document.addEventListener("htmx:beforeSwap", function (event) {
    var target = event.detail.target;
    var list = target && target.parentNode && target.parentNode.closest("[data-next-focus]");
    if (!list || !target.id) return;
    var selector = list.getAttribute("data-next-focus");
    var items = Array.prototype.slice.call(list.querySelectorAll(selector));
    var index = items.indexOf(target);
    var others = items.slice(index + 1).concat(items.slice(0, Math.max(index, 0)).reverse());
    list.__wardenNext = { id: target.id, candidates: others.map(function (e) { return e.id; }) };
  });

  document.addEventListener("htmx:afterSettle", function (event) {
    var target = event.detail.target;
    var item = target && target.id ? document.getElementById(target.id) : null;
    var list = item && item.parentNode && item.parentNode.closest("[data-next-focus]");
    var plan = list && list.__wardenNext;
    if (!plan || plan.id !== item.id) return;
    list.__wardenNext = null;
    if (event.detail.xhr && event.detail.xhr.status >= 400) return;
    if (item.querySelector("[role=alert]")) return;
    var selector = list.getAttribute("data-next-focus");
    for (var i = 0; i < plan.candidates.length; i++) {
      var next = document.getElementById(plan.candidates[i]);
      if (next && next.matches(selector)) {
        focusOn(next);
        return;
      }
    }
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
