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
