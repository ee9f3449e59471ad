/* 2-4 batches side by side: one column per batch (record, metrics, quality flags) and their
   moisture curves overlaid against hours since each batch's start, from one call to
   /api/batches/compare. */
(function () {
  "use strict";
  var C = window.Cacao;
  var Charts = window.Charts;
  var t = C.t;
  var config = C.config;
  var MOISTURE = "bean_moisture_pct_wb";
  var COLOURS = ["#7d5a3c", "#2471a3", "#c0392b", "#1e7b3a"];

  function unitValue(value, digits, unit) {
    var text = C.number(value, digits);
    return text === "–" ? text : text + "\u00a0" + unit;
  }
  function pct(value) { return C.measure(MOISTURE, value, 1); }

  /* Rows of the table: a label and how to write each batch's value. */
  function rows() {
    var rate = config.measurements[MOISTURE].unit + "/h";
    return [
      [t("batches.record_producer"), function (i) { return i.batch.producer || "–"; }],
      [t("batches.record_dryer"), function (i) { return i.batch.node_id; }],
      [t("batches.record_started"), function (i) { return C.dateTime(i.batch.started_at); }],
      [t("batches.record_ended"), function (i) { return i.batch.ended_at ? C.dateTime(i.batch.ended_at) : t("batches.state_running"); }],
      [t("batches.record_duration"), function (i) { return unitValue(i.metrics.duration_h, 1, "h"); }],
      [t("batches.record_initial_mass"), function (i) { return unitValue(i.batch.initial_mass_kg, 1, "kg"); }],
      [t("batches.record_final_mass"), function (i) { return unitValue(i.batch.final_mass_kg, 1, "kg"); }],
      [t("batches.metric_initial"), function (i) { return pct(i.metrics.initial_moisture_pct_wb); }],
      [t("batches.metric_final"), function (i) {
        var m = i.metrics;
        return pct(m.final_moisture_pct_wb) + (m.moisture_source ? " (" + (config.source_labels[m.moisture_source] || m.moisture_source) + ")" : "");
      }],
      [t("batches.metric_average_rate"), function (i) { return unitValue(i.metrics.average_drying_rate_pct_per_h, 2, rate); }],
      [t("batches.metric_max_rate"), function (i) { return unitValue(i.metrics.max_sustained_rate_pct_per_h, 2, rate); }],
      [t("batches.metric_max_air"), function (i) { return C.measure("air_temp_c", i.metrics.max_air_temp_c, 1); }],
      [t("batches.metric_above_limit"), function (i) { return unitValue(i.metrics.time_above_limit_h, 1, "h"); }],
      [t("batches.metric_above_alarm"), function (i) { return unitValue(i.metrics.time_above_alarm_h, 1, "h"); }],
      [t("batches.metric_night_margin"), function (i) { return unitValue(i.metrics.min_night_humidity_margin_pct, 1, t("batches.points")); }],
      [t("batches.flags_title"), function (i) {
        if (!i.metrics.flags.length) return t("batches.no_flags");
        return i.metrics.flags.map(function (f) { return config.flag_labels[f.code] || f.code; }).join(", ");
      }]
    ];
  }

  function showTable(items) {
    var table = document.getElementById("compare-table");
    var head = C.element("tr");
    head.appendChild(C.element("th", "", ""));
    items.forEach(function (item, n) {
      var th = C.element("th");
      th.scope = "col";
      th.appendChild(C.element("span", "swatch swatch-" + n));
      var link = C.element("a", "", item.batch.lot_code);
      link.href = "/batches/" + encodeURIComponent(item.batch.batch_id);
      th.appendChild(link);
      head.appendChild(th);
    });
    table.tHead.textContent = "";
    table.tHead.appendChild(head);
    var body = table.tBodies[0];
    body.textContent = "";
    rows().forEach(function (spec) {
      var tr = C.element("tr");
      var th = C.element("th", "", spec[0]);
      th.scope = "row";
      tr.appendChild(th);
      items.forEach(function (item) { tr.appendChild(C.element("td", "number", spec[1](item))); });
      body.appendChild(tr);
    });
  }

  function showChart(items) {
    var aligned = Charts.align(items.map(function (item) {
      return { x: item.hours, y: item.moisture_pct_wb };
    }));
    Charts.hoursChart(document.getElementById("compare-chart"), {
      title: C.label(MOISTURE) + " (" + config.measurements[MOISTURE].unit + ")",
      height: 260,
      x: aligned.x,
      lines: items.map(function (item, n) {
        return { label: item.batch.lot_code, stroke: COLOURS[n], values: aligned.values[n] };
      })
    });
    var legend = document.getElementById("compare-legend");
    legend.textContent = "";
    items.forEach(function (item, n) {
      var li = C.element("li");
      li.appendChild(C.element("span", "swatch swatch-" + n));
      li.appendChild(document.createTextNode(item.batch.lot_code + " (" + item.batch.batch_id + ")"));
      legend.appendChild(li);
    });
  }

  var status = document.getElementById("compare-status");
  C.api("/api/batches/compare?ids=" + config.ids.map(encodeURIComponent).join(",")).then(function (answer) {
    status.textContent = t("batches.compare_note");
    showTable(answer.items);
    showChart(answer.items);
  }, function (error) {
    status.textContent = "";
    var box = document.getElementById("compare-error");
    box.textContent = t("common.error", { detail: error.message });
    box.hidden = false;
  });
})();
