/* Alerts as list items, shared by the alerts page and the dryer page: the kind and severity
   in plain words, the times, who acknowledged it, and the acknowledge step (a note is
   optional; POST /api/alerts/{id}/ack, operator and up). */
(function () {
  "use strict";
  var C = window.Cacao;
  var t = C.t;

  var KINDS = {
    over_temperature: "alerts.kind_over_temperature",
    high_humidity: "alerts.kind_high_humidity",
    sensor_fault: "alerts.kind_sensor_fault",
    node_offline: "alerts.kind_node_offline",
    sequence_gap: "alerts.kind_sequence_gap",
    drying_stalled: "alerts.kind_drying_stalled",
    target_reached: "alerts.kind_target_reached",
    config_not_applied: "alerts.kind_config_not_applied",
    clock_wrong: "alerts.kind_clock_wrong"
  };
  var ADVICE = {
    over_temperature: "alerts.do_over_temperature",
    high_humidity: "alerts.do_high_humidity",
    sensor_fault: "alerts.do_sensor_fault",
    node_offline: "alerts.do_node_offline",
    sequence_gap: "alerts.do_sequence_gap",
    drying_stalled: "alerts.do_drying_stalled",
    target_reached: "alerts.do_target_reached",
    config_not_applied: "alerts.do_config_not_applied",
    clock_wrong: "alerts.do_clock_wrong"
  };
  var SEVERITIES = { critical: "alerts.severity_critical", warning: "alerts.severity_warning",
                     info: "alerts.severity_info" };

  function kindText(kind) { return KINDS[kind] ? t(KINDS[kind]) : kind; }
  function severityText(severity) { return SEVERITIES[severity] ? t(SEVERITIES[severity]) : severity; }

  /* One alert. options.dryerName: the dryer's name to show (the alerts page);
     options.onChange(alert): called with the API's answer after an acknowledgement. */
  function item(alert, options) {
    options = options || {};
    var li = C.element("li", "alert-item");
    li.setAttribute("data-alert-id", String(alert.alert_id));
    li.setAttribute("data-severity", alert.severity);
    li.setAttribute("data-state", alert.state);
    li.setAttribute("data-kind", alert.kind);

    var head = C.element("p", "alert-head");
    var badge = C.element("span", "severity", severityText(alert.severity));
    badge.setAttribute("data-severity", alert.severity);
    head.appendChild(badge);
    head.appendChild(C.element("strong", "alert-kind", kindText(alert.kind)));
    if (options.dryerName) {
      var link = C.element("a", "alert-dryer", options.dryerName);
      link.href = "/nodes/" + encodeURIComponent(alert.site_id) + "/" + encodeURIComponent(alert.node_id);
      head.appendChild(link);
    }
    li.appendChild(head);
    if (alert.state === "open" && ADVICE[alert.kind]) li.appendChild(C.element("p", "alert-advice", t(ADVICE[alert.kind])));
    li.appendChild(C.element("p", "muted alert-message", alert.message));

    var times = [t("alerts.opened_at", { time: C.dateTime(alert.opened_at) })];
    if (alert.updated_at !== alert.opened_at && alert.updated_at !== alert.closed_at) {
      times.push(t("alerts.updated_at", { time: C.dateTime(alert.updated_at) }));
    }
    times.push(alert.closed_at ? t("alerts.closed_at", { time: C.dateTime(alert.closed_at) })
                               : t("alerts.still_open"));
    li.appendChild(C.element("p", "muted alert-times", times.join(" · ")));

    if (alert.acknowledged_by) {
      li.appendChild(C.element("p", "alert-acked", t("alerts.acknowledged_by", {
        user: alert.acknowledged_by, time: C.dateTime(alert.acknowledged_at) })));
    } else if (alert.state === "open") {
      li.appendChild(ackControls(alert, options));
    }
    return li;
  }

  /* "Acknowledge" opens a small form (an optional note, confirm or cancel): one mis-tap
     acknowledges nothing. */
  function ackControls(alert, options) {
    var box = C.element("div", "alert-actions");
    var open = C.element("button", "button", t("alerts.acknowledge"));
    open.type = "button";
    open.setAttribute("data-action", "acknowledge");
    var form = C.element("form", "ack-form");
    form.hidden = true;
    var label = C.element("label", "", t("alerts.note"));
    var note = C.element("input");
    note.name = "note";
    note.maxLength = 500;
    note.id = "ack-note-" + alert.alert_id;
    label.htmlFor = note.id;
    var confirm = C.element("button", "button primary", t("alerts.acknowledge_confirm"));
    confirm.type = "submit";
    var cancel = C.element("button", "button", t("alerts.cancel"));
    cancel.type = "button";
    var error = C.element("p", "error");
    error.setAttribute("role", "alert");
    error.hidden = true;
    [label, note, confirm, cancel, error].forEach(function (n) { form.appendChild(n); });
    box.appendChild(open);
    box.appendChild(form);

    open.addEventListener("click", function () { open.hidden = true; form.hidden = false; note.focus(); });
    cancel.addEventListener("click", function () { form.hidden = true; open.hidden = false; error.hidden = true; });
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      confirm.disabled = true;
      error.hidden = true;
      C.api("/api/alerts/" + alert.alert_id + "/ack", { method: "POST", body: { note: note.value.trim() } })
        .then(function (answer) {
          if (options.onChange) options.onChange(answer);
        }, function (problem) {
          confirm.disabled = false;
          error.textContent = t("alerts.ack_failed", { detail: problem.message });
          error.hidden = false;
        });
    });
    return box;
  }

  window.AlertItems = { item: item, kindText: kindText, severityText: severityText };
})();
