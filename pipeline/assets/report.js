// report.html: filter, search, sort, play and compare; inlined, no network, no libraries.
(function () {
  "use strict";
  var grid = document.getElementById("cards");
  var cards = Array.prototype.slice.call(grid.querySelectorAll(".card"));
  var shown = document.getElementById("shown");
  var search = document.getElementById("search");
  var sorter = document.getElementById("sort");
  var filter = "all";
  var RANK = { failed: 0, suspect: 1, unfinished: 2, done: 3 };

  function visible() {
    return cards.filter(function (card) { return !card.hidden; });
  }

  function apply() {
    var query = search.value.trim().toLowerCase();
    cards.forEach(function (card) {
      var state = filter === "all" || card.dataset.state === filter;
      var found = !query || card.dataset.id.toLowerCase().indexOf(query) >= 0;
      card.hidden = !(state && found);
    });
    shown.textContent = visible().length + " of " + cards.length + " jobs shown";
  }

  function sortBy(key) {
    var byId = function (a, b) { return a.dataset.id < b.dataset.id ? -1 : a.dataset.id > b.dataset.id ? 1 : 0; };
    var compare = {
      id: byId,
      state: function (a, b) { return (RANK[a.dataset.state] - RANK[b.dataset.state]) || byId(a, b); },
      cost: function (a, b) { return (Number(b.dataset.credits) - Number(a.dataset.credits)) || byId(a, b); }
    }[key] || byId;
    cards.sort(compare);
    cards.forEach(function (card) { grid.appendChild(card); });
  }

  function stopAll(except) {
    Array.prototype.forEach.call(grid.querySelectorAll(".player"), function (player) {
      if (player !== except) { player.textContent = ""; player.className = "player"; }
    });
  }

  function video(src, muted) {
    var element = document.createElement("video");
    element.src = src;
    element.controls = true;
    element.preload = "auto";
    element.muted = muted;
    element.playsInline = true;
    element.addEventListener("error", function () {
      var note = document.createElement("p");
      note.className = "error";
      note.textContent = "cannot play " + decodeURIComponent(src);
      element.replaceWith(note);
    });
    return element;
  }

  function start(element) {
    // play() is refused without a click first (autoplay policy); the controls remain
    var promise = element.play();
    if (promise && promise.catch) { promise.catch(function () {}); }
  }

  function play(card) {
    var player = card.querySelector(".player");
    if (!card.dataset.result) { return; }
    if (player.firstChild && !player.classList.contains("compare")) {
      var current = player.firstChild;
      if (current.paused) { start(current); } else { current.pause(); }
      return;
    }
    stopAll(null);
    var element = video(card.dataset.result, false);
    player.appendChild(element);
    start(element);
  }

  function ready(element) {
    return new Promise(function (resolve) {
      if (element.readyState >= 3) { resolve(); return; }
      element.addEventListener("canplay", function () { resolve(); }, { once: true });
      element.addEventListener("error", function () { resolve(); }, { once: true });
    });
  }

  function compare(card) {
    if (!card.dataset.result || !card.dataset.source) { return; }
    stopAll(null);
    var player = card.querySelector(".player");
    player.classList.add("compare");
    // the source muted: its mouth against the dub's voice, as the result should move
    var source = video(card.dataset.source, true);
    var result = video(card.dataset.result, false);
    player.appendChild(source);
    player.appendChild(result);
    Promise.all([ready(source), ready(result)]).then(function () {
      source.currentTime = 0;
      result.currentTime = 0;
      start(source);
      start(result);
    });
    result.addEventListener("pause", function () { source.pause(); });
    result.addEventListener("play", function () { start(source); });
    result.addEventListener("seeked", function () { source.currentTime = result.currentTime; });
  }

  function columns() {
    var list = visible();
    if (!list.length) { return 1; }
    var top = list[0].offsetTop;
    var count = 0;
    while (count < list.length && list[count].offsetTop === top) { count += 1; }
    return Math.max(1, count);
  }

  function move(card, step) {
    var list = visible();
    var index = list.indexOf(card);
    var next = list[Math.min(list.length - 1, Math.max(0, (index < 0 ? 0 : index + step)))];
    if (next) { next.focus(); next.scrollIntoView({ block: "nearest" }); }
  }

  Array.prototype.forEach.call(document.querySelectorAll("[data-filter]"), function (button) {
    button.addEventListener("click", function () {
      filter = button.dataset.filter;
      Array.prototype.forEach.call(document.querySelectorAll("[data-filter]"), function (other) {
        other.setAttribute("aria-pressed", String(other === button));
      });
      apply();
    });
  });
  search.addEventListener("input", apply);
  sorter.addEventListener("change", function () { sortBy(sorter.value); });

  grid.addEventListener("click", function (event) {
    var card = event.target.closest(".card");
    if (!card) { return; }
    if (event.target.closest(".compare-button")) { compare(card); return; }
    if (event.target.closest("a, video, .player")) { return; }
    play(card);
  });

  document.addEventListener("keydown", function (event) {
    var card = event.target.closest ? event.target.closest(".card") : null;
    if (!card && event.target === document.body && event.key.indexOf("Arrow") === 0) {
      var first = visible()[0];  // nothing focused yet: the arrows start at the first card
      if (first) { event.preventDefault(); first.focus(); }
      return;
    }
    if (!card || event.target.closest("input, select, video, a, button")) { return; }
    var steps = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: columns(), ArrowUp: -columns() };
    if (event.key in steps) {
      event.preventDefault();
      move(card, steps[event.key]);
    } else if (event.key === " ") {
      event.preventDefault();
      play(card);
    } else if (event.key === "c") {
      compare(card);
    }
  });

  apply();
})();
