/* One dryer: its card, its open alerts (acknowledge), the running batch (start, spot checks,
   end with a confirmation step, the gateway's end suggestion, and what the node made of each
   command), the manual override and taring the tray (technicians), charts of the last 24 h
   and its latest events, kept current by the live stream of this node only. Every change goes through the JSON API;
   a refusal is the API's one line, shown at its field or under its form. */
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
      showTare();
      return Promise.all([loadBatch(), loadAlerts()]);
    });
  }

  var startForm = document.getElementById("start-form");
  var running = document.getElementById("running-actions");
  var endForm = document.getElementById("end-form");
  var endOpen = document.getElementById("end-open");
  var suggestion = document.getElementById("end-suggestion");
  var fate = document.getElementById("batch-command");
  var shownBatch = null;   // the batch id the forms belong to
  var pending = null;      // the last batch command sent from this page: {kind, batch_id, command_id}

  function loadBatch() {
    var box = document.getElementById("batch-box");
    var id = node.running_batch_id;
    if (id !== shownBatch) {  // another batch (or none): forms start afresh
      shownBatch = id;
      [startForm, endForm, document.getElementById("spot-form")].forEach(function (form) {
        form.reset();
        clearErrors(form);
      });
      endForm.hidden = true;
      endOpen.hidden = false;
    }
    startForm.hidden = !!id;
    running.hidden = !id;
    if (!id) {
      box.textContent = "";
      box.appendChild(C.element("p", "muted", t("node.no_batch")));
      suggestion.hidden = true;
      return Promise.resolve();
    }
    return C.api("/api/batches/" + encodeURIComponent(id)).then(function (batch) {
      node.batch = batch;
      Cards.update(card, node);
      box.textContent = "";
      showBatch(box, id, batch);
      showSpotChecks(batch.spot_checks || []);
      return loadSuggestion(id);
    }, function () {
      box.textContent = "";
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
      if (batch.initial_mass_kg) fact(t("operator.initial_mass"), C.number(batch.initial_mass_kg, 1) + "\u00a0kg");
      fact(t("node.batch_target"), C.measure("bean_moisture_pct_wb", batch.target_moisture_pct_wb, 1));
      if (batch.progress_pct !== null && batch.progress_pct !== undefined) {
        fact(t("node.batch_progress"), C.number(batch.progress_pct, 0) + "\u00a0%");
      }
      fact(t("operator.node_side"), nodeSide(batch));
    }
    box.appendChild(list);
    var link = C.element("a", "batch-open", t("operator.batch_open"));  // curves, metrics, report
    link.href = "/batches/" + encodeURIComponent(id);
    box.appendChild(link);
  }

  /* Whether the node has the batch: its batch_started event, else its answer to our command. */
  function nodeSide(batch) {
    var side = batch.node || {};
    if (side.started_at) return t("operator.node_confirmed", { time: C.shortDateTime(side.started_at) });
    var commands = (side.commands || []).filter(function (c) { return c.action === "start_batch"; });
    var last = commands[commands.length - 1];
    if (last && last.node_ok === false) return t("operator.fate_refused", { detail: last.node_message || "" });
    if (last && !last.delivered_to_broker) return t("operator.node_undelivered");
    return t("operator.node_waiting");
  }

  function showSpotChecks(checks) {
    var list = document.getElementById("spot-list");
    list.textContent = "";
    if (!checks.length) list.appendChild(C.element("li", "muted", t("operator.spot_none")));
    checks.slice().reverse().forEach(function (check) {
      var item = C.element("li", "spot");
      item.appendChild(C.element("time", "", C.shortDateTime(check.measured_at)));
      item.appendChild(C.element("strong", "", C.measure("bean_moisture_pct_wb", check.moisture_pct_wb, 1)));
      var by = t("operator.spot_by", { user: check.recorded_by });
      item.appendChild(C.element("span", "muted", check.note ? check.note + " · " + by : by));
      list.appendChild(item);
    });
  }

  function loadSuggestion(id) {
    return C.api("/api/batches/" + encodeURIComponent(id) + "/end-suggestion").then(function (advice) {
      suggestion.hidden = !advice.should_end || id !== node.running_batch_id;
      if (advice.should_end) {
        document.getElementById("end-suggestion-text").textContent = t("operator.suggest_end", {
          target: C.measure("bean_moisture_pct_wb", advice.target_moisture_pct_wb, 1),
          since: C.shortDateTime(advice.since), hours: C.number(advice.hold_h, 0) });
      }
    }, function () { suggestion.hidden = true; });
  }

  /* --- forms: numbers typed on a phone, errors at their field -------------------------- */

  function clearErrors(form) {
    form.querySelectorAll(".error").forEach(function (p) { p.hidden = true; p.textContent = ""; });
    form.querySelectorAll("[aria-invalid]").forEach(function (input) { input.removeAttribute("aria-invalid"); });
  }

  /* The API's one line at the field it names ("body.initial_moisture_pct_wb: ..."), else
     under the form. */
  function showError(form, detail, field) {
    var match = /^body\.([a-z_]+)/.exec(detail || "");
    var name = field || (match ? match[1] : null);
    var target = name ? form.querySelector('[data-error-for="' + name + '"]') : null;
    if (!target) target = form.querySelector(".form-error");
    target.textContent = field ? detail : t("operator.failed", { detail: detail });
    target.hidden = false;
    var input = name ? form.querySelector('[name="' + name + '"]') : null;
    if (input) { input.setAttribute("aria-invalid", "true"); input.focus(); }
  }

  /* A number from a text box: "55,5" is 55.5 (phones in Spanish offer a comma). Returns
     null when empty and not required; throws {field, text} when wrong. */
  function readNumber(form, name, min, max, required) {
    var raw = form.elements[name].value.trim().replace(",", ".");
    if (!raw) {
      if (required) throw { field: name, text: t("operator.error_required") };
      return null;
    }
    var value = Number(raw);
    if (!/^-?\d*\.?\d+$/.test(raw) || !isFinite(value)) throw { field: name, text: t("operator.error_number") };
    if (value < min || value > max) {
      throw { field: name, text: t("operator.error_range", { min: C.number(min, min % 1 ? 1 : 0), max: C.number(max, 0) }) };
    }
    return value;
  }

  /* Run `build` (which may throw a field error), then send; `done` gets the API's answer. */
  function submit(form, build, send, done) {
    clearErrors(form);
    var body;
    try {
      body = build();
    } catch (problem) {
      if (problem && problem.field) { showError(form, problem.text, problem.field); return; }
      throw problem;
    }
    var buttons = form.querySelectorAll("button[type=submit]");
    buttons.forEach(function (b) { b.disabled = true; });
    send(body).then(function (answer) {
      buttons.forEach(function (b) { b.disabled = false; });
      done(answer);
    }, function (error) {
      buttons.forEach(function (b) { b.disabled = false; });
      showError(form, error.message);
    });
  }

  function showFate(state, text) {
    fate.textContent = text;
    fate.setAttribute("data-state", state);
    fate.hidden = false;
  }

  function commandSent(kind, answer) {
    pending = { kind: kind, batch_id: answer.batch_id, command_id: answer.command.command_id };
    if (!answer.command.delivered_to_broker) {
      showFate("undelivered", t("operator.fate_undelivered", { id: answer.batch_id }));
    } else {
      showFate("sent", t(kind === "start" ? "operator.fate_start_sent" : "operator.fate_end_sent",
                         { id: answer.batch_id }));
      checkPending();
    }
  }

  startForm.addEventListener("submit", function (event) {
    event.preventDefault();
    submit(startForm, function () {
      var lot = startForm.elements.lot_code.value.trim();
      if (!lot) throw { field: "lot_code", text: t("operator.error_required") };
      var body = { site_id: site, node_id: nodeId, lot_code: lot,
                   producer: startForm.elements.producer.value.trim(),
                   initial_moisture_pct_wb: readNumber(startForm, "initial_moisture_pct_wb", 10, 80, true),
                   notes: startForm.elements.notes.value.trim() };
      var mass = readNumber(startForm, "initial_mass_kg", 0.1, 20000, false);
      if (mass !== null) body.initial_mass_kg = mass;
      return body;
    }, function (body) {
      return C.api("/api/batches", { method: "POST", body: body });
    }, function (answer) {
      commandSent("start", answer);
      loadNode();
    });
  });

  function openEnd() {
    document.getElementById("end-question").textContent = t("operator.end_question", { id: node.running_batch_id });
    endForm.hidden = false;
    endOpen.hidden = true;
    endForm.scrollIntoView({ block: "nearest" });
    endForm.elements.final_moisture_pct_wb.focus();
  }
  endOpen.addEventListener("click", openEnd);
  document.getElementById("end-suggestion-button").addEventListener("click", openEnd);
  document.getElementById("end-cancel").addEventListener("click", function () {
    endForm.hidden = true;
    endOpen.hidden = false;
    clearErrors(endForm);
  });
  endForm.addEventListener("submit", function (event) {
    event.preventDefault();
    var id = node.running_batch_id;
    submit(endForm, function () {
      var body = {};
      var moisture = readNumber(endForm, "final_moisture_pct_wb", 0, 80, false);
      var mass = readNumber(endForm, "final_mass_kg", 0.1, 20000, false);
      var notes = endForm.elements.notes.value.trim();
      if (moisture !== null) body.final_moisture_pct_wb = moisture;
      if (mass !== null) body.final_mass_kg = mass;
      if (notes) body.notes = notes;
      return body;
    }, function (body) {
      return C.api("/api/batches/" + encodeURIComponent(id) + "/end", { method: "POST", body: body });
    }, function (answer) {
      commandSent("end", answer);
      loadNode();
    });
  });

  var spotForm = document.getElementById("spot-form");
  spotForm.addEventListener("submit", function (event) {
    event.preventDefault();
    var id = node.running_batch_id;
    submit(spotForm, function () {
      var body = { moisture_pct_wb: readNumber(spotForm, "moisture_pct_wb", 0, 80, true),
                   note: spotForm.elements.note.value.trim() };
      var when = spotForm.elements.measured_at.value;
      if (when) {
        var at = new Date(when);
        if (isNaN(at.getTime())) throw { field: "measured_at", text: t("operator.error_time") };
        body.measured_at = at.toISOString();
      }
      return body;
    }, function (body) {
      return C.api("/api/batches/" + encodeURIComponent(id) + "/spot-checks", { method: "POST", body: body });
    }, function () {
      spotForm.reset();
      loadBatch();
    });
  });

  /* Whether the node has done what this page asked, from the batch's node side (its
     batch_started / batch_ended events and its answers to our commands): asked again after
     sending and whenever the node reports a batch event or a command result. */
  function checkPending() {
    if (!pending) return Promise.resolve();
    var asked = pending;
    return C.api("/api/batches/" + encodeURIComponent(asked.batch_id)).then(function (batch) {
      var side = batch.node || {};
      var done = asked.kind === "start" ? side.started_at : side.ended_at;
      var answer = (side.commands || []).filter(function (c) { return c.command_id === asked.command_id; })[0];
      if (pending !== asked) return;
      if (done) {
        showFate("confirmed", t(asked.kind === "start" ? "operator.fate_start_confirmed" : "operator.fate_end_confirmed",
                                { id: asked.batch_id, time: C.time(done) }));
        pending = null;
      } else if (answer && answer.node_ok === false) {
        showFate("refused", t("operator.fate_refused", { detail: answer.node_message || "" }));
        pending = null;
      }
    }, function () { return null; });
  }

  /* The card alone (its badge turns "no recent data" when the dryer goes quiet). */
  function refreshCard() {
    if (!node) return Promise.resolve();
    return C.api("/api/nodes/" + base).then(function (summary) {
      if (summary.running_batch_id !== node.running_batch_id) return loadNode();  // all of it
      if (node.latest && summary.latest && node.latest.seq > summary.latest.seq) summary.latest = node.latest;
      summary.batch = node.batch;
      node = summary;
      Cards.update(card, node);
      showTare();
    }, function () { return null; });
  }

  /* --- open alerts of this dryer ------------------------------------------------------- */

  function loadAlerts() {
    return C.api("/api/alerts?state=open&site_id=" + encodeURIComponent(site) + "&node_id=" +
                 encodeURIComponent(nodeId)).then(function (alerts) {
      var list = document.getElementById("alert-list");
      list.textContent = "";
      alerts.forEach(function (alert) { list.appendChild(AlertItems.item(alert, { onChange: loadAlerts })); });
      document.getElementById("node-alerts").hidden = alerts.length === 0;
      if (node && card && node.open_alerts !== alerts.length) {
        node.open_alerts = alerts.length;
        Cards.update(card, node);
      }
    });
  }

  /* --- manual override ------------------------------------------------------------------ */

  var overrideStatus = document.getElementById("override-status");
  var overrideForm = document.getElementById("override-form");   // technicians only
  var overrideCancel = document.getElementById("override-cancel");
  var expiryTimer = null;

  function settings(status) {
    var parts = [];
    if (status.fan_speed_pct !== null) parts.push(t("operator.override_what_fan", { value: C.number(status.fan_speed_pct, 0) + "\u00a0%" }));
    if (status.vent_open_pct !== null) parts.push(t("operator.override_what_vent", { value: C.number(status.vent_open_pct, 0) + "\u00a0%" }));
    return parts.join(", ");
  }

  function showOverride(status) {
    var text;
    if (status.state === "active") {
      text = t("operator.override_active", { time: C.shortDateTime(status.expires_at), what: settings(status),
                                             user: status.requested_by });
    } else if (status.state === "sent") {
      text = t("operator.override_sent", { what: settings(status) });
    } else if (status.state === "refused") {
      text = t("operator.override_refused", { detail: status.node_message || "" });
    } else if (status.state === "unanswered") {
      text = t("operator.override_unanswered", { time: C.shortDateTime(status.requested_at) });
    } else if (status.state === "ended") {
      text = t("operator.override_ended", { time: C.shortDateTime(status.ended_at) });
    } else {
      text = t("operator.override_auto");
    }
    overrideStatus.textContent = text;
    overrideStatus.setAttribute("data-state", status.state);
    if (overrideCancel) overrideCancel.hidden = !(status.state === "active" || status.state === "sent");
    clearTimeout(expiryTimer);
    if (status.state === "active" || status.state === "sent") expiryTimer = setTimeout(loadOverride, 30000);
  }

  function loadOverride() {
    return C.api("/api/nodes/" + base + "/override").then(showOverride);
  }

  if (overrideForm) {
    var custom = document.getElementById("override-custom");
    overrideForm.addEventListener("change", function () {
      custom.hidden = overrideForm.elements.duration.value !== "custom";
    });
    overrideForm.addEventListener("submit", function (event) {
      event.preventDefault();
      submit(overrideForm, function () {
        var fan = readNumber(overrideForm, "fan_speed_pct", 0, 100, false);
        var vent = readNumber(overrideForm, "vent_open_pct", 0, 100, false);
        if (fan === null && vent === null) throw { field: "fan_speed_pct", text: t("operator.error_fan_or_vent") };
        var choice = overrideForm.elements.duration.value;
        var seconds = choice === "custom" ? readNumber(overrideForm, "minutes", 1, 720, true) * 60 : Number(choice);
        var body = { duration_s: seconds };
        if (fan !== null) body.fan_speed_pct = fan;
        if (vent !== null) body.vent_open_pct = vent;
        return body;
      }, function (body) {
        return C.api("/api/nodes/" + base + "/override", { method: "POST", body: body });
      }, function (answer) {
        if (!answer.delivered_to_broker) showError(overrideForm, t("operator.override_undelivered"));
        loadOverride();
      });
    });
    overrideCancel.addEventListener("click", function () {
      overrideCancel.disabled = true;
      C.api("/api/nodes/" + base + "/override", { method: "DELETE" }).then(function () {
        overrideCancel.disabled = false;
        overrideCancel.hidden = true;
        overrideStatus.textContent = t("operator.override_cancel_sent");
        overrideStatus.setAttribute("data-state", "cancelling");
      }, function (error) {
        overrideCancel.disabled = false;
        showError(overrideForm, error.message);
      });
    });
  }

  /* --- taring the tray (technicians and admins) ----------------------------------------- */

  var tareBox = document.getElementById("tare-box");  // only rendered for those who may
  var tarePending = null;  // the tare command sent from this page: {command_id, sent_ms}
  var TARE_LIFETIME_MS = 10 * 60000;  // the node drops a command older than this

  /* A node with a load-cell tray: its readings carry the tray's mass, or its status names a
     faulty tray (a lifted or wrongly tared tray reads as a fault: taring may be the cure). */
  function hasTray(summary) {
    var readings = summary.latest && summary.latest.readings ? summary.latest.readings : {};
    if (readings.tray_mass_kg !== undefined && readings.tray_mass_kg !== null) return true;
    var faults = (summary.status && summary.status.sensor_faults) || {};
    return Object.keys(faults).some(function (name) { return /^load-cell tray/.test(String(faults[name])); });
  }

  function showTare() {
    if (!tareBox || !node) return;
    tareBox.hidden = !hasTray(node) && !tarePending;
    var running = !!node.running_batch_id;
    var confirm = document.getElementById("tare-confirm");
    if (running) confirm.hidden = true;
    document.getElementById("tare-running").hidden = !running;
    document.getElementById("tare-open").hidden = running || !confirm.hidden;
    var mass = node.latest && node.latest.readings ? node.latest.readings.tray_mass_kg : null;
    document.getElementById("tare-now").textContent = mass === null || mass === undefined ? ""
      : t("operator.tare_now", { mass: C.number(mass, 2) + "\u00a0kg" });
  }

  function tareFate(state, text) {
    var fateLine = document.getElementById("tare-fate");
    fateLine.textContent = text;
    fateLine.setAttribute("data-state", state);
    fateLine.hidden = false;
  }

  /* The node's command_result for our tare command: done, or why not. */
  function tareAnswer(event) {
    if (!tarePending || !event.data || event.data.command_id !== tarePending.command_id) return;
    tarePending = null;
    if (event.data.ok === false) tareFate("refused", t("operator.tare_refused", { detail: event.message || "" }));
    else tareFate("confirmed", t("operator.tare_done", { time: C.time(event.occurred_at) }));
    showTare();
  }

  /* After a reconnect: the answer may have come while the stream was down. */
  function checkTare() {
    if (!tarePending) return Promise.resolve();
    var asked = tarePending;
    return C.api("/api/nodes/" + base + "/events?type=command_result&limit=20").then(function (events) {
      var answer = events.filter(function (e) { return e.data && e.data.command_id === asked.command_id; })[0];
      if (answer) tareAnswer(answer);
      else if (tarePending === asked && Date.now() - asked.sent_ms > TARE_LIFETIME_MS) {
        tarePending = null;
        tareFate("refused", t("operator.tare_unanswered", { time: C.time(new Date(asked.sent_ms)) }));
      }
    }, function () { return null; });
  }

  if (tareBox) {
    var tareOpen = document.getElementById("tare-open");
    var tareConfirm = document.getElementById("tare-confirm");
    var tareSend = document.getElementById("tare-send");
    tareOpen.addEventListener("click", function () {
      tareConfirm.hidden = false;
      tareOpen.hidden = true;
      tareSend.focus();
    });
    document.getElementById("tare-cancel").addEventListener("click", function () {
      tareConfirm.hidden = true;
      showTare();
    });
    tareSend.addEventListener("click", function () {
      tareSend.disabled = true;
      C.api("/api/nodes/" + base + "/tare", { method: "POST" }).then(function (answer) {
        tareSend.disabled = false;
        tareConfirm.hidden = true;
        if (!answer.delivered_to_broker) {
          tareFate("undelivered", t("operator.override_undelivered"));
        } else {
          tarePending = { command_id: answer.command_id, sent_ms: Date.now() };
          tareFate("sent", t("operator.tare_sent"));
          setTimeout(checkTare, TARE_LIFETIME_MS + 1000);
        }
        showTare();
      }, function (error) {
        tareSend.disabled = false;
        tareConfirm.hidden = true;
        tareFate("refused", t("operator.tare_failed", { detail: error.message }));
        showTare();
      });
    });
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

  function loadEvents() {
    return C.api("/api/nodes/" + base + "/events?limit=" + MAX_EVENTS).then(function (events) {
      var list = document.getElementById("events");
      list.textContent = "";
      if (!events.length) list.appendChild(C.element("li", "muted", t("node.no_events")));
      events.forEach(function (event) { list.appendChild(C.eventItem(event)); });
    });
  }

  function addEvent(event) {
    var list = document.getElementById("events");
    var empty = list.querySelector("li.muted");
    if (empty) empty.remove();
    list.insertBefore(C.eventItem(event), list.firstChild);
    while (list.children.length > MAX_EVENTS) list.lastChild.remove();
  }

  /* --- live ---------------------------------------------------------------------------- */

  function loadAll() {
    return Promise.all([loadNode(), loadSeries(), loadEvents(), loadOverride(), checkPending(),
                        checkTare()]).catch(function (error) {
      document.getElementById("chart-note").textContent = t("common.error", { detail: error.message });
    });
  }

  var reloadSoon = C.debounce(loadNode, 500);
  var alertsSoon = C.debounce(loadAlerts, 300);
  var overrideSoon = C.debounce(loadOverride, 300);
  var pendingSoon = C.debounce(checkPending, 300);
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
        showTare();
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
      if (/^(batch_started|batch_ended|command_result)$/.test(event.type)) pendingSoon();
      if (event.type === "command_result") tareAnswer(event);
      if (/^batch_/.test(event.type)) reloadSoon();
      if (/^(override_|command_result$|boot$)/.test(event.type)) overrideSoon();
    },
    alert: alertsSoon  // this dryer's alert opened, changed, closed or was acknowledged
  });
  setInterval(refreshCard, 60000);   // the "no recent data" badge
  setInterval(loadNode, 5 * 60000);  // a safety net: batch, alerts and card from the API
})();
