/* The alerts page: open and recent alerts from GET /api/alerts with the filters in the
   address (so a filtered list can be bookmarked or shared), acknowledged in place. The list
   is fetched again soon after the live stream says an alert opened, changed, closed or was
   acknowledged (`alert` events), on every live resync (a reconnect), and every 5 minutes
   as a safety net. */
(function () {
  "use strict";
  var C = window.Cacao;
  var t = C.t;
  var PAGE = 50;
  var REFRESH_MS = 5 * 60000;
  var names = C.config.dryer_names || {};
  var form = document.getElementById("alert-filters");
  var list = document.getElementById("alerts");
  var status = document.getElementById("alerts-status");
  var more = document.getElementById("alerts-more");
  var refreshed = document.getElementById("alerts-refreshed");
  var shown = PAGE;
  var selects = { state: "filter-state", node: "filter-node", kind: "filter-kind", severity: "filter-severity" };

  function say(text) {
    status.textContent = text || "";
    status.hidden = !text;
  }

  /* Filters from the address into the form (unknown values fall back to "any"). */
  function readFilters() {
    var params = new URLSearchParams(location.search);
    Object.keys(selects).forEach(function (name) {
      var select = document.getElementById(selects[name]);
      var value = params.get(name);
      if (value !== null && [].some.call(select.options, function (o) { return o.value === value; })) {
        select.value = value;
      }
    });
  }

  function filters() {
    var values = {};
    Object.keys(selects).forEach(function (name) { values[name] = document.getElementById(selects[name]).value; });
    return values;
  }

  function query(values, limit) {
    var params = new URLSearchParams();
    params.set("state", values.state || "open");
    if (values.node) {
      var slash = values.node.indexOf("/");
      params.set("site_id", values.node.slice(0, slash));
      params.set("node_id", values.node.slice(slash + 1));
    }
    if (values.kind) params.set("kind", values.kind);
    if (values.severity) params.set("severity", values.severity);
    params.set("limit", String(limit + 1));  // one more: is there a next page?
    return params.toString();
  }

  function load() {
    var values = filters();
    return C.api("/api/alerts?" + query(values, shown)).then(function (alerts) {
      more.hidden = alerts.length <= shown;
      alerts = alerts.slice(0, shown);
      list.textContent = "";
      alerts.forEach(function (alert) {
        var key = alert.site_id + "/" + alert.node_id;
        list.appendChild(AlertItems.item(alert, { dryerName: names[key] || key, onChange: load }));
      });
      say(alerts.length ? "" : values.state === "closed" ? t("alerts.none_closed")
        : values.state === "all" ? t("alerts.none") : t("alerts.none_open"));
      refreshed.textContent = t("alerts.refreshed", { time: C.time(new Date()) });
    }).catch(function (error) {
      say(t("common.error", { detail: error.message }));
    });
  }

  form.addEventListener("change", function () {
    var values = filters();
    var params = new URLSearchParams();
    Object.keys(values).forEach(function (name) {
      if (values[name] && !(name === "state" && values[name] === "open")) params.set(name, values[name]);
    });
    var search = params.toString();
    history.replaceState(null, "", location.pathname + (search ? "?" + search : ""));
    shown = PAGE;
    load();
  });
  form.addEventListener("submit", function (event) { event.preventDefault(); load(); });
  more.addEventListener("click", function () { shown += PAGE; load(); });

  readFilters();
  var loadSoon = C.debounce(load, 1000);
  load();  // at once: the stream's first resync only says it is open
  C.live("", {
    resync: function (message) { if (message.reason !== "new") load(); },
    alert: loadSoon
  });
  setInterval(load, REFRESH_MS);
})();
