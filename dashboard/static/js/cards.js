/* One dryer at a glance: fills a card (from <template id="card-template">) from a node
   summary of GET /api/nodes, and keeps it current from live readings and statuses. Used by
   the overview (one card per dryer) and the node page (one big card). */
(function () {
  "use strict";
  var C = window.Cacao;
  var t = C.t;
  var MEASURED = ["air_temp_c", "air_rh_pct", "bean_moisture_pct_wb", "ambient_temp_c", "ambient_rh_pct"];

  function key(node) { return node.site_id + "/" + node.node_id; }

  /* online / offline / stale / unknown: what the badge says. */
  function badgeState(node) {
    if (node.state === "offline") return "offline";
    if (node.stale) return "stale";
    return node.state === "online" ? "online" : "unknown";
  }

  function create(node) {
    var card = document.getElementById("card-template").content.firstElementChild.cloneNode(true);
    card.setAttribute("data-node", key(node));
    if (card.tagName === "A") {
      card.href = "/nodes/" + encodeURIComponent(node.site_id) + "/" + encodeURIComponent(node.node_id);
    }
    card.querySelectorAll("[data-label]").forEach(function (dt) {
      dt.textContent = C.label(dt.getAttribute("data-label"));
    });
    update(card, node);
    return card;
  }

  function field(card, name) { return card.querySelector('[data-field="' + name + '"]'); }

  /* Batch progress 0-100 %: the API's when known, else from the live moisture between the
     batch's initial moisture and its target. */
  function progress(node) {
    var batch = node.batch;
    if (!batch) return null;
    var moisture = node.latest && node.latest.readings ? node.latest.readings.bean_moisture_pct_wb : null;
    var initial = batch.initial_moisture_pct_wb;
    var target = batch.target_moisture_pct_wb || C.config.target_moisture_pct_wb;
    if (moisture !== null && moisture !== undefined && initial && initial > target) {
      return Math.max(0, Math.min(100, (initial - moisture) / (initial - target) * 100));
    }
    return batch.progress_pct === undefined ? null : batch.progress_pct;
  }

  function update(card, node) {
    var latest = node.latest || null;
    var readings = latest ? latest.readings || {} : {};
    card.querySelector(".card-name").textContent = node.name || node.node_id;
    var state = badgeState(node);
    var badge = field(card, "badge");
    badge.textContent = t("state." + state);
    badge.setAttribute("data-state", state);
    card.setAttribute("data-state", state);
    MEASURED.forEach(function (name) {
      var dd = card.querySelector('[data-value="' + name + '"]');
      if (dd) C.showMeasure(dd, name, readings[name], 1);
    });
    if (latest) card.setAttribute("data-seq", String(latest.seq));

    var fan = latest ? latest.fan_speed_pct : null;
    var vent = latest ? latest.vent_open_pct : null;
    field(card, "fan").textContent = fan === null || fan === undefined ? t("card.fan", { value: "–" })
      : fan > 0 ? t("card.fan", { value: C.number(fan, 0) + "\u00a0%" }) : t("card.fan_off");
    field(card, "vent").textContent = vent === null || vent === undefined ? t("card.vent", { value: "–" })
      : vent > 0 ? t("card.vent", { value: C.number(vent, 0) + "\u00a0%" }) : t("card.vent_closed");
    field(card, "mode").textContent = latest ? t("mode." + latest.mode) : "";

    var batchBox = field(card, "batch");
    var batchId = node.running_batch_id;
    batchBox.hidden = false;
    if (batchId) {
      var pct = progress(node);
      var target = (node.batch && node.batch.target_moisture_pct_wb) || C.config.target_moisture_pct_wb;
      field(card, "batch-id").textContent = t("card.batch", { id: batchId });
      field(card, "batch-target").textContent = pct === null
        ? t("card.target", { target: C.measure("bean_moisture_pct_wb", target, 1) })
        : t("card.progress", { pct: C.number(pct, 0) + "\u00a0%",
                               target: C.measure("bean_moisture_pct_wb", target, 1) });
      var bar = batchBox.querySelector(".progress");
      bar.hidden = pct === null;
      bar.setAttribute("aria-valuenow", pct === null ? "0" : String(Math.round(pct)));
      bar.firstElementChild.style.width = (pct === null ? 0 : pct) + "%";
    } else {
      field(card, "batch-id").textContent = t("card.no_batch");
      field(card, "batch-target").textContent = "";
      batchBox.querySelector(".progress").hidden = true;
    }

    var alarms = latest && latest.alarms ? latest.alarms : [];
    var alarmsLine = field(card, "alarms");
    alarmsLine.textContent = alarms.map(function (a) { return t("alarm." + a); }).join(" · ");
    alarmsLine.hidden = alarms.length === 0;

    var open = node.open_alerts || 0;
    var alerts = field(card, "alerts");
    alerts.textContent = open === 0 ? t("card.no_alerts") : open === 1 ? t("card.alerts_one")
      : t("card.alerts", { count: C.number(open, 0) });
    alerts.setAttribute("data-count", String(open));
    field(card, "updated").textContent = latest ? t("card.updated", { time: C.time(latest.measured_at) })
      : t("card.no_reading");
  }

  /* Apply a live reading (shape of the API's latest reading); false if it is not newer. */
  function applyReading(node, reading) {
    if (node.latest && node.latest.seq >= reading.seq) return false;
    node.latest = reading;
    node.stale = false;
    node.state = "online";  // it just spoke
    return true;
  }

  window.Cards = { key: key, create: create, update: update, applyReading: applyReading };
})();
