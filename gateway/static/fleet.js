// The fleet page. The table follows GET /events (Server-Sent Events): a snapshot of the page
// of devices the filter and pager select, then only the devices that changed. A device's own
// view (#/device/ID) draws its recent history (GET /devices/ID/history) as SVG charts and
// fetches what is new whenever the feed says the device changed.
// Every text from the network goes into the DOM through textContent (the `el` helper below);
// class names come from fixed tables, never from data.
"use strict";

(function () {
  const PAGE_SIZE = 100;
  const SPARK_POINTS = 60;
  const WATCHDOG_MS = 40000; // the gateway sends a comment every 15 s on a quiet stream

  const SOURCES = {
    "agent-hardware": ["real", "src-real"],
    "agent-emulation": ["emulated", "src-emulated"],
    simulation: ["simulated", "src-simulated"],
    none: ["none", "src-none"],
  };
  const {
    el,
    badge,
    lookup,
    formatNumber,
    age,
    isoTime,
    svg,
    titled,
    sourceClass,
    chart,
  } = window.Edgetwin;
  // A reading's source by its first letter in a sparkline's `s`.
  const LETTERS = { r: "real", e: "emulated", s: "simulated" };
  const PRESENCE = {
    online: "presence-online",
    offline: "presence-offline",
    unknown: "presence-unknown",
  };
  const CONFIG = {
    in_sync: ["in sync", "cfg-in_sync"],
    pending: ["pending", "cfg-pending"],
    rejected: ["rejected", "cfg-rejected"],
    no_desired: ["no desired", "cfg-no_desired"],
  };
  const HEALTH = { ok: "health-ok", faulted: "health-faulted", missing: "health-missing" };

  const $ = (id) => document.getElementById(id);
  const state = {
    devices: new Map(), // id -> summary, the devices of the page, in order
    total: 0,
    offset: 0,
    filter: "",
    source: null,
    lastMessage: 0,
    device: null, // the device of the device view, or null for the fleet
    history: null, // the device view's history (GET /devices/ID/history)
    historyPoints: 300,
    fetching: false,
    refetch: false,
  };
  const counters = { snapshots: 0, updates: 0 };

  function deviceCell(device) {
    const td = el("td");
    const link = el("a", "device-id", device.id);
    link.href = "#/device/" + encodeURIComponent(device.id);
    td.append(link);
    const details = [];
    if (device.site) details.push("site " + device.site);
    if (!device.in_manifest) details.push("not in manifest");
    if (details.length) td.append(el("div", "sub", details.join(" · ")));
    const labels = Object.entries(device.labels || {});
    if (labels.length) {
      const box = el("div", "labels");
      for (const [key, value] of labels) {
        const chip = el("span", "chip", key + "=" + value);
        chip.title = key + "=" + value;
        box.append(chip);
      }
      td.append(box);
    }
    return td;
  }

  function presenceCell(device) {
    const td = el("td");
    td.append(badge(device.presence, lookup(PRESENCE, device.presence, "presence-unknown")));
    if (device.served_by) td.append(el("div", "sub", "served by " + device.served_by));
    return td;
  }

  function readingNode(last) {
    const box = el("span", "reading");
    if (!last) {
      box.append(el("span", "age", "no reading yet"));
      return box;
    }
    for (const [quantity, pair] of Object.entries(last.values || {})) {
      const [value, unit] = Array.isArray(pair) ? pair : [pair, ""];
      const item = el("span", "quantity");
      item.title = quantity;
      item.textContent = formatNumber(value) + (unit ? " " + unit : "");
      box.append(item);
    }
    const when = el("span", "age", age(last.ts));
    when.title = "seq " + last.seq + " at " + isoTime(last.ts);
    box.append(when);
    return box;
  }

  function sensorsCell(device) {
    const td = el("td");
    const entries = Object.entries(device.sensors || {});
    if (!entries.length) {
      td.append(el("span", "sub", "no sensors"));
      return td;
    }
    const grid = el("div", "sensors");
    for (const [name, sensor] of entries) {
      grid.append(el("span", "sensor-name", name));
      const [label, className] = lookup(SOURCES, sensor.source, [String(sensor.source), "src-none"]);
      const sourceBox = el("span");
      sourceBox.append(badge(label, className));
      if (sensor.health) {
        sourceBox.append(
          badge(sensor.health, "health " + lookup(HEALTH, sensor.health, "health-unknown")),
        );
      }
      grid.append(sourceBox);
      grid.append(readingNode(sensor.last));
      const line = sparkline(sensor.spark);
      line.dataset.sensor = name;
      grid.append(line);
    }
    td.append(grid);
    return td;
  }

  function configCell(device) {
    const td = el("td");
    const [label, className] = lookup(CONFIG, device.config, [String(device.config), ""]);
    td.append(badge(label, className));
    if (device.desired_version == null && device.applied_version == null) return td;
    const versions = el("div", "sub versions");
    versions.append(
      el("span", null, "desired "),
      el("b", null, version(device.desired_version)),
      el("span", null, " / applied "),
      el("b", null, version(device.applied_version)),
    );
    td.append(versions);
    return td;
  }

  function agentCell(device) {
    const parts = [];
    if (device.agent_version) parts.push(device.agent_version);
    if (device.boot !== null && device.boot !== undefined) parts.push("boot " + device.boot);
    const td = el("td", "nowrap", parts.length ? parts.join(" · ") : "—");
    return td;
  }

  function lastSeenCell(device) {
    const td = el("td", "nowrap", device.last_seen == null ? "never" : age(device.last_seen));
    td.title = isoTime(device.last_seen);
    return td;
  }

  function version(value) {
    return value === null || value === undefined ? "—" : String(value);
  }

  // A sparkline: one polyline per run of readings from one source, so a hand-over shows as
  // a change of colour.
  function sparkline(spark) {
    const box = svg("svg", { class: "spark", viewBox: "0 0 120 24", preserveAspectRatio: "none" });
    if (!spark || !spark.v || spark.v.length < 2) return box;
    const values = spark.v.filter((v) => typeof v === "number");
    if (!values.length) return box;
    const low = Math.min(...values);
    const span = Math.max(...values) - low || 1;
    const t0 = spark.t[0];
    const tspan = spark.t[spark.t.length - 1] - t0 || 1;
    let run = null;
    let runLetter = null;
    spark.v.forEach((v, i) => {
      if (typeof v !== "number") return;
      const x = ((spark.t[i] - t0) / tspan) * 118 + 1;
      const y = 23 - ((v - low) / span) * 22;
      const letter = spark.s[i];
      if (letter !== runLetter) {
        const previous = run ? run.getAttribute("points").split(" ").slice(-1) : [];
        run = svg("polyline", {
          class: "spark-line " + sourceClass(lookup(LETTERS, letter, "none")),
          "data-source": lookup(LETTERS, letter, "none"),
          points: previous.join(" "),
        });
        box.append(run);
        runLetter = letter;
      }
      const points = run.getAttribute("points");
      run.setAttribute("points", (points ? points + " " : "") + x.toFixed(1) + "," + y.toFixed(1));
    });
    box.append(titled(spark.q));
    return box;
  }

  // The summary's last reading added to the sparkline the snapshot brought.
  function extendSpark(sensor, previous) {
    const spark = (previous && previous.spark) || null;
    sensor.spark = spark;
    const last = sensor.last;
    if (!spark || !last || typeof last.ts !== "number") return;
    if (spark.t.length && last.ts <= spark.t[spark.t.length - 1]) return;
    const pair = last.values && last.values[spark.q];
    if (!Array.isArray(pair)) return;
    spark.t.push(last.ts);
    spark.v.push(pair[0]);
    spark.s += (last.source || "n")[0];
    if (spark.t.length > SPARK_POINTS) {
      spark.t.shift();
      spark.v.shift();
      spark.s = spark.s.slice(1);
    }
  }

  function row(device) {
    const tr = el("tr");
    tr.dataset.device = device.id;
    tr.append(
      deviceCell(device),
      presenceCell(device),
      sensorsCell(device),
      configCell(device),
      agentCell(device),
      lastSeenCell(device),
    );
    return tr;
  }

  function renderDevices() {
    const rows = [...state.devices.values()].map(row);
    $("devices").replaceChildren(...rows);
    $("empty").hidden = rows.length > 0;
    const first = state.total ? state.offset + 1 : 0;
    const last = Math.min(state.offset + PAGE_SIZE, state.total);
    $("range").textContent = first + "–" + last + " of " + state.total;
    $("prev").disabled = state.offset === 0;
    $("next").disabled = state.offset + PAGE_SIZE >= state.total;
  }

  function renderRow(device) {
    const old = $("devices").querySelector('tr[data-device="' + CSS.escape(device.id) + '"]');
    if (old) old.replaceWith(row(device));
  }

  function renderSummary(fleet) {
    const line = $("summary");
    const part = (strong, text) => {
      const span = el("span");
      span.append(el("b", null, strong), document.createTextNode(" " + text));
      return span;
    };
    const sep = () => document.createTextNode(" · ");
    const presence = fleet.by_presence || {};
    const config = fleet.config || {};
    const pieces = [
      part(fleet.devices, fleet.devices === 1 ? "device" : "devices"),
      part(fleet.in_manifest, "in the manifest"),
      part(presence.online || 0, "online"),
      part(presence.offline || 0, "offline"),
      part(presence.unknown || 0, "unknown"),
      part(fleet.simulated_devices, "simulated (" + fleet.simulated_streams + " streams)"),
      part(config.in_sync || 0, "config in sync"),
      part(config.pending || 0, "pending"),
      part(config.rejected || 0, "rejected"),
    ];
    const nodes = [];
    pieces.forEach((piece, index) => {
      if (index) nodes.push(sep());
      nodes.push(piece);
    });
    line.replaceChildren(...nodes);
  }

  function setStatus(kind, text) {
    const status = $("status");
    status.dataset.state = kind;
    status.textContent = text;
  }

  function count(name) {
    counters[name] += 1;
    document.body.dataset[name] = String(counters[name]);
  }

  // -- the feed ---------------------------------------------------------------------------

  function feedUrl() {
    const params = new URLSearchParams();
    if (state.device) {
      params.set("device", state.device);
    } else {
      if (state.filter) params.set("q", state.filter);
      params.set("offset", String(state.offset));
      params.set("limit", String(PAGE_SIZE));
    }
    // Relative URLs: the page works behind a reverse proxy's path prefix too.
    return "events?" + params.toString();
  }

  function connect() {
    if (state.source) state.source.close();
    const source = new EventSource(feedUrl());
    state.source = source;
    state.lastMessage = Date.now();
    source.addEventListener("snapshot", (message) => {
      state.lastMessage = Date.now();
      onSnapshot(JSON.parse(message.data));
    });
    source.addEventListener("devices", (message) => {
      state.lastMessage = Date.now();
      onDevices(JSON.parse(message.data).devices || []);
    });
    source.addEventListener("fleet", (message) => {
      state.lastMessage = Date.now();
      renderSummary(JSON.parse(message.data));
    });
    source.addEventListener("open", () => {
      state.lastMessage = Date.now();
    });
    source.addEventListener("error", () => {
      setStatus("lost", "gateway unreachable, reconnecting…");
      // EventSource retries by itself unless the answer was not a stream at all.
      if (source.readyState === EventSource.CLOSED && state.source === source) {
        setTimeout(() => state.source === source && connect(), 2000);
      }
    });
  }

  // The device view's panels (device.js) follow the feed through these events: the route,
  // and every change of the device shown, which they answer by reading its twin again.
  function announce(name, device) {
    document.dispatchEvent(new CustomEvent("edgetwin:" + name, { detail: { device } }));
  }

  function onSnapshot(data) {
    count("snapshots");
    state.total = data.total || 0;
    state.historyPoints = data.history_points || state.historyPoints;
    state.devices = new Map((data.devices || []).map((d) => [d.id, d]));
    if (data.fleet) renderSummary(data.fleet);
    setStatus("live", "live · since " + new Date().toLocaleTimeString());
    if (state.device) {
      renderDeviceMeta(state.devices.get(state.device));
      loadHistory(true);
      announce("device-changed", state.device);
    } else {
      renderDevices();
      if (counters.snapshots === 1) performance.mark("edgetwin-first-table");
    }
  }

  function onDevices(devices) {
    count("updates");
    for (const device of devices) {
      const previous = state.devices.get(device.id);
      if (!previous) continue;
      for (const [name, sensor] of Object.entries(device.sensors || {})) {
        extendSpark(sensor, previous.sensors && previous.sensors[name]);
      }
      state.devices.set(device.id, device);
      if (state.device) {
        renderDeviceMeta(device);
        loadHistory(false);
        announce("device-changed", device.id);
      } else {
        renderRow(device);
      }
    }
  }

  function watchdog() {
    if (state.source && Date.now() - state.lastMessage > WATCHDOG_MS) {
      setStatus("lost", "no news from the gateway, reconnecting…");
      connect();
    }
  }

  // -- a device's view --------------------------------------------------------------------

  function route() {
    const match = /^#\/device\/([a-z0-9][a-z0-9_-]{0,63})$/.exec(location.hash);
    state.device = match ? match[1] : null;
    state.history = null;
    // #/engine is engine.js's panel, with its own stream: the fleet's is closed meanwhile.
    const engine = location.hash === "#/engine";
    $("fleet-view").hidden = Boolean(state.device) || engine;
    $("device-view").hidden = !state.device;
    document.querySelector(".toolbar input").hidden = Boolean(state.device) || engine;
    document.querySelector(".pager").hidden = Boolean(state.device) || engine;
    if (engine) {
      if (state.source) state.source.close();
      state.source = null;
      return;
    }
    if (state.device) {
      $("device-title").textContent = state.device;
      $("device-meta").textContent = "";
      $("charts").replaceChildren();
    }
    announce("route", state.device);
    connect();
  }

  function renderDeviceMeta(device) {
    const meta = $("device-meta");
    if (!device) {
      meta.textContent = "not in the fleet";
      return;
    }
    const parts = [device.presence];
    if (device.served_by) parts.push("served by " + device.served_by);
    if (device.site) parts.push("site " + device.site);
    for (const [name, sensor] of Object.entries(device.sensors || {})) {
      parts.push(name + ": " + lookup(SOURCES, sensor.source, [String(sensor.source)])[0]);
    }
    meta.textContent = parts.join(" · ");
  }

  async function loadHistory(full) {
    // One request at a time; a change that arrives meanwhile asks for one more.
    if (state.fetching) {
      state.refetch = true;
      return;
    }
    state.fetching = true;
    try {
      const device = state.device;
      let since = null;
      if (!full && state.history) {
        const ends = Object.values(state.history.sensors).map((s) => s.ts[s.ts.length - 1] || 0);
        if (ends.length) since = Math.min(...ends);
      }
      const url =
        "devices/" + encodeURIComponent(device) + "/history" + (since ? "?since=" + since : "");
      const response = await fetch(url, { cache: "no-store" });
      if (!response.ok) throw new Error(url + ": HTTP " + response.status);
      const data = await response.json();
      if (device !== state.device) return;
      state.history = full || !state.history ? data : merge(state.history, data);
      renderCharts();
    } catch (error) {
      console.warn("history failed:", error);
    } finally {
      state.fetching = false;
      if (state.refetch) {
        state.refetch = false;
        loadHistory(false);
      }
    }
  }

  // New points appended to each stream's columns, the oldest dropped beyond the capacity.
  function merge(history, fresh) {
    for (const [name, add] of Object.entries(fresh.sensors)) {
      const have = history.sensors[name];
      if (!have) {
        history.sensors[name] = add;
        continue;
      }
      const end = have.ts.length ? have.ts[have.ts.length - 1] : -Infinity;
      const start = add.ts.findIndex((t) => t > end);
      if (start < 0) continue;
      const n = add.ts.length - start;
      for (const key of ["ts", "seq", "source", "anomaly"]) have[key].push(...add[key].slice(start));
      for (const [q, column] of Object.entries(add.quantities)) {
        const mine = have.quantities[q];
        if (!mine) {
          have.quantities[q] = {
            unit: column.unit,
            values: new Array(have.ts.length - n).fill(null).concat(column.values.slice(start)),
          };
        } else {
          mine.unit = column.unit;
          mine.values.push(...column.values.slice(start));
        }
      }
      for (const mine of Object.values(have.quantities)) {
        while (mine.values.length < have.ts.length) mine.values.push(null);
      }
      const extra = have.ts.length - (history.points || state.historyPoints);
      if (extra > 0) {
        for (const key of ["ts", "seq", "source", "anomaly"]) have[key].splice(0, extra);
        for (const mine of Object.values(have.quantities)) mine.values.splice(0, extra);
      }
    }
    return history;
  }

  function renderCharts() {
    const box = $("charts");
    const nodes = [];
    const sensors = Object.entries(state.history.sensors || {});
    if (!sensors.length) nodes.push(el("p", "empty", "No readings kept yet."));
    for (const [name, series] of sensors) {
      for (const [quantity, column] of Object.entries(series.quantities)) {
        const figure = el("figure", "chart");
        figure.dataset.sensor = name;
        figure.dataset.quantity = quantity;
        const caption = el("figcaption");
        caption.append(
          el("b", null, name + " · " + quantity),
          el("span", "muted", column.unit ? " (" + column.unit + ")" : ""),
        );
        figure.append(caption, chart(series, column));
        nodes.push(figure);
      }
    }
    box.replaceChildren(...nodes);
  }

  document.addEventListener("DOMContentLoaded", () => {
    let typing = null;
    $("filter").addEventListener("input", () => {
      // The filter runs on the gateway: a new stream once the typing pauses.
      clearTimeout(typing);
      typing = setTimeout(() => {
        state.filter = $("filter").value.trim();
        state.offset = 0;
        connect();
      }, 250);
    });
    $("prev").addEventListener("click", () => {
      state.offset = Math.max(0, state.offset - PAGE_SIZE);
      connect();
    });
    $("next").addEventListener("click", () => {
      state.offset += PAGE_SIZE;
      connect();
    });
    window.addEventListener("hashchange", route);
    // A page kept in the back-forward cache must not keep its stream open on the gateway.
    window.addEventListener("pagehide", () => {
      if (state.source) state.source.close();
    });
    window.addEventListener("pageshow", (event) => {
      if (event.persisted) connect();
    });
    setInterval(watchdog, 5000);
    route();
  });
})();
