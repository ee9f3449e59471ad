/* The operator's screen: every dryer as a card, kept current by the live stream.
   The truth is GET /api/nodes (fetched on every `resync`, soon after an `alert` event for
   the open-alert counts, and once a minute for the "no recent data" badges); live readings
   and statuses update the cards in between. */
(function () {
  "use strict";
  var C = window.Cacao;
  var Cards = window.Cards;
  var t = C.t;
  var nodes = {};      // "site/node" → node summary (+ .batch from /api/batches when known)
  var cards = {};      // "site/node" → card element
  var grid = document.getElementById("cards");
  var status = document.getElementById("overview-status");
  var REFRESH_MS = 60000;

  function say(text) {
    status.textContent = text || "";
    status.hidden = !text;
  }

  /* The running batch's record and progress, when the batches API has it. */
  function loadBatch(node) {
    var id = node.running_batch_id;
    if (!id) { node.batch = null; return Promise.resolve(); }
    if (node.batch && node.batch.batch_id === id) return Promise.resolve();
    return C.api("/api/batches/" + encodeURIComponent(id)).then(function (batch) {
      node.batch = batch;
    }, function () {
      node.batch = null;  // not available (yet): the card shows the batch id and the target
    });
  }

  function refresh() {
    return C.api("/api/nodes").then(function (list) {
      var fresh = {};
      list.forEach(function (node) {
        var k = Cards.key(node);
        var old = nodes[k];
        if (old && old.batch && old.running_batch_id === node.running_batch_id) node.batch = old.batch;
        // a live reading may be newer than the snapshot
        if (old && old.latest && node.latest && old.latest.seq > node.latest.seq) node.latest = old.latest;
        fresh[k] = node;
      });
      nodes = fresh;
      render();
      return Promise.all(list.map(function (node) {
        return loadBatch(node).then(function () { updateCard(Cards.key(node)); });
      }));
    }).catch(function (error) {
      say(t("common.error", { detail: error.message }));
    });
  }

  function render() {
    var keys = Object.keys(nodes).sort();
    say(keys.length ? "" : t("overview.empty"));
    Object.keys(cards).forEach(function (k) {
      if (!nodes[k]) { cards[k].remove(); delete cards[k]; }
    });
    keys.forEach(function (k) {
      if (!cards[k]) cards[k] = Cards.create(nodes[k]);
      else Cards.update(cards[k], nodes[k]);
      grid.appendChild(cards[k]);  // keeps the sorted order
    });
  }

  function updateCard(k) {
    if (cards[k] && nodes[k]) Cards.update(cards[k], nodes[k]);
  }

  var refreshSoon = C.debounce(refresh, 500);
  var BATCH_EVENTS = { batch_started: 1, batch_ended: 1 };

  C.live("", {
    resync: refresh,
    reading: function (message) {
      var k = Cards.key(message);
      var node = nodes[k];
      if (!node) { refreshSoon(); return; }  // a dryer heard for the first time
      if ((message.batch_id || null) !== (node.running_batch_id || null)) refreshSoon();
      if (Cards.applyReading(node, message)) updateCard(k);
    },
    status: function (message) {
      var node = nodes[Cards.key(message)];
      if (!node) { refreshSoon(); return; }
      node.state = message.state;
      if (message.state === "online") node.stale = false;
      updateCard(Cards.key(message));
    },
    event: function (message) {
      if (BATCH_EVENTS[message.type]) refreshSoon();
    },
    alert: refreshSoon  // an alert opened, closed or was acknowledged: the counts change
  });
  setInterval(refresh, REFRESH_MS);
})();
