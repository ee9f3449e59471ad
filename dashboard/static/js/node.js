/* One dryer: its card, the running batch, charts of the last 24 h and its latest events, kept
   current by the live stream of this node only. */
(function () {
  "use strict";
  var C = window.Cacao;
  var Cards = window.Cards;
  var t = C.t;
  var site = C.config.site_id;
  var nodeId = C.config.node_id;
  var base = encodeURIComponent(site) + "/" + encodeURIComponent(nodeId);
  var FIELDS = ["air_temp_c", "air_rh_pct", "bean_moisture_pct_wb"];
  var COLOURS = { air_temp_c: "#c0392b", air_rh_pct: "#2471a3", bean_moisture_pct_wb: "#7d5a3c" };
  var WINDOW_S = 24 * 3600;
  var MAX_EVENTS = 30;

  var node = null;
  var card = null;
  var charts = {};
  var data = { times: [], values: {} };  // seconds since 1970, one array per field
  FIELDS.forEach(function (f) { data.values[f] = []; });
  var recent = [];     // the latest live readings, re-applied after a series (re)load
  var seriesLoaded = false;

  /* --- the card and the batch -------------------------------------------------------- */

  function loadNode() {
    return C.api("/api/nodes/" + base).then(function (summary) {
      if (node && node.latest && summary.latest && node.latest.seq > summary.latest.seq) {
        summary.latest = node.latest;
      }
      node = summary;
      if (!card) {
        card = Cards.create(node);
        document.getElementById("node-card").appendChild(card);
      } else {
        Cards.update(card, node);
      }
      return loadBatch();
    });
  }

  function loadBatch() {
    var box = document.getElementById("batch-box");
    var id = node.running_batch_id;
    box.textContent = "";
    if (!id) {
      box.appendChild(C.element("p", "muted", t("node.no_batch")));
      return Promise.resolve();
    }
    return C.api("/api/batches/" + encodeURIComponent(id)).then(function (batch) {
      node.batch = batch;
      Cards.update(card, node);
      showBatch(box, id, batch);
    }, function () {
      showBatch(box, id, null);
    });
  }

  function showBatch(box, id, batch) {
    var list = C.element("dl", "facts");
    function fact(name, value) {
      var row = C.element("div");
      row.appendChild(C.element("dt", "", name));
      row.appendChild(C.element("dd", "", value));
      list.appendChild(row);
    }
    fact(t("node.batch_id"), id);
    if (batch) {
      if (batch.lot_code && batch.lot_code !== id) fact(t("node.batch_lot"), batch.lot_code);
      if (batch.producer) fact(t("node.batch_producer"), batch.producer);
      fact(t("node.batch_started"), C.dateTime(batch.started_at));
      fact(t("node.batch_initial"), C.measure("bean_moisture_pct_wb", batch.initial_moisture_pct_wb, 1));
      fact(t("node.batch_target"), C.measure("bean_moisture_pct_wb", batch.target_moisture_pct_wb, 1));
      if (batch.progress_pct !== null && batch.progress_pct !== undefined) {
        fact(t("node.batch_progress"), C.number(batch.progress_pct, 0) + "\u00a0%");
      }
    }
    box.appendChild(list);
    var link = C.element("span", "muted", t("node.batch_link"));  // the batch page: next round
    box.appendChild(link);
  }

  /* --- charts ------------------------------------------------------------------------ */

  function loadSeries() {
    var query = FIELDS.map(function (f) { return "fields=" + f; }).join("&") + "&max_points=1500";
    return C.api("/api/readings/" + base + "/series?" + query).then(function (series) {
      data.times = series.times.map(function (iso) { return Date.parse(iso) / 1000; });
      FIELDS.forEach(function (f) { data.values[f] = series.values[f].slice(); });
      seriesLoaded = true;
      recent.forEach(function (reading) { appendReading(reading, false); });
      var note = document.getElementById("chart-note");
      note.textContent = !data.times.length ? t("node.chart_empty")
        : series.every_s ? t("node.chart_every", { minutes: C.number(series.every_s / 60, series.every_s < 60 ? 1 : 0) })
        : "";
      draw();
    });
  }

  var axisTime = C.timeFormat({ hour: "2-digit", minute: "2-digit" });

  /* Decimals a tick needs so neighbouring ticks differ (0.5 steps → 1 decimal). */
  function decimals(increment) {
    return Math.max(0, Math.min(2, Math.ceil(-Math.log10(increment || 1) - 1e-9)));
  }

  function options(field, width) {
    var unit = C.config.measurements[field].unit;
    return {
      title: C.label(field) + " (" + unit + ")",
      width: width, height: 170,
      tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1e3), C.config.zone); },
      cursor: { drag: { x: false, y: false } },
      legend: { show: false },  // phones have no hover; the title names the line
      scales: { x: { time: true } },
      series: [
        {},
        { label: C.label(field), stroke: COLOURS[field], width: 2, spanGaps: false }
      ],
      axes: [
        { space: 70, values: function (u, splits) {
          return splits.map(function (s) { return axisTime.format(new Date(s * 1000)); }); } },
        { size: 52, values: function (u, splits, axis, space, increment) {
          var digits = decimals(increment);
          return splits.map(function (v) { return C.number(v, digits); }); } }
      ]
    };
  }

  function draw() {
    FIELDS.forEach(function (field) {
      var box = document.getElementById("chart-" + field);
      var rows = [data.times, data.values[field]];
      if (charts[field]) {
        charts[field].setData(rows);
      } else {
        charts[field] = new uPlot(options(field, box.clientWidth || 320), rows, box);
        box.setAttribute("data-drawn", "true");
      }
      box.setAttribute("data-points", String(data.times.length));
    });
  }

  function appendReading(reading, redraw) {
    if (!seriesLoaded) return;  // the series being fetched will have it, or `recent` will
    var at = Date.parse(reading.measured_at) / 1000;
    var last = data.times.length ? data.times[data.times.length - 1] : -Infinity;
    if (at <= last) return;
    data.times.push(at);
    FIELDS.forEach(function (f) {
      var value = reading.readings[f];
      data.values[f].push(value === undefined ? null : value);
    });
    while (data.times.length && data.times[0] < at - WINDOW_S) {
      data.times.shift();
      FIELDS.forEach(function (f) { data.values[f].shift(); });
    }
    if (redraw !== false) draw();
  }

  window.addEventListener("resize", C.debounce(function () {
    FIELDS.forEach(function (field) {
      var box = document.getElementById("chart-" + field);
      if (charts[field]) charts[field].setSize({ width: box.clientWidth, height: 170 });
    });
  }, 200));

  /* --- events ------------------------------------------------------------------------ */

  function eventItem(event) {
    var item = C.element("li", "event");
    item.setAttribute("data-type", event.type);
    item.appendChild(C.element("time", "", C.shortDateTime(event.occurred_at)));
    var alarm = event.data && typeof event.data.alarm === "string" ? event.data.alarm : null;
    item.appendChild(C.element("strong", "", t("event." + event.type) + (alarm ? ": " + t("alarm." + alarm) : "")));
    if (event.message) item.appendChild(C.element("span", "muted", event.message));
    return item;
  }

  function loadEvents() {
    return C.api("/api/nodes/" + base + "/events?limit=" + MAX_EVENTS).then(function (events) {
      var list = document.getElementById("events");
      list.textContent = "";
      if (!events.length) list.appendChild(C.element("li", "muted", t("node.no_events")));
      events.forEach(function (event) { list.appendChild(eventItem(event)); });
    });
  }

  function addEvent(event) {
    var list = document.getElementById("events");
    var empty = list.querySelector("li.muted");
    if (empty) empty.remove();
    list.insertBefore(eventItem(event), list.firstChild);
    while (list.children.length > MAX_EVENTS) list.lastChild.remove();
  }

  /* --- live ---------------------------------------------------------------------------- */

  function loadAll() {
    return Promise.all([loadNode(), loadSeries(), loadEvents()]).catch(function (error) {
      document.getElementById("chart-note").textContent = t("common.error", { detail: error.message });
    });
  }

  var reloadSoon = C.debounce(loadNode, 500);
  C.live("?site_id=" + encodeURIComponent(site) + "&node_id=" + encodeURIComponent(nodeId), {
    resync: loadAll,
    reading: function (reading) {
      if (!node) return;
      if ((reading.batch_id || null) !== (node.running_batch_id || null)) reloadSoon();
      recent.push(reading);
      if (recent.length > 100) recent.shift();
      if (Cards.applyReading(node, reading)) {
        Cards.update(card, node);
        appendReading(reading);
      }
    },
    status: function (message) {
      if (!node) return;
      node.state = message.state;
      if (message.state === "online") node.stale = false;
      Cards.update(card, node);
    },
    event: function (event) {
      addEvent(event);
      if (/^(batch_|alarm_)/.test(event.type)) reloadSoon();
    }
  });
  setInterval(loadNode, 60000);
})();
