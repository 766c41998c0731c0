// The scale engine's panel (#/engine): start, steer and stop the engine's simulated fleet
// through /engine, inject faults, and chart its figures over the last few minutes.
//
// The figures are pushed, not polled: while the panel is shown it holds its own stream,
// GET /events?engine=true, whose first `engine` event carries the points the gateway sampled
// over the last five minutes (so a panel opened mid-run draws them at once) and whose next ones
// bring one new point a second while the engine runs. The gateway samples the engine once for
// every open panel; a poll of GET /engine/status would sample it once per panel and start each
// panel with empty charts. Every write goes through Edgetwin.request (the tab's API token); an
// error's reason is shown as text next to the control that caused it.
"use strict";

(function () {
  const WINDOW_S = 300; // the charts' time span: the points the gateway keeps
  const { el, lineChart, formatNumber, request } = window.Edgetwin;
  // The figures drawn, each with its lines (a point's fields) and the unit of its y axis.
  const CHARTS = [
    {
      id: "rate",
      title: "rate",
      unit: "/s",
      lines: [
        ["target", "target (readings/s the schedule asks)"],
        ["scheduled", "scheduled (ticks/s served)"],
        ["delivered", "delivered (messages/s)"],
      ],
    },
    {
      id: "lateness",
      title: "lateness",
      unit: "ms",
      lines: [
        ["p50_ms", "p50"],
        ["p99_ms", "p99"],
      ],
    },
    { id: "skipped", title: "skipped ticks", unit: "/s", lines: [["skipped", "skipped/s"]] },
  ];
  // The order of a point's fields on the wire (gateway/live.py EnginePoint, array_like).
  const POINT_FIELDS = ["t", "state", "target", "scheduled", "delivered", "p50_ms", "p99_ms", "skipped"];
  const STATES = { stopped: "stopped", starting: "starting", running: "running", paused: "paused" };

  const $ = (id) => document.getElementById(id);
  const state = {
    source: null,
    points: [], // {t, state, target, ...}, oldest first
    every: 1,
    status: null,
    faultParams: {},
  };

  function shown() {
    return location.hash === "#/engine";
  }

  function route() {
    const view = $("engine-view");
    view.hidden = !shown();
    $("engine-link").classList.toggle("current", shown());
    if (shown() && !state.source) connect();
    if (!shown() && state.source) {
      // A hidden panel keeps no stream open on the gateway.
      state.source.close();
      state.source = null;
    }
  }

  function connect() {
    const source = new EventSource("events?engine=true");
    state.source = source;
    source.addEventListener("engine", (message) => {
      if (state.source === source) onEngine(JSON.parse(message.data));
    });
    source.addEventListener("error", () => {
      // EventSource retries by itself unless the answer was not a stream at all.
      if (source.readyState === EventSource.CLOSED && state.source === source) {
        setTimeout(() => state.source === source && shown() && connect(), 2000);
      }
    });
  }

  function onEngine(data) {
    if (data.fault_types) setFaultTypes(data.fault_types, data.fault_params || {});
    if (data.every) state.every = data.every;
    const fresh = (data.points || []).map((row) =>
      Object.fromEntries(POINT_FIELDS.map((name, i) => [name, row[i]])),
    );
    if (data.fault_types) {
      state.points = fresh; // a (re)connection's first event: the gateway's whole window
    } else {
      const end = state.points.length ? state.points[state.points.length - 1].t : -Infinity;
      state.points.push(...fresh.filter((p) => p.t > end));
    }
    const horizon = (state.points.length ? state.points[state.points.length - 1].t : 0) - WINDOW_S;
    while (state.points.length && state.points[0].t < horizon) state.points.shift();
    if (data.status) renderStatus(data.status);
    renderCharts();
  }

  function renderStatus(status) {
    state.status = status;
    const badge = $("engine-state");
    const name = Object.prototype.hasOwnProperty.call(STATES, status.state) ? status.state : "stopped";
    badge.textContent = name;
    badge.dataset.state = name;
    const parts = [];
    if (name !== "stopped") {
      parts.push(status.devices + (status.devices === 1 ? " device" : " devices"));
      parts.push(status.streams + " streams");
      parts.push(status.workers ? status.workers + " worker processes" : "in the gateway's process");
      parts.push("rate ×" + formatNumber(status.rate));
      parts.push("QoS " + status.qos + ", " + status.payload + " payload");
      if (status.fleet && status.fleet !== "api") parts.push("started by the " + status.fleet);
    } else {
      parts.push("not running");
    }
    parts.push(status.sent + " messages sent");
    parts.push(status.late_skipped + status.backlog_skipped + " ticks skipped");
    if (status.lost) parts.push(status.lost + " lost");
    const errors = (status.per_worker || []).map((w) => w.error).filter(Boolean);
    if (errors.length) parts.push("errors: " + errors.join("; "));
    $("engine-summary").textContent = parts.join(" · ");
    if (name !== "stopped") {
      follow("engine-size", status.devices);
      follow("engine-rate", status.rate);
    }
  }

  // An input that shows the engine's current value until the operator types another one.
  function follow(id, value) {
    const input = $(id);
    const text = String(value);
    if (input.value === "" || input.value === input.dataset.shown || input.value === text) {
      input.value = text;
      input.dataset.shown = text;
    }
  }

  function renderCharts() {
    const ts = state.points.map((p) => p.t);
    const end = ts.length ? ts[ts.length - 1] : Date.now() / 1000;
    const figures = CHARTS.map((spec) => {
      const figure = el("figure", "chart engine-chart");
      figure.dataset.chart = spec.id;
      const caption = el("figcaption");
      caption.append(el("b", null, spec.title));
      const last = state.points[state.points.length - 1];
      for (const [name, text] of spec.lines) {
        const key = el("span", "key key-" + name, text);
        const value = last ? last[name] : null;
        if (typeof value === "number") key.append(el("b", null, " " + formatNumber(value)));
        caption.append(key);
      }
      const lines = spec.lines.map(([name]) => ({ name, values: state.points.map((p) => p[name]) }));
      figure.append(
        caption,
        lineChart(ts, lines, {
          unit: spec.unit,
          // A run younger than the window fills the width: the axis' times say how long.
          start: ts.length ? Math.max(ts[0], end - WINDOW_S) : end - WINDOW_S,
          end,
          gap: 3 * state.every,
          width: 480, // three figures abreast on a wide screen
        }),
      );
      return figure;
    });
    $("engine-charts").replaceChildren(...figures);
  }

  function setFaultTypes(types, params) {
    const select = $("engine-fault-type");
    if (select.options.length) return;
    state.faultParams = params;
    select.replaceChildren(...types.map((type) => el("option", null, type)));
    faultParamField();
  }

  // The chosen fault type's own parameter (spike: magnitude...), blank for its default.
  function faultParamField() {
    const param = state.faultParams[$("engine-fault-type").value];
    $("engine-fault-param-label").hidden = !param;
    if (param) {
      $("engine-fault-param-name").textContent = param[0];
      $("engine-fault-param").placeholder = "default " + param[1];
    }
  }

  function note(id, result, success) {
    const node = $(id);
    node.dataset.kind = result.ok ? "ok" : "error";
    node.textContent = result.ok ? success || "" : "HTTP " + result.status + ": " + result.reason;
  }

  // A number from an input, or undefined when it is blank: the gateway then says what it
  // takes rather than the page guessing.
  function number(id) {
    const text = $(id).value.trim();
    return text === "" ? undefined : Number(text);
  }

  async function write(noteId, method, url, body, success) {
    const result = await request(method, url, body === undefined ? {} : { body });
    note(noteId, result, result.ok ? success(result.body) : "");
    if (result.ok && result.body) renderStatus(result.body.engine || result.body);
    return result;
  }

  function start() {
    const scenario = $("engine-scenario").value.trim();
    const body = scenario
      ? { scenario }
      : { devices: number("engine-devices"), interval: number("engine-interval") };
    return write("engine-start-note", "POST", "engine/start", body, (s) =>
      "started " + s.devices + " devices",
    );
  }

  function injectFault() {
    const type = $("engine-fault-type").value;
    const body = {
      type,
      devices: $("engine-fault-devices").value.trim(),
      duration: number("engine-fault-duration"),
    };
    const param = state.faultParams[type];
    const value = number("engine-fault-param");
    if (param && value !== undefined) body[param[0]] = value;
    return write("engine-fault-note", "POST", "engine/faults", body, (r) =>
      "injected " + r.fault.id + " on " + [].concat(r.fault.devices).join(", "),
    );
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("engine-start").addEventListener("click", start);
    const run = (verb) => () =>
      write("engine-run-note", "POST", "engine/" + verb, undefined, (s) => s.state);
    $("engine-pause").addEventListener("click", run("pause"));
    $("engine-resume").addEventListener("click", run("resume"));
    $("engine-stop").addEventListener("click", run("stop"));
    $("engine-resize").addEventListener("click", () =>
      write("engine-steer-note", "PUT", "engine/size", { devices: number("engine-size") }, (s) =>
        "now " + s.devices + " devices",
      ),
    );
    $("engine-set-rate").addEventListener("click", () =>
      write(
        "engine-steer-note",
        "PUT",
        "engine/rate",
        { multiplier: number("engine-rate") },
        (s) => "rate ×" + formatNumber(s.rate),
      ),
    );
    $("engine-fault-type").addEventListener("change", faultParamField);
    $("engine-inject").addEventListener("click", injectFault);
    window.addEventListener("hashchange", route);
    window.addEventListener("pagehide", () => {
      if (state.source) state.source.close();
      state.source = null;
    });
    window.addEventListener("pageshow", (event) => {
      if (event.persisted) route();
    });
    route();
  });
})();
