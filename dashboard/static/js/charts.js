/* Line charts for the batch pages on top of the vendored uPlot: axes in the user's locale and
   the site's zone, reference lines (dashed), measurement points (circles), resizing with the
   window. The data are what the API gives, already averaged on the server. */
(function () {
  "use strict";
  var C = window.Cacao;
  var HEIGHT = 190;
  var dayFormat = C.timeFormat({ month: "short", day: "numeric" });
  var hourFormat = C.timeFormat({ hour: "2-digit", minute: "2-digit" });
  var charts = [];

  /* Decimals a tick needs so neighbouring ticks differ (0.5 steps → 1 decimal). */
  function decimals(increment) {
    return Math.max(0, Math.min(2, Math.ceil(-Math.log10(increment || 1) - 1e-9)));
  }

  function yAxis() {
    return { size: 50, values: function (u, splits, axis, space, increment) {
      var digits = decimals(increment);
      return splits.map(function (v) { return C.number(v, digits); });
    } };
  }

  /* One uPlot series from a line spec {label, stroke, dash, points}. */
  function series(line) {
    var s = { label: line.label, stroke: line.stroke, width: line.width || 2, spanGaps: true };
    if (line.dash) s.dash = line.dash;
    if (line.points) {
      s.width = 0;
      s.paths = function () { return null; };
      s.points = { show: true, size: 9, width: 2, stroke: line.stroke, fill: "#fff" };
    } else {
      s.points = { show: false };
    }
    return s;
  }

  function make(box, spec, xAxis, scaleX) {
    var lines = spec.lines;
    var options = {
      title: spec.title,
      width: box.clientWidth || 320, height: spec.height || HEIGHT,
      cursor: { drag: { x: false, y: false } },
      legend: { show: false },   // phones have no hover: titles and the page's legend name the lines
      scales: { x: scaleX },
      series: [{}].concat(lines.map(series)),
      axes: [xAxis, yAxis()]
    };
    if (scaleX.time) {
      options.tzDate = function (ts) { return uPlot.tzDate(new Date(ts * 1e3), C.config.zone); };
    }
    var data = [spec.x].concat(lines.map(function (line) { return line.values; }));
    box.textContent = "";
    var chart = new uPlot(options, data, box);
    box.setAttribute("data-drawn", "true");
    box.setAttribute("data-points", String(spec.x.length));
    charts.push({ chart: chart, box: box, height: options.height });
    return chart;
  }

  /* A chart against time: spec.x in seconds since 1970. */
  function timeChart(box, spec) {
    var span = spec.x.length ? spec.x[spec.x.length - 1] - spec.x[0] : 0;
    var format = span > 36 * 3600 ? dayFormat : hourFormat;
    var xAxis = { space: 70, values: function (u, splits) {
      return splits.map(function (s) { return format.format(new Date(s * 1000)); });
    } };
    return make(box, spec, xAxis, { time: true });
  }

  /* A chart against hours since a start (comparisons): spec.x in hours. */
  function hoursChart(box, spec) {
    var xAxis = { space: 60, values: function (u, splits, axis, space, increment) {
      var digits = decimals(increment);
      return splits.map(function (v) { return C.number(v, digits) + "\u00a0h"; });
    } };
    return make(box, spec, xAxis, { time: false });
  }

  /* Merge several (x, y) lists onto one sorted x axis, as uPlot wants: null where a line has
     no value at that x. */
  function align(lists) {
    var xs = {};
    lists.forEach(function (list) { list.x.forEach(function (x) { xs[x] = true; }); });
    var x = Object.keys(xs).map(Number).sort(function (a, b) { return a - b; });
    var index = {};
    x.forEach(function (value, i) { index[value] = i; });
    var values = lists.map(function (list) {
      var row = new Array(x.length).fill(null);
      list.x.forEach(function (value, i) { row[index[value]] = list.y[i]; });
      return row;
    });
    return { x: x, values: values };
  }

  /* A horizontal line at `level` across `x`. */
  function level(x, value) {
    return x.map(function () { return value; });
  }

  window.addEventListener("resize", C.debounce(function () {
    charts.forEach(function (item) {
      if (item.box.isConnected) item.chart.setSize({ width: item.box.clientWidth, height: item.height });
    });
  }, 200));

  window.Charts = { timeChart: timeChart, hoursChart: hoursChart, align: align, level: level,
                    decimals: decimals };
})();
