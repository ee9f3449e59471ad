/* The audit log: GET /api/audit, newest first, with filters (who, what, which dryer, dates in
   the site's time zone) and pages; each entry's old → new values written readably. */
(function () {
  "use strict";
  var C = window.Cacao;
  var t = C.t;
  var el = C.element;
  var config = C.config;
  var LIMIT = 20;
  var offset = 0;
  var total = 0;

  var form = document.getElementById("audit-filters");
  var list = document.getElementById("audit-list");
  var count = document.getElementById("audit-count");
  var errorBox = document.getElementById("audit-error");
  var newer = document.getElementById("newer");
  var older = document.getElementById("older");

  function showError(text) {
    errorBox.textContent = text || "";
    errorBox.hidden = !text;
  }

  /* --- dates: a day in the site's zone → the instant it starts ----------------------------- */

  var zoneParts = new Intl.DateTimeFormat("en-US", {
    timeZone: config.zone, hourCycle: "h23", year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit" });

  function zoneOffsetMs(instant) {
    var parts = {};
    zoneParts.formatToParts(new Date(instant)).forEach(function (part) { parts[part.type] = part.value; });
    var asUtc = Date.UTC(Number(parts.year), Number(parts.month) - 1, Number(parts.day),
                         Number(parts.hour) % 24, Number(parts.minute), Number(parts.second));
    return asUtc - instant;
  }

  function startOfDay(day, plusDays) {
    var p = day.split("-").map(Number);
    var wall = Date.UTC(p[0], p[1] - 1, p[2] + (plusDays || 0));
    var instant = wall - zoneOffsetMs(wall);
    instant = wall - zoneOffsetMs(instant);  // again, in case the offset changed that day
    return new Date(instant).toISOString();
  }

  /* --- values, readably ------------------------------------------------------------------ */

  var ISO_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}/;

  function isField(key) { return Object.prototype.hasOwnProperty.call(config.field_texts, key); }

  function label(key) { return isField(key) ? t(config.field_texts[key].name) : key; }

  function shown(key, v) {
    if (v === null || v === undefined) return "–";
    if (typeof v === "number") {
      var digits = Number.isInteger(v) ? 0 : Math.round(v * 10) === v * 10 ? 1 : 2;
      var text = C.number(v, digits);
      return isField(key) ? text + "\u00a0" + config.field_units[key] : text;
    }
    if (typeof v === "boolean") return t(v ? "audit.yes" : "audit.no");
    if (typeof v === "string") return ISO_TIME.test(v) ? C.dateTime(v) : v;
    var json = JSON.stringify(v);
    return json.length > 160 ? json.slice(0, 159) + "…" : json;
  }

  /* "name: old → new"; something new (nothing before, e.g. a user added) is "name: new". */
  function changeItem(key, before, after, belowText) {
    var item = el("li", null);
    item.setAttribute("data-key", key);
    item.appendChild(el("strong", null, label(key) + ": "));
    if (before === null && !belowText) {
      item.appendChild(el("span", "new", shown(key, after)));
      return item;
    }
    item.appendChild(el("span", "old", before === null ? belowText : shown(key, before)));
    item.appendChild(document.createTextNode(" → "));
    item.appendChild(el("span", "new", after === null && belowText ? belowText : shown(key, after)));
    return item;
  }

  function same(a, b) { return JSON.stringify(a) === JSON.stringify(b); }

  /* A threshold save: the overrides changed, and what changed on each dryer. */
  function thresholdChanges(entry) {
    var box = el("div", "changes");
    var old = entry.old || {};
    var change = entry.new || {};
    box.appendChild(el("p", null, t("audit.version_change", {
      old: old.version === undefined ? "–" : old.version, new: change.version })));
    var items = el("ul", null);
    Object.keys(change.changes || {}).forEach(function (key) {
      var pair = change.changes[key];
      items.appendChild(changeItem(key, pair[0], pair[1], t("audit.layer_below")));
    });
    if (!items.children.length) items.appendChild(el("li", "muted", t("audit.no_changes")));
    box.appendChild(items);
    var effective = change.effective_changes || {};
    Object.keys(effective).forEach(function (dryer) {
      box.appendChild(el("p", "muted", t("audit.effective_on", { dryer: dryer })));
      var dryerItems = el("ul", null);
      Object.keys(effective[dryer]).forEach(function (key) {
        var pair = effective[dryer][key];
        dryerItems.appendChild(changeItem(key, pair[0], pair[1]));
      });
      box.appendChild(dryerItems);
    });
    return box;
  }

  /* Any other change: every key whose value differs between old and new. */
  function genericChanges(entry) {
    var old = entry.old || {};
    var change = entry.new || {};
    var keys = [];
    Object.keys(old).concat(Object.keys(change)).forEach(function (key) {
      if (keys.indexOf(key) < 0) keys.push(key);
    });
    var items = el("ul", "changes");
    keys.forEach(function (key) {
      var before = Object.prototype.hasOwnProperty.call(old, key) ? old[key] : null;
      var after = Object.prototype.hasOwnProperty.call(change, key) ? change[key] : null;
      if (entry.old && entry.new && same(before, after)) return;
      items.appendChild(changeItem(key, before, after));
    });
    return items.children.length ? items : null;
  }

  function render(page) {
    list.textContent = "";
    total = page.total;
    if (!page.entries.length) list.appendChild(el("li", "muted", t("audit.empty")));
    page.entries.forEach(function (entry) {
      var item = el("li", "audit-entry");
      item.setAttribute("data-id", String(entry.id));
      item.setAttribute("data-action", entry.action);
      var head = el("div", "row-head");
      head.appendChild(el("time", null, C.dateTime(entry.at)));
      head.appendChild(el("strong", "actor", entry.actor));
      var actionKey = config.action_texts[entry.action];
      head.appendChild(el("span", "tag", actionKey ? t(actionKey) : entry.action));
      item.appendChild(head);
      item.appendChild(el("p", "target", t("audit.target", { target: entry.target })));
      if (entry.detail) item.appendChild(el("p", "quote", entry.detail));
      var changes = entry.action === config.threshold_action && entry.new && entry.new.changes
        ? thresholdChanges(entry) : genericChanges(entry);
      if (changes) item.appendChild(changes);
      list.appendChild(item);
    });
    count.textContent = total
      ? t("audit.showing", { first: page.offset + 1, last: page.offset + page.entries.length,
                             total: total })
      : "";
    newer.disabled = page.offset <= 0;
    older.disabled = page.offset + page.entries.length >= total;
  }

  function query() {
    var params = [["limit", LIMIT], ["offset", offset]];
    var actor = document.getElementById("f-actor").value.trim().toLowerCase();
    var action = document.getElementById("f-action").value;
    var target = document.getElementById("f-target").value.trim();
    var since = document.getElementById("f-since").value;
    var until = document.getElementById("f-until").value;
    if (since && until && since > until) return null;
    if (actor) params.push(["actor", actor]);
    if (action) params.push(["action", action]);
    if (target) params.push(["target", target]);
    if (since) params.push(["since", startOfDay(since)]);
    if (until) params.push(["until", startOfDay(until, 1)]);
    return params.map(function (pair) {
      return pair[0] + "=" + encodeURIComponent(String(pair[1]));
    }).join("&");
  }

  function load() {
    var q = query();
    if (q === null) { showError(t("audit.error_dates")); return Promise.resolve(); }
    showError("");
    return C.api("/api/audit?" + q).then(render, function (error) {
      showError(t("common.error", { detail: error.message }));
    });
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    offset = 0;
    load();
  });
  form.addEventListener("reset", function () {
    offset = 0;
    setTimeout(load, 0);  // after the browser has emptied the fields
  });
  newer.addEventListener("click", function () { offset = Math.max(0, offset - LIMIT); load(); });
  older.addEventListener("click", function () { offset += LIMIT; load(); });
  load();
})();
