/* The calibration page: hand-meter readings → preview → save and send → the node's answer.
   Everything goes through /api/calibration/<site>/<node> (the API is the source of truth);
   the node's answer arrives live (a command_result event) or on reload. */
(function () {
  "use strict";

  var C = window.Cacao;
  var t = C.t;
  var el = C.element;
  var MOISTURE = "bean_moisture_pct_wb";
  var STATES = {
    pending: "calibration.state_pending", applied: "calibration.state_applied",
    rejected: "calibration.state_rejected", not_delivered: "calibration.state_not_delivered"
  };

  var select = document.getElementById("cal-node");
  var body = document.getElementById("cal-body");
  var form = document.getElementById("cal-form");
  var pairsBody = document.querySelector("#cal-pairs tbody");
  var saveButton = document.getElementById("cal-save");
  var errorBox = document.getElementById("cal-error");
  var sentBox = document.getElementById("cal-sent");
  var result = document.getElementById("cal-result");
  var keep = document.getElementById("cal-keep");
  var comment = document.getElementById("cal-comment");
  var node = "";
  var stream = null;

  function base() { return "/api/calibration/" + node; }
  function pct(value) { return C.measure(MOISTURE, value, 1); }
  function volts(value) {
    return value === null || value === undefined ? "–" : C.number(value, 3) + "\u00a0V";
  }

  /* yyyy-MM-ddTHH:mm:ss in the phone's own time, as a datetime-local input wants it. */
  function localInput(date) {
    var shifted = new Date(date.getTime() - date.getTimezoneOffset() * 60000);
    return shifted.toISOString().slice(0, 19);
  }

  function cell(row, text, className) {
    var td = el("td", className, text);
    row.appendChild(td);
    return td;
  }

  function showError(error) {
    errorBox.textContent = t("calibration.error", { detail: error.message || String(error) });
    errorBox.hidden = false;
  }

  function invalidate() {
    saveButton.disabled = true;
    result.hidden = true;
    sentBox.hidden = true;
    errorBox.hidden = true;
    pairsBody.querySelectorAll("td.computed").forEach(function (td) { td.textContent = ""; });
  }

  function addRow(when, meter, spotCheckId) {
    var row = el("tr");
    var time = el("input");
    time.type = "datetime-local";
    time.step = "1";
    time.value = localInput(when || new Date());
    time.setAttribute("aria-label", t("calibration.time"));
    var reading = el("input");
    reading.type = "number";
    reading.min = "0";
    reading.max = "80";
    reading.step = "0.1";
    reading.inputMode = "decimal";
    reading.value = meter === undefined || meter === null ? "" : String(meter);
    reading.setAttribute("aria-label", t("calibration.meter"));
    var unit = el("small", "unit", "\u00a0" + C.config.measurements[MOISTURE].unit);
    cell(row, null).appendChild(time);
    var meterCell = cell(row, null);
    meterCell.appendChild(reading);
    meterCell.appendChild(unit);
    cell(row, "", "num computed");
    cell(row, "", "num computed");
    cell(row, "", "num computed");
    var remove = el("button", "link", t("calibration.remove_row"));
    remove.type = "button";
    cell(row, null).appendChild(remove);
    row.setAttribute("data-spot", spotCheckId ? String(spotCheckId) : "");
    remove.addEventListener("click", function () { row.remove(); invalidate(); });
    time.addEventListener("input", invalidate);
    reading.addEventListener("input", invalidate);
    pairsBody.appendChild(row);
    return row;
  }

  /* The rows with a hand-meter value, and the request made of them. */
  function filledRows() {
    return Array.prototype.filter.call(pairsBody.rows, function (row) {
      var inputs = row.querySelectorAll("input");
      return inputs[0].value && inputs[1].value !== "";
    });
  }

  function request(rows) {
    return {
      pairs: rows.map(function (row) {
        var inputs = row.querySelectorAll("input");
        var pair = { measured_at: new Date(inputs[0].value).toISOString(),
                     meter_moisture_pct_wb: Number(inputs[1].value) };
        var spot = row.getAttribute("data-spot");
        if (spot) pair.spot_check_id = Number(spot);
        return pair;
      }),
      keep_outside_points: keep.checked,
      comment: comment.value
    };
  }

  function fillPoints(table, points) {
    var tbody = table.querySelector("tbody");
    tbody.textContent = "";
    points.forEach(function (point) {
      var row = el("tr");
      cell(row, volts(point[0]), "num");
      cell(row, pct(point[1]), "num");
      tbody.appendChild(row);
    });
  }

  function showCurrent(current) {
    var text = document.getElementById("cal-current");
    var table = document.getElementById("cal-current-points");
    if (!current) {
      text.textContent = t("calibration.current_unknown");
      table.hidden = true;
      return;
    }
    var key = current.source === "gateway" ? "calibration.current_gateway" : "calibration.current_config";
    text.textContent = t(key, { sensor: current.sensor, when: C.dateTime(current.reported_at) });
    fillPoints(table, current.points);
    table.hidden = false;
  }

  function showHistory(calibrations) {
    var tbody = document.querySelector("#cal-history tbody");
    tbody.textContent = "";
    document.getElementById("cal-history-none").hidden = calibrations.length > 0;
    calibrations.forEach(function (record) {
      var row = el("tr");
      cell(row, C.dateTime(record.created_at));
      cell(row, record.created_by);
      cell(row, String(record.points.length), "num");
      var state = cell(row, t(STATES[record.state] || "calibration.state_pending"), "cal-state");
      state.setAttribute("data-state", record.state);
      if (record.node_message) state.appendChild(el("small", "cal-message", record.node_message));
      tbody.appendChild(row);
    });
  }

  function showSpotChecks(checks) {
    var list = document.getElementById("cal-spot-list");
    list.textContent = "";
    if (!checks.length) {
      list.appendChild(el("li", "muted", t("calibration.spot_none")));
      return;
    }
    checks.forEach(function (check) {
      var item = el("li");
      var probe = check.probe_v === null ? t("calibration.spot_no_probe") : volts(check.probe_v);
      item.appendChild(el("span", null, C.dateTime(check.measured_at) + " · " +
                          pct(check.moisture_pct_wb) + " · " + probe + " · " + check.batch_id));
      var use = el("button", null, t("calibration.spot_use"));
      use.type = "button";
      use.disabled = check.probe_v === null;
      use.addEventListener("click", function () {
        addRow(new Date(check.measured_at), check.moisture_pct_wb, check.spot_check_id);
        invalidate();
      });
      item.appendChild(use);
      list.appendChild(item);
    });
  }

  function refresh() {
    if (!node) return Promise.resolve();
    return C.api(base()).then(function (data) {
      showCurrent(data.current);
      showHistory(data.calibrations);
    }).catch(showError);
  }

  function choose(value) {
    node = value;
    if (stream) stream.close();
    stream = null;
    invalidate();
    body.hidden = !node;
    if (!node) return;
    var parts = node.split("/");
    history.replaceState(null, "", "/calibration?site_id=" + encodeURIComponent(parts[0]) +
                         "&node_id=" + encodeURIComponent(parts[1]));
    pairsBody.textContent = "";
    addRow(new Date());
    refresh();
    C.api(base() + "/spot-checks").then(showSpotChecks).catch(showError);
    stream = C.live("?site_id=" + encodeURIComponent(parts[0]) + "&node_id=" + encodeURIComponent(parts[1]), {
      event: function (event) {
        if (event.type === "command_result" || event.type === "boot") refresh();
      },
      resync: refresh
    });
  }

  function preview() {
    invalidate();
    var rows = filledRows();
    if (rows.length < 2) {
      showError(new Error(t("calibration.need_two")));
      return;
    }
    C.api(base() + "/preview", { method: "POST", body: request(rows) }).then(function (data) {
      data.pairs.forEach(function (pair, index) {
        var cells = rows[index].querySelectorAll("td.computed");
        cells[0].textContent = volts(pair.probe_v);
        cells[1].textContent = pct(pair.before_pct_wb);
        cells[2].textContent = pct(pair.after_pct_wb);
      });
      document.getElementById("cal-rmse").textContent = data.rmse_before_pct === null
        ? t("calibration.rmse_after_only", { after: pct(data.rmse_after_pct) })
        : t("calibration.rmse", { before: pct(data.rmse_before_pct), after: pct(data.rmse_after_pct) });
      fillPoints(document.getElementById("cal-new-points"), data.points);
      result.hidden = false;
      saveButton.disabled = false;
    }).catch(showError);
  }

  function save() {
    var rows = filledRows();
    saveButton.disabled = true;
    C.api(base(), { method: "POST", body: request(rows) }).then(function () {
      sentBox.hidden = false;
      return refresh();
    }).catch(function (error) {
      saveButton.disabled = false;
      showError(error);
    });
  }

  form.addEventListener("submit", function (event) { event.preventDefault(); preview(); });
  saveButton.addEventListener("click", save);
  keep.addEventListener("change", invalidate);
  document.getElementById("cal-add").addEventListener("click", function () { addRow(new Date()); });
  select.addEventListener("change", function () { choose(select.value); });
  choose(select.value || C.config.selected || "");
})();
