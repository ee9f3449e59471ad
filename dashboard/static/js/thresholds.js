/* The technicians' threshold page: profiles with their current version, an editor explaining
   every value, and which dryer runs which config version.
   Everything comes from the JSON API (schema, profiles, nodes, rollout); a save is
   PUT /api/thresholds/profiles with the CSRF token. The rollout follows the live stream
   (config_applied / config_rejected events), a refresh button and a refetch every 30 s. */
(function () {
  "use strict";
  var C = window.Cacao;
  var t = C.t;
  var el = C.element;
  var config = C.config;
  var ROLLOUT_REFRESH_MS = 30000;
  var STATE_KEYS = {
    applied: "thresholds.state_applied", pending: "thresholds.state_pending",
    unpublished: "thresholds.state_unpublished", rejected: "thresholds.state_rejected",
    unmanaged: "thresholds.state_unmanaged"
  };
  var STAGE_KEYS = { "": "thresholds.every_stage", early: "thresholds.stage_early",
                     main: "thresholds.stage_main" };
  var BEHIND = { pending: 1, unpublished: 1, rejected: 1 };

  var fields = [];        // the schema's fields, in the contract's order
  var byName = {};        // field name → schema field
  var profiles = [];      // GET /api/thresholds/profiles
  var nodes = [];         // GET /api/nodes
  var editing = null;     // {scope, profile (detail or null), values (its overrides), rows}

  var status = document.getElementById("thr-status");
  var profileList = document.getElementById("profiles");
  var siteSelect = document.getElementById("scope-site");
  var nodeSelect = document.getElementById("scope-node");
  var stageSelect = document.getElementById("scope-stage");
  var editor = document.getElementById("editor");
  var fieldBox = document.getElementById("fields");
  var editorError = document.getElementById("editor-error");
  var reviewBox = document.getElementById("review-box");
  var changeList = document.getElementById("changes");
  var comment = document.getElementById("comment");
  var rolloutList = document.getElementById("rollout-list");
  var rolloutUpdated = document.getElementById("rollout-updated");

  function say(text, kind) {
    status.textContent = text || "";
    status.hidden = !text;
    status.setAttribute("data-kind", kind || "info");
  }

  function name(field) { return t(config.field_texts[field].name); }
  function unitOf(field) { return config.field_units[field] || ""; }

  /* A threshold value as people write it: no needless decimals, the unit after it. */
  function value(field, v) {
    if (v === null || v === undefined) return t("thresholds.layer_below");
    var digits = Number.isInteger(v) ? 0 : Math.round(v * 10) === v * 10 ? 1 : 2;
    return C.number(v, digits) + "\u00a0" + unitOf(field);
  }

  /* The input's step: whole hours of the day and seconds in ones, the rest in tenths (any
     value in range is accepted: the step only guides the phone's number keys). */
  function step(field) { return field.type === "integer" || field.unit === "s" ? 1 : 0.1; }

  /* The schema's source, with the project's own estimates said in the page's language. */
  function source(text) {
    var found = /^estimate(?: from (.+))?$/.exec(text);
    if (!found) return text;
    return found[1] ? t("thresholds.estimate_from", { sources: found[1] }) : t("thresholds.estimate");
  }

  function nodeName(siteId, nodeId) {
    for (var i = 0; i < nodes.length; i++) {
      if (nodes[i].site_id === siteId && nodes[i].node_id === nodeId) {
        return nodes[i].name || nodeId;
      }
    }
    return nodeId;
  }

  function scopeLabel(scope) {
    return t("thresholds.scope", {
      site: scope.site_id,
      dryer: scope.node_id ? nodeName(scope.site_id, scope.node_id) : t("thresholds.every_dryer"),
      stage: t(STAGE_KEYS[scope.stage || ""])
    });
  }

  function sameScope(profile, scope) {
    return profile.site_id === scope.site_id && (profile.node_id || "") === (scope.node_id || "")
      && (profile.stage || "") === (scope.stage || "");
  }

  /* --- profiles ------------------------------------------------------------------------- */

  function renderProfiles() {
    profileList.textContent = "";
    if (!profiles.length) {
      profileList.appendChild(el("li", "muted", t("thresholds.no_profiles")));
      return;
    }
    profiles.forEach(function (profile) {
      var item = el("li", "profile-row");
      item.setAttribute("data-profile", String(profile.profile_id));
      item.setAttribute("data-target", profile.target);
      var latest = profile.latest;
      var head = el("div", "row-head");
      head.appendChild(el("strong", null, scopeLabel(profile)));
      head.appendChild(el("span", "tag", latest ? t("thresholds.version", { version: latest.version })
                                                  : t("thresholds.no_version")));
      item.appendChild(head);
      if (latest) {
        var count = Object.keys(latest.values).length;
        item.appendChild(el("p", "muted", t("thresholds.saved_by", {
          user: latest.created_by, time: C.dateTime(latest.created_at) }) + " · " +
          t("thresholds.overrides", { count: count })));
        if (latest.comment) item.appendChild(el("p", "quote", latest.comment));
      }
      var edit = el("button", "tech-button secondary", t("thresholds.edit"));
      edit.type = "button";
      edit.addEventListener("click", function () {
        openEditor({ site_id: profile.site_id, node_id: profile.node_id || "",
                     stage: profile.stage || "" });
      });
      item.appendChild(edit);
      profileList.appendChild(item);
    });
  }

  function fillSites() {
    var sites = {};
    nodes.forEach(function (node) { sites[node.site_id] = 1; });
    profiles.forEach(function (profile) { sites[profile.site_id] = 1; });
    var chosen = siteSelect.value;
    siteSelect.textContent = "";
    Object.keys(sites).sort().forEach(function (site) {
      var option = el("option", null, site);
      option.value = site;
      siteSelect.appendChild(option);
    });
    if (chosen && sites[chosen]) siteSelect.value = chosen;
    fillNodes();
  }

  function fillNodes() {
    var chosen = nodeSelect.value;
    while (nodeSelect.options.length > 1) nodeSelect.remove(1);
    nodes.filter(function (node) { return node.site_id === siteSelect.value; })
      .forEach(function (node) {
        var option = el("option", null, node.name ? node.name + " (" + node.node_id + ")" : node.node_id);
        option.value = node.node_id;
        nodeSelect.appendChild(option);
      });
    nodeSelect.value = chosen;
    if (nodeSelect.value !== chosen) nodeSelect.value = "";
  }

  function loadProfiles() {
    return Promise.all([C.api("/api/thresholds/profiles"), C.api("/api/nodes")])
      .then(function (answers) {
        profiles = answers[0];
        nodes = answers[1];
        renderProfiles();
        fillSites();
      });
  }

  /* --- the editor ----------------------------------------------------------------------- */

  function openEditor(scope) {
    say("");
    var existing = profiles.filter(function (p) { return sameScope(p, scope); })[0];
    var detail = existing ? C.api("/api/thresholds/profiles/" + existing.profile_id)
                          : Promise.resolve(null);
    var effective = scope.node_id
      ? C.api("/api/nodes/" + encodeURIComponent(scope.site_id) + "/" +
              encodeURIComponent(scope.node_id) + "/thresholds")
      : Promise.resolve(null);
    return Promise.all([detail, effective]).then(function (answers) {
      var profile = answers[0];
      editing = { scope: scope, profile: profile,
                  values: profile && profile.latest ? profile.latest.values : {}, rows: {} };
      document.getElementById("editor-title").textContent = scopeLabel(scope);
      document.getElementById("editor-meta").textContent = profile && profile.latest
        ? t("thresholds.editing_version", { version: profile.latest.version,
                                            user: profile.latest.created_by,
                                            time: C.dateTime(profile.latest.created_at) })
        : t("thresholds.editing_new");
      buildRows(editing.values, answers[1]);
      renderHistory(profile);
      comment.value = "";
      editorError.hidden = true;
      reviewBox.hidden = true;
      editor.hidden = false;
      editor.setAttribute("data-target", scopeTarget(scope));
      editor.scrollIntoView({ block: "start" });
    }).catch(function (error) {
      say(t("common.error", { detail: error.message }), "error");
    });
  }

  function scopeTarget(scope) {
    return scope.site_id + "/" + (scope.node_id || "*") + "/" + (scope.stage || "*");
  }

  function buildRows(values, effective) {
    var template = document.getElementById("field-template");
    fieldBox.textContent = "";
    fields.forEach(function (field) {
      var row = template.content.firstElementChild.cloneNode(true);
      var id = "field-" + field.name;
      row.setAttribute("data-field", field.name);
      var label = row.querySelector(".field-name");
      label.textContent = name(field.name);
      label.htmlFor = id;
      row.querySelector(".field-why").textContent = t(config.field_texts[field.name].why);
      row.querySelector(".field-range").textContent = t("thresholds.range", {
        min: value(field.name, field.minimum), max: value(field.name, field.maximum) });
      row.querySelector(".field-default").textContent = t("thresholds.default", {
        value: value(field.name, field.default) });
      row.querySelector(".field-source").textContent = field.source
        ? t("thresholds.source", { source: source(field.source) }) : "";
      if (effective && effective.values[field.name]) {
        var now = effective.values[field.name];
        row.querySelector(".field-now").textContent = t("thresholds.now", {
          value: value(field.name, now.value), layer: now.source });
      }
      var input = row.querySelector("input");
      input.id = id;
      input.name = field.name;
      input.min = String(field.minimum);
      input.max = String(field.maximum);
      input.step = String(step(field));
      input.placeholder = t("thresholds.placeholder", { value: C.number(field.default,
        Number.isInteger(field.default) ? 0 : 1) });
      input.setAttribute("inputmode", step(field) >= 1 ? "numeric" : "decimal");
      if (Object.prototype.hasOwnProperty.call(values, field.name)) {
        input.value = String(values[field.name]);
      }
      row.querySelector(".field-unit").textContent = unitOf(field.name);
      input.addEventListener("input", function () {
        reviewBox.hidden = true;
        check(field.name);
      });
      row.querySelector(".field-clear").addEventListener("click", function () {
        input.value = "";
        reviewBox.hidden = true;
        check(field.name);
      });
      editing.rows[field.name] = row;
      fieldBox.appendChild(row);
      check(field.name);
    });
  }

  function showFieldError(fieldName, text) {
    var row = editing.rows[fieldName];
    var box = row.querySelector(".field-error");
    box.textContent = text || "";
    box.hidden = !text;
    row.classList.toggle("invalid", !!text);
    row.querySelector("input").setAttribute("aria-invalid", text ? "true" : "false");
  }

  /* One field: empty (the layer below decides) or a number in range; shows the problem next
     to the field. Returns {ok, value}. */
  function check(fieldName) {
    var field = byName[fieldName];
    var row = editing.rows[fieldName];
    var input = row.querySelector("input");
    var raw = input.value.trim();
    var problem = "";
    var number = null;
    row.querySelector(".field-layer").textContent = raw === "" && !input.validity.badInput
      ? t("thresholds.from_below") : t("thresholds.set_here");
    if (input.validity.badInput) {
      problem = t("thresholds.error_number");
    } else if (raw !== "") {
      number = Number(raw);
      if (!isFinite(number)) {
        problem = t("thresholds.error_number");
      } else if (number < field.minimum || number > field.maximum) {
        problem = t("thresholds.error_range", { min: value(fieldName, field.minimum),
                                                max: value(fieldName, field.maximum) });
      } else if (field.type === "integer" && !Number.isInteger(number)) {
        problem = t("thresholds.error_integer");
      }
    }
    showFieldError(fieldName, problem);
    return { ok: !problem, value: problem ? null : number };
  }

  function collect() {
    var values = {};
    var bad = [];
    fields.forEach(function (field) {
      var result = check(field.name);
      if (!result.ok) bad.push(field.name);
      else if (result.value !== null) values[field.name] = result.value;
    });
    return { values: values, bad: bad };
  }

  function showEditorError(text) {
    editorError.textContent = text || "";
    editorError.hidden = !text;
  }

  function review() {
    var collected = collect();
    if (collected.bad.length) {
      showEditorError(t("thresholds.error_fix", { count: collected.bad.length }));
      editing.rows[collected.bad[0]].querySelector("input").focus();
      reviewBox.hidden = true;
      return;
    }
    showEditorError("");
    changeList.textContent = "";
    var old = editing.values;
    var changed = 0;
    fields.forEach(function (field) {
      var before = Object.prototype.hasOwnProperty.call(old, field.name) ? old[field.name] : null;
      var after = Object.prototype.hasOwnProperty.call(collected.values, field.name)
        ? collected.values[field.name] : null;
      if (before === after) return;
      changed++;
      var item = el("li", null);
      item.setAttribute("data-field", field.name);
      item.appendChild(el("strong", null, name(field.name) + ": "));
      item.appendChild(el("span", "old", value(field.name, before)));
      item.appendChild(document.createTextNode(" → "));
      item.appendChild(el("span", "new", value(field.name, after)));
      changeList.appendChild(item);
    });
    if (!changed) changeList.appendChild(el("li", "muted", t("thresholds.no_changes")));
    document.getElementById("save").disabled = !changed;
    reviewBox.hidden = false;
    reviewBox.scrollIntoView({ block: "nearest" });
  }

  /* The server's one line, next to the field(s) it names (and above the buttons). */
  function showServerError(detail) {
    var found = /^values\.([a-z0-9_]+):/.exec(detail);
    var named = found && byName[found[1]] ? [found[1]] : fields.map(function (f) { return f.name; })
      .filter(function (fieldName) { return new RegExp("\\b" + fieldName + "\\b").test(detail); });
    named.forEach(function (fieldName) { showFieldError(fieldName, detail); });
    showEditorError(t("thresholds.error_server", { detail: detail }));
    if (named.length) editing.rows[named[0]].scrollIntoView({ block: "center" });
  }

  function save(event) {
    event.preventDefault();
    var collected = collect();
    if (collected.bad.length) { review(); return; }
    var scope = editing.scope;
    var body = { site_id: scope.site_id, values: collected.values, comment: comment.value };
    if (scope.node_id) body.node_id = scope.node_id;
    if (scope.stage) body.stage = scope.stage;
    var button = document.getElementById("save");
    button.disabled = true;
    C.api("/api/thresholds/profiles", { method: "PUT", body: body }).then(function (answer) {
      var version = answer.profile.latest ? answer.profile.latest.version : 0;
      var message = answer.created
        ? t("thresholds.saved", { version: version, count: answer.pushes.length })
        : t("thresholds.unchanged", { version: version });
      return loadProfiles().then(function () {
        loadRollout();
        return openEditor(scope);
      }).then(function () { say(message, "ok"); });
    }, function (error) {
      reviewBox.hidden = true;
      showServerError(error.message);
    }).then(function () { button.disabled = false; });
  }

  function renderHistory(profile) {
    var list = document.getElementById("history");
    list.textContent = "";
    var versions = profile ? profile.versions : [];
    if (!versions.length) { list.appendChild(el("li", "muted", t("thresholds.no_history"))); return; }
    versions.forEach(function (version) {
      var item = el("li", null);
      item.appendChild(el("strong", null, t("thresholds.version", { version: version.version })));
      item.appendChild(el("span", "muted", " · " + t("thresholds.saved_by", {
        user: version.created_by, time: C.dateTime(version.created_at) })));
      var shown = Object.keys(version.values).map(function (fieldName) {
        return (config.field_texts[fieldName] ? name(fieldName) : fieldName) + " = " +
          value(fieldName, version.values[fieldName]);
      });
      item.appendChild(el("p", null, shown.length ? shown.join("; ") : t("thresholds.only_defaults")));
      if (version.comment) item.appendChild(el("p", "quote", version.comment));
      list.appendChild(item);
    });
  }

  /* --- the rollout ---------------------------------------------------------------------- */

  function minutes(seconds) { return Math.max(0, Math.round(seconds / 60)); }

  function renderRollout(rows) {
    rolloutList.textContent = "";
    if (!rows.length) rolloutList.appendChild(el("li", "muted", t("thresholds.no_dryers")));
    rows.forEach(function (row) {
      var item = el("li", "rollout-row");
      item.setAttribute("data-node", row.site_id + "/" + row.node_id);
      item.setAttribute("data-state", row.state);
      item.setAttribute("data-desired", row.desired_version === null ? "" : String(row.desired_version));
      item.setAttribute("data-applied", row.applied_version === null ? "" : String(row.applied_version));
      if (BEHIND[row.state]) item.classList.add("behind");
      if (row.overdue) item.classList.add("overdue");
      var head = el("div", "row-head");
      head.appendChild(el("strong", null, nodeName(row.site_id, row.node_id)));
      head.appendChild(el("span", "muted", row.site_id + "/" + row.node_id + " · " +
                          t("state." + (row.node_state || "unknown"))));
      var badge = el("span", "tag state", t(STATE_KEYS[row.state] || row.state));
      head.appendChild(badge);
      item.appendChild(head);
      if (row.state !== "unmanaged") {
        item.appendChild(el("p", null, t("thresholds.versions", {
          desired: row.desired_version, applied: row.applied_version === null ? "–" : row.applied_version })));
      }
      var since = null;
      if (row.state === "applied") {
        since = t("thresholds.applied_since", { time: C.dateTime(row.applied_at) });
      } else if (row.state === "rejected") {
        since = t("thresholds.rejected_since", { time: C.dateTime(row.rejected_at),
                                                 message: row.node_message || "–" });
      } else if (row.state === "pending" || row.state === "unpublished") {
        since = t("thresholds.pending_since", { time: C.dateTime(row.issued_at),
                                                minutes: minutes(row.pending_s || 0) });
      } else {
        since = t("thresholds.unmanaged_help");
      }
      item.appendChild(el("p", null, since));
      if (row.overdue) item.appendChild(el("p", "warning", t("thresholds.overdue")));
      if (row.reason) {
        item.appendChild(el("p", "muted", t("thresholds.reason", {
          reason: row.reason, stage: t(STAGE_KEYS[row.stage || ""]) })));
      }
      rolloutList.appendChild(item);
    });
  }

  function loadRollout() {
    return C.api("/api/thresholds/rollout").then(function (rows) {
      renderRollout(rows);
      rolloutUpdated.textContent = t("thresholds.updated", { time: C.time(new Date()) });
    }).catch(function (error) {
      rolloutUpdated.textContent = t("common.error", { detail: error.message });
    });
  }

  /* --- wiring --------------------------------------------------------------------------- */

  siteSelect.addEventListener("change", fillNodes);
  document.getElementById("scope-form").addEventListener("submit", function (event) {
    event.preventDefault();
    if (!siteSelect.value) return;
    openEditor({ site_id: siteSelect.value, node_id: nodeSelect.value, stage: stageSelect.value });
  });
  document.getElementById("review").addEventListener("click", review);
  document.getElementById("cancel").addEventListener("click", function () {
    editor.hidden = true;
    editing = null;
  });
  document.getElementById("editor-form").addEventListener("submit", save);
  document.getElementById("rollout-refresh").addEventListener("click", loadRollout);

  C.api("/api/thresholds/schema").then(function (schema) {
    fields = schema.fields;
    fields.forEach(function (field) { byName[field.name] = field; });
    return loadProfiles();
  }).catch(function (error) {
    say(t("common.error", { detail: error.message }), "error");
  });

  var rolloutSoon = C.debounce(loadRollout, 300);
  C.live("", {
    resync: loadRollout,
    event: function (message) {
      if (message.type === "config_applied" || message.type === "config_rejected") rolloutSoon();
    }
  });
  setInterval(loadRollout, ROLLOUT_REFRESH_MS);
})();
