/* One batch: its record, progress and predicted end (running), metrics and quality flags,
   curves of bean moisture (spot checks as circles, target as a dashed line), air temperature
   and air humidity over the whole batch (averaged on the server), and the dryer's events
   while it ran. Everything comes from /api/batches/{id}[/metrics|/series|/events|/prediction]. */
(function () {
  "use strict";
  var C = window.Cacao;
  var Charts = window.Charts;
  var t = C.t;
  var config = C.config;
  var base = "/api/batches/" + encodeURIComponent(config.batch_id);
  var MOISTURE = "bean_moisture_pct_wb";
  var COLOURS = { air_temp_c: "#c0392b", air_rh_pct: "#2471a3", bean_moisture_pct_wb: "#7d5a3c",
                  reference: "#b3261e", alarm: "#a35c00", check: "#2b211b" };
  var pct = function (value, digits) { return C.measure(MOISTURE, value, digits === undefined ? 1 : digits); };

  function fact(list, name, value) {
    var row = C.element("div");
    row.appendChild(C.element("dt", "", name));
    row.appendChild(C.element("dd", "", value === null || value === undefined || value === "" ? "–" : value));
    list.appendChild(row);
    return row;
  }

  function unitValue(value, digits, unit) {
    var text = C.number(value, digits);
    return text === "–" ? text : text + "\u00a0" + unit;
  }

  function showError(error) {
    var box = document.getElementById("batch-error");
    box.textContent = t("common.error", { detail: error.message });
    box.hidden = false;
  }

  /* --- record and progress ------------------------------------------------------------- */

  function showRecord(batch) {
    var list = document.getElementById("record");
    list.textContent = "";
    fact(list, t("batches.record_lot"), batch.lot_code);
    fact(list, t("batches.record_batch_id"), batch.batch_id);
    fact(list, t("batches.record_producer"), batch.producer);
    fact(list, t("batches.record_crop"), config.crop_labels[batch.crop] || batch.crop);
    fact(list, t("batches.record_started"), C.dateTime(batch.started_at) + " (" + t("batches.record_by", { who: batch.started_by }) + ")");
    fact(list, t("batches.record_ended"), batch.ended_at
      ? C.dateTime(batch.ended_at) + (batch.ended_by ? " (" + t("batches.record_by", { who: batch.ended_by }) + ")" : "")
      : t("batches.state_running"));
    fact(list, t("batches.record_duration"), unitValue(batch.duration_h, 1, "h"));
    fact(list, t("batches.record_initial_mass"), unitValue(batch.initial_mass_kg, 1, "kg"));
    fact(list, t("batches.record_initial_moisture"), pct(batch.initial_moisture_pct_wb));
    fact(list, t("batches.record_final_mass"), unitValue(batch.final_mass_kg, 1, "kg"));
    fact(list, t("batches.record_final_moisture"), pct(batch.final_moisture_pct_wb));
    fact(list, t("batches.record_target"), pct(batch.target_moisture_pct_wb));
    var notes = fact(list, t("batches.record_notes"), batch.notes);
    notes.lastChild.className = "notes";
  }

  function showProgress(batch) {
    var bar = document.getElementById("progress-bar");
    var done = batch.progress_pct;
    bar.style.width = (done === null ? 0 : done) + "%";
    var text = document.getElementById("progress-text");
    if (batch.current_moisture_pct_wb === null) {
      text.textContent = t("batches.progress_unknown");
      return;
    }
    text.textContent = t("batches.progress_line", {
      moisture: pct(batch.current_moisture_pct_wb),
      source: config.source_labels[batch.current_moisture_source] || batch.current_moisture_source || "",
      time: C.dateTime(batch.current_moisture_at),
      progress: done === null ? "–" : C.number(done, 0) + "\u00a0%",
      target: pct(batch.target_moisture_pct_wb)
    });
  }

  function showPrediction(found) {
    var text = document.getElementById("prediction-text");
    if (!found.predicted_at) {
      text.textContent = t("batches.prediction_none", { reason: found.reason || "" });
      return;
    }
    if (found.hours_remaining === 0) {
      text.textContent = t("batches.prediction_reached", { time: C.dateTime(found.predicted_at) });
      return;
    }
    text.textContent = t("batches.prediction_line", {
      time: C.dateTime(found.predicted_at),
      earliest: C.dateTime(found.earliest),
      latest: C.dateTime(found.latest),
      confidence: C.number(found.confidence * 100, 0) + "\u00a0%"
    });
  }

  /* --- metrics and flags --------------------------------------------------------------- */

  /* Why a flag was raised, in the page's language: its reason's text (config.reason_keys)
     with the numbers written the language's way, as each is given in config.reason_formats
     (decimals; "as_set": a threshold with the decimals it needs; "time": in the site's zone;
     "moisture_source": its label). The API's English `reason` when there is no text for it
     or a number is missing. The printable report does the same on the server. */
  function reasonText(flag) {
    var key = config.reason_keys[flag.reason_key];
    var formats = config.reason_formats[flag.reason_key];
    if (!key || !formats || !Object.prototype.hasOwnProperty.call(config.catalog, key)) return flag.reason;
    var params = {};
    var names = (config.catalog[key].match(/\{[a-z_][a-z0-9_]*\}/g) || []).map(function (p) { return p.slice(1, -1); });
    var complete = names.every(function (name) {
      var value = flag.reason_params ? flag.reason_params[name] : undefined;
      if (value === undefined || value === null || !formats[name]) return false;
      params[name] = reasonParam(value, formats[name]);
      return true;
    });
    return complete ? t(key, params) : flag.reason;
  }

  function reasonParam(value, format) {
    if (format === "time") return C.dateTime(value);
    if (format === "moisture_source") return config.source_labels[value] || value;
    if (typeof value === "string") return value;
    return C.number(value, format === "as_set" ? asSetDigits(value) : format);
  }

  /* The decimals a threshold needs as it was set, at most 3 (65 → 0, 2.5 → 1). */
  function asSetDigits(value) {
    for (var digits = 0; digits < 3; digits++) {
      var scale = Math.pow(10, digits);
      if (Math.abs(Math.round(value * scale) / scale - value) < 1e-9) return digits;
    }
    return 3;
  }

  function showMetrics(m) {
    var list = document.getElementById("metrics");
    list.textContent = "";
    fact(list, t("batches.metric_initial"), pct(m.initial_moisture_pct_wb));
    fact(list, t("batches.metric_final"), pct(m.final_moisture_pct_wb) +
      (m.moisture_source ? " (" + (config.source_labels[m.moisture_source] || m.moisture_source) + ")" : ""));
    var rate = config.measurements[MOISTURE].unit + "/h";
    fact(list, t("batches.metric_average_rate"), unitValue(m.average_drying_rate_pct_per_h, 2, rate));
    fact(list, t("batches.metric_max_rate"), unitValue(m.max_sustained_rate_pct_per_h, 2, rate));
    fact(list, t("batches.metric_max_air"), C.measure("air_temp_c", m.max_air_temp_c, 1));
    fact(list, t("batches.metric_above_limit"), unitValue(m.time_above_limit_h, 1, "h"));
    fact(list, t("batches.metric_above_alarm"), unitValue(m.time_above_alarm_h, 1, "h"));
    fact(list, t("batches.metric_night_margin"), unitValue(m.min_night_humidity_margin_pct, 1, t("batches.points")));
    var flags = document.getElementById("flags");
    flags.textContent = "";
    if (!m.flags.length) flags.appendChild(C.element("li", "none", t("batches.no_flags")));
    m.flags.forEach(function (flag) {
      var item = C.element("li");
      item.setAttribute("data-flag", flag.code);
      item.appendChild(C.element("strong", "", config.flag_labels[flag.code] || flag.code));
      item.appendChild(C.element("span", "flag-reason", reasonText(flag)));
      flags.appendChild(item);
    });
  }

  /* --- charts -------------------------------------------------------------------------- */

  function seconds(iso) { return Date.parse(iso) / 1000; }

  function drawCharts(series, checks) {
    var x = series.times.map(seconds);
    var ref = series.reference;
    var moisture = Charts.align([
      { x: x, y: series.values[MOISTURE] },
      { x: checks.map(function (c) { return seconds(c.measured_at); }),
        y: checks.map(function (c) { return c.moisture_pct_wb; }) }
    ]);
    var units = config.measurements;
    Charts.timeChart(document.getElementById("chart-" + MOISTURE), {
      title: C.label(MOISTURE) + " (" + units[MOISTURE].unit + ")",
      x: moisture.x,
      lines: [
        { label: C.label(MOISTURE), stroke: COLOURS[MOISTURE], values: moisture.values[0] },
        { label: t("batches.chart_target"), stroke: COLOURS.reference, width: 1, dash: [6, 4],
          values: Charts.level(moisture.x, ref.target_moisture_pct_wb) },
        { label: t("batches.chart_spot_checks"), stroke: COLOURS.check, points: true, values: moisture.values[1] }
      ]
    });
    Charts.timeChart(document.getElementById("chart-air_temp_c"), {
      title: C.label("air_temp_c") + " (" + units.air_temp_c.unit + ")",
      x: x,
      lines: [
        { label: C.label("air_temp_c"), stroke: COLOURS.air_temp_c, values: series.values.air_temp_c },
        { label: t("batches.chart_alarm"), stroke: COLOURS.alarm, width: 1, dash: [6, 4],
          values: Charts.level(x, ref.air_temp_alarm_c) },
        { label: t("batches.chart_limit"), stroke: COLOURS.reference, width: 1, dash: [6, 4],
          values: Charts.level(x, ref.air_temp_limit_c) }
      ]
    });
    Charts.timeChart(document.getElementById("chart-air_rh_pct"), {
      title: C.label("air_rh_pct") + " (" + units.air_rh_pct.unit + ")",
      x: x,
      lines: [{ label: C.label("air_rh_pct"), stroke: COLOURS.air_rh_pct, values: series.values.air_rh_pct }]
    });
    document.getElementById("chart-note").textContent = !x.length ? t("batches.no_readings")
      : t("batches.chart_note", {
        minutes: C.number(series.every_s / 60, series.every_s < 60 ? 1 : 0),
        target: pct(ref.target_moisture_pct_wb),
        limit: C.measure("air_temp_c", ref.air_temp_limit_c, 0)
      });
  }

  /* --- spot checks and events ---------------------------------------------------------- */

  function showChecks(checks) {
    var body = document.querySelector("#checks tbody");
    body.textContent = "";
    if (!checks.length) {
      var empty = C.element("tr");
      var cell = C.element("td", "muted", t("batches.no_checks"));
      cell.colSpan = 4;
      empty.appendChild(cell);
      body.appendChild(empty);
    }
    checks.forEach(function (check) {
      var tr = C.element("tr");
      tr.appendChild(C.element("td", "", C.dateTime(check.measured_at)));
      tr.appendChild(C.element("td", "number", pct(check.moisture_pct_wb)));
      tr.appendChild(C.element("td", "", (config.method_labels[check.method] || check.method) + (check.note ? " — " + check.note : "")));
      tr.appendChild(C.element("td", "", check.recorded_by));
      body.appendChild(tr);
    });
  }

  function showEvents(events) {
    var list = document.getElementById("events");
    list.textContent = "";
    if (!events.length) list.appendChild(C.element("li", "muted", t("batches.no_events")));
    events.forEach(function (event) { list.appendChild(C.eventItem(event)); });
  }

  /* --- load ---------------------------------------------------------------------------- */

  var detail = C.api(base);
  detail.then(function (batch) {
    showRecord(batch);
    showProgress(batch);
    showChecks(batch.spot_checks);
    if (batch.running) {
      return C.api(base + "/prediction").then(showPrediction);
    }
    document.getElementById("prediction-text").textContent = "";
  }).catch(showError);
  C.api(base + "/metrics").then(showMetrics).catch(showError);
  Promise.all([C.api(base + "/series"), detail]).then(function (answers) {
    drawCharts(answers[0], answers[1].spot_checks);
  }).catch(showError);
  C.api(base + "/events?limit=100").then(showEvents).catch(showError);
})();
