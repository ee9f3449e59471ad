/* Shared by every page: texts, number and time formats, the JSON API, the live stream.
   No framework and no build step: plain ES2017 that a cheap Android phone runs. */
(function () {
  "use strict";

  var config = JSON.parse(document.getElementById("page-config").textContent);
  var catalog = config.catalog;
  var CSRF_KEY = "cacao_csrf";

  /* The text for a key, with {name} parameters filled in. */
  function t(key, params) {
    var text = Object.prototype.hasOwnProperty.call(catalog, key) ? catalog[key] : key;
    if (!params) return text;
    return text.replace(/\{([a-z_][a-z0-9_]*)\}/g, function (all, name) {
      return Object.prototype.hasOwnProperty.call(params, name) ? String(params[name]) : all;
    });
  }

  var numberFormats = {};
  /* A number in the user's locale with `digits` decimals; "–" when missing. */
  function number(value, digits) {
    if (value === null || value === undefined || !isFinite(value)) return "–";
    digits = digits === undefined ? 1 : digits;
    var format = numberFormats[digits];
    if (!format) {
      format = numberFormats[digits] = new Intl.NumberFormat(config.locale, {
        minimumFractionDigits: digits, maximumFractionDigits: digits });
    }
    return format.format(value);
  }

  /* A measurement with its unit: "47.5 °C". */
  function measure(key, value, digits) {
    var m = config.measurements[key];
    var unit = m ? m.unit : "";
    var text = number(value, digits);
    return text === "–" || !unit ? text : text + "\u00a0" + unit;
  }

  /* Put a measurement in an element: the number, then its unit in a smaller type (always
     shown, also when the value is missing). */
  function showMeasure(element, key, value, digits) {
    var m = config.measurements[key];
    element.textContent = number(value, digits);
    if (m && m.unit) {
      var unit = document.createElement("small");
      unit.className = "unit";
      unit.textContent = "\u00a0" + m.unit;
      element.appendChild(unit);
    }
  }

  function label(key) {
    var m = config.measurements[key];
    return m ? m.label : key;
  }

  /* Times in the site's zone, the language's way (its catalog says 24 or 12 hours). */
  function timeFormat(options) {
    options.timeZone = config.zone;
    if (options.hour) options.hourCycle = config.hour_cycle;
    return new Intl.DateTimeFormat(config.locale, options);
  }
  var clockFormat = timeFormat({ hour: "2-digit", minute: "2-digit", second: "2-digit" });
  var dateTimeFormat = timeFormat({ year: "numeric", month: "short", day: "numeric",
                                    hour: "2-digit", minute: "2-digit" });
  var shortFormat = timeFormat({ month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });

  function toDate(value) { return value instanceof Date ? value : new Date(value); }
  function time(value) { return value ? clockFormat.format(toDate(value)) : "–"; }
  function dateTime(value) { return value ? dateTimeFormat.format(toDate(value)) : "–"; }
  function shortDateTime(value) { return value ? shortFormat.format(toDate(value)) : "–"; }

  /* Call the JSON API. Sends the CSRF token on changes; a lost login goes to the login page
     (unless `quiet`; `allowAnonymous` is for the login itself: no token, no redirect).
     Rejects with an Error whose message is the API's one-line `detail` and `status`.
     Once logging out began, no call goes out and the ones under way are aborted (each would
     come back 401 and race the logout to the login page); `whileLeaving` is the logout's. */
  var inFlight = [];   /* AbortControllers of the calls under way */
  function api(path, options) {
    options = options || {};
    if (leaving && !options.whileLeaving) return Promise.reject(new Error("logging out"));
    var controller = new AbortController();
    if (!options.whileLeaving) inFlight.push(controller);
    function done() {
      var at = inFlight.indexOf(controller);
      if (at >= 0) inFlight.splice(at, 1);
    }
    var headers = { "Accept": "application/json" };
    var init = { method: options.method || "GET", headers: headers, credentials: "same-origin",
                 signal: controller.signal };
    if (options.body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(options.body);
    }
    var ready = init.method === "GET" || options.allowAnonymous ? Promise.resolve(null) : csrfToken();
    return ready.then(function (token) {
      if (token) headers["X-CSRF-Token"] = token;
      return fetch(path, init);
    }).then(function (response) {
      if (response.status === 401 && !options.allowAnonymous && !options.quiet) {
        toLogin();
        throw new Error(response.statusText);
      }
      return response.text().then(function (text) {
        var data = null;
        try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
        if (!response.ok) {
          var error = new Error((data && data.detail) || response.status + " " + response.statusText);
          error.status = response.status;
          throw error;
        }
        return data;
      });
    }).then(function (data) { done(); return data; },
            function (error) { done(); throw error; });
  }

  /* The session's CSRF token: kept from the login answer, or asked for again (a new tab). */
  function csrfToken() {
    var token = sessionStorage.getItem(CSRF_KEY);
    if (token) return Promise.resolve(token);
    return fetch("/api/auth/me", { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (me) {
        if (me && me.csrf_token) sessionStorage.setItem(CSRF_KEY, me.csrf_token);
        return me ? me.csrf_token : null;
      }, function () { return null; });
  }

  /* This browser speaks `code` from now on (the cookie the server reads). */
  function rememberLanguage(code) {
    document.cookie = "cacao_lang=" + encodeURIComponent(code) + "; path=/; max-age=31536000; samesite=lax";
  }

  var leaving = false;   /* logging out: no other navigation, no more requests */
  var streams = [];      /* open live streams, closed at logout */

  function toLogin() {
    if (leaving) return;
    var here = location.pathname + location.search;
    location.assign("/login?next=" + encodeURIComponent(here));
  }

  /* The live stream (/api/live): EventSource reconnects by itself after network errors and
     sends Last-Event-ID; on top of that a watchdog reopens a stream that went silent (no
     heartbeat for config.live_watchdog_ms: a half-open connection on a phone) and a stream
     the server refused (EventSource gives up on an HTTP error). `handlers.resync` runs on
     every `resync` event: fetch the whole picture again. */
  function live(query, handlers) {
    var source = null;
    var watchdog = null;
    var retry = null;
    var indicator = document.getElementById("live-state");
    if (indicator) indicator.hidden = false;

    function show(state) {
      if (!indicator) return;
      indicator.setAttribute("data-state", state);
      indicator.textContent = t(state === "on" ? "live.on" : state === "off" ? "live.off" : "live.connecting");
    }
    function arm() {
      clearTimeout(watchdog);
      watchdog = setTimeout(reopen, config.live_watchdog_ms);
    }
    function reopen() {
      if (source) source.close();
      source = null;
      open();
    }
    function listen(kind) {
      source.addEventListener(kind, function (event) {
        arm();
        show("on");
        var handler = handlers[kind];
        if (handler) handler(JSON.parse(event.data));
      });
    }
    function open() {
      clearTimeout(retry);
      show("connecting");
      source = new EventSource("/api/live" + (query || ""));
      source.addEventListener("open", function () { arm(); show("on"); });
      ["reading", "status", "event", "alert", "resync", "heartbeat"].forEach(listen);
      source.addEventListener("error", function () {
        show("off");
        if (source && source.readyState === EventSource.CLOSED) {
          clearTimeout(watchdog);
          retry = setTimeout(open, 5000);
        }
      });
    }
    open();
    var stream = { close: function () { clearTimeout(watchdog); clearTimeout(retry); if (source) source.close(); } };
    streams.push(stream);
    return stream;
  }

  /* Run `fn` once, `ms` after the last call (many live events → one refetch). */
  function debounce(fn, ms) {
    var timer = null;
    return function () { clearTimeout(timer); timer = setTimeout(fn, ms); };
  }

  function element(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  /* A dryer's event as a list item: its time, its type in words (and the alarm it names),
     the node's own message. Shared by the dryer and batch pages. */
  function eventItem(event) {
    var item = element("li", "event");
    item.setAttribute("data-type", event.type);
    item.appendChild(element("time", "", shortDateTime(event.occurred_at)));
    var alarm = event.data && typeof event.data.alarm === "string" ? event.data.alarm : null;
    item.appendChild(element("strong", "", t("event." + event.type) + (alarm ? ": " + t("alarm." + alarm) : "")));
    if (event.message) item.appendChild(element("span", "muted", event.message));
    return item;
  }

  /* The language switch: a logged-in user's choice is saved with the account too, so it
     follows them to another phone; the link itself sets this browser's cookie. */
  document.querySelectorAll(".languages a[hreflang]").forEach(function (link) {
    link.addEventListener("click", function (event) {
      if (!document.getElementById("logout")) return;  // nobody logged in: the link is enough
      event.preventDefault();
      api("/api/auth/me", { method: "PATCH", quiet: true,
                            body: { language: link.getAttribute("hreflang") } })
        .catch(function () { return null; })
        .then(function () { location.assign(link.href); });
    });
  });

  var logout = document.getElementById("logout");
  if (logout) {
    logout.addEventListener("click", function () {
      /* Close the live streams first: once the session ends they would answer 401 and race
         this page to the login page (with a ?next= of their own). */
      leaving = true;
      streams.forEach(function (stream) { stream.close(); });
      inFlight.splice(0).forEach(function (controller) { controller.abort(); });
      api("/api/auth/logout", { method: "POST", quiet: true, whileLeaving: true })
        .catch(function () { return null; })
        .then(function () { sessionStorage.removeItem(CSRF_KEY); location.assign("/login"); });
    });
  }

  window.Cacao = {
    config: config, t: t, number: number, measure: measure, showMeasure: showMeasure,
    label: label, time: time,
    dateTime: dateTime, shortDateTime: shortDateTime, timeFormat: timeFormat, api: api, live: live,
    debounce: debounce, element: element, eventItem: eventItem, rememberLanguage: rememberLanguage, CSRF_KEY: CSRF_KEY
  };
})();
