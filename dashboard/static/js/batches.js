/* The batch list: the server put the filters into config.api_query (GET /api/batches
   parameters); this fetches one page of batches, newest first, and draws them as cards with
   paging links and, for managers, check boxes to compare 2-4 batches. */
(function () {
  "use strict";
  var C = window.Cacao;
  var t = C.t;
  var config = C.config;
  var list = document.getElementById("batches");
  var status = document.getElementById("list-status");
  var template = document.getElementById("batch-template");
  var compareButton = document.getElementById("compare-button");
  var compareHint = document.getElementById("compare-hint");
  var MAX_COMPARE = 4;

  function say(text) { status.textContent = text || ""; }

  function field(item, name) { return item.querySelector('[data-field="' + name + '"]'); }

  function moistureLine(batch) {
    var parts = [];
    if (batch.initial_moisture_pct_wb !== null) parts.push(C.measure("bean_moisture_pct_wb", batch.initial_moisture_pct_wb, 1));
    if (batch.final_moisture_pct_wb !== null) parts.push(C.measure("bean_moisture_pct_wb", batch.final_moisture_pct_wb, 1));
    if (!parts.length) return "";
    return t("batches.list_moisture", { moisture: parts.join(" → ") });
  }

  function row(batch) {
    var item = template.content.firstElementChild.cloneNode(true);
    item.setAttribute("data-batch", batch.batch_id);
    item.setAttribute("data-running", String(batch.running));
    var link = field(item, "link");
    link.href = "/batches/" + encodeURIComponent(batch.batch_id);
    link.textContent = batch.lot_code;
    var state = field(item, "state");
    state.textContent = batch.running ? t("batches.state_running") : t("batches.state_ended");
    state.setAttribute("data-state", batch.running ? "running" : "ended");
    field(item, "producer").textContent = batch.producer || t("batches.no_producer");
    var key = batch.site_id + "/" + batch.node_id;
    field(item, "dryer").textContent = config.dryer_names[key] || batch.node_id;
    field(item, "dates").textContent = C.dateTime(batch.started_at) + " – " +
      (batch.ended_at ? C.dateTime(batch.ended_at) : t("batches.state_running"));
    field(item, "duration").textContent = C.number(batch.duration_h, 1) + "\u00a0h";
    field(item, "moisture").textContent = moistureLine(batch);
    var pick = field(item, "pick");
    if (pick) {
      pick.value = batch.batch_id;
      pick.addEventListener("change", updateCompare);
    }
    return item;
  }

  function updateCompare() {
    if (!compareButton) return;
    var picked = list.querySelectorAll('input[name="ids"]:checked').length;
    compareButton.disabled = picked < 2 || picked > MAX_COMPARE;
    compareHint.textContent = picked ? t("batches.compare_picked", { count: picked }) : t("batches.compare_hint");
  }

  /* A link to page `number` with the same filters (the page's own address). */
  function pageLink(anchor, number, enabled) {
    var params = new URLSearchParams(location.search);
    params.set("page", String(number));
    anchor.href = "/batches?" + params.toString();
    anchor.setAttribute("aria-disabled", enabled ? "false" : "true");
    if (!enabled) anchor.removeAttribute("href");
  }

  function load() {
    var size = config.page_size;
    var number = config.page_number;
    var query = (config.api_query ? config.api_query + "&" : "") +
      "limit=" + size + "&offset=" + (number - 1) * size;
    return C.api("/api/batches?" + query).then(function (page) {
      list.textContent = "";
      page.items.forEach(function (batch) { list.appendChild(row(batch)); });
      var pages = Math.max(1, Math.ceil(page.total / size));
      if (!page.total) say(t("batches.list_empty"));
      else if (page.total === 1) say(t("batches.list_count_one"));
      else say(t("batches.list_count", { count: page.total }));
      var pager = document.getElementById("pager");
      pager.hidden = pages <= 1;
      document.getElementById("page-info").textContent = t("batches.page_of", { page: number, pages: pages });
      pageLink(document.getElementById("page-prev"), number - 1, number > 1);
      pageLink(document.getElementById("page-next"), number + 1, number < pages);
      updateCompare();
    }, function (error) {
      say(t("common.error", { detail: error.message }));
    });
  }

  if (!config.filter_error) load();
})();
