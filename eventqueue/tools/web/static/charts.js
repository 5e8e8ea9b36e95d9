// eventqueue dashboard: live numbers and sparklines, polled from the JSON endpoint. No
// dependencies: the charts are inline SVG polylines, redrawn on every reading.
"use strict";
(function () {
  var script = document.currentScript;
  var api = script.dataset.api;
  var EVERY_MS = 2000;

  function lookup(data, path) {
    return path.split(".").reduce(function (v, k) { return v == null ? null : v[k]; }, data);
  }

  function age(seconds) {
    if (seconds == null) return "-";
    if (seconds < 1) return (seconds * 1000).toFixed(0) + " ms";
    if (seconds < 120) return seconds.toFixed(1) + " s";
    return (seconds / 60).toFixed(1) + " min";
  }

  function numbers(data) {
    document.querySelectorAll("[data-field]").forEach(function (el) {
      var value = lookup(data, el.dataset.field);
      if (el.dataset.age) { el.textContent = age(value); }
      else if (value != null) { el.textContent = String(value); }
      else if (el.dataset.field === "stats.spill.total") { el.textContent = "0"; }
    });
    var updated = document.getElementById("updated");
    if (updated) updated.textContent = "read " + data.at;
  }

  function draw(svg, history) {
    var names = svg.dataset.series.split(" ");
    var width = 300, height = 80, top = 10;
    var values = [];
    names.forEach(function (n) { history.forEach(function (p) { if (p[n] != null) values.push(p[n]); }); });
    var max = Math.max.apply(null, values.concat([1e-9]));
    var t0 = history.length ? history[0].at : 0, t1 = history.length ? history[history.length - 1].at : 1;
    var span = Math.max(t1 - t0, 1);
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    var drawn = 0;
    names.forEach(function (n, i) {
      var pts = [];
      history.forEach(function (p) {
        if (p[n] == null) return;
        var x = ((p.at - t0) / span) * width;
        var y = height - (p[n] / max) * (height - top);
        pts.push(x.toFixed(1) + "," + y.toFixed(1));
      });
      drawn = Math.max(drawn, pts.length);
      var line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
      line.setAttribute("class", "s" + i);
      line.setAttribute("points", pts.join(" "));
      svg.appendChild(line);
    });
    var label = document.createElementNS("http://www.w3.org/2000/svg", "text");
    label.setAttribute("x", "2"); label.setAttribute("y", "9");
    label.textContent = "max " + (Math.round(max * 1000) / 1000);
    svg.appendChild(label);
    svg.dataset.points = String(drawn);
  }

  function show(data) {
    numbers(data);
    document.querySelectorAll("svg.chart").forEach(function (svg) { draw(svg, data.history); });
  }

  function poll() {
    fetch(api, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { if (!r.ok) throw new Error(r.status); return r.json(); })
      .then(show)
      .catch(function (e) { var u = document.getElementById("updated"); if (u) u.textContent = "update failed: " + e; })
      .then(function () { setTimeout(poll, EVERY_MS); });
  }

  show(JSON.parse(document.getElementById("first-reading").textContent));
  setTimeout(poll, EVERY_MS);
})();
