// The fleet page: polls GET /devices and GET /fleet once a second and redraws the table.
// Every text from the network goes into the DOM through textContent (the `el` helper below);
// class names come from fixed tables, never from data.
"use strict";

(function () {
  const POLL_MS = 1000;
  const TIMEOUT_MS = 5000;

  const SOURCES = {
    "agent-hardware": ["real", "src-real"],
    "agent-emulation": ["emulated", "src-emulated"],
    simulation: ["simulated", "src-simulated"],
    none: ["none", "src-none"],
  };
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
  let devices = [];
  let lastOk = 0;

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function badge(text, className) {
    return el("span", "badge " + className, text);
  }

  function lookup(table, key, fallback) {
    return Object.prototype.hasOwnProperty.call(table, key) ? table[key] : fallback;
  }

  function formatNumber(value) {
    if (typeof value !== "number" || !Number.isFinite(value)) return String(value);
    const digits = Math.abs(value) >= 100 ? 1 : 2;
    return value.toFixed(digits);
  }

  function age(ts) {
    if (typeof ts !== "number") return "";
    const seconds = Math.max(0, Date.now() / 1000 - ts);
    if (seconds < 90) return Math.round(seconds) + " s ago";
    if (seconds < 5400) return Math.round(seconds / 60) + " min ago";
    if (seconds < 172800) return Math.round(seconds / 3600) + " h ago";
    return Math.round(seconds / 86400) + " d ago";
  }

  function isoTime(ts) {
    return typeof ts === "number" ? new Date(ts * 1000).toISOString() : "";
  }

  function deviceCell(device) {
    const td = el("td");
    td.append(el("div", "device-id", device.id));
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

  function matches(device, needle) {
    if (!needle) return true;
    const labels = Object.entries(device.labels || {}).map(([k, v]) => k + "=" + v);
    return [device.id, device.site || "", ...labels].some((text) =>
      text.toLowerCase().includes(needle),
    );
  }

  function renderDevices() {
    const needle = $("filter").value.trim().toLowerCase();
    const shown = devices.filter((device) => matches(device, needle));
    const body = $("devices");
    body.replaceChildren(...shown.map(row));
    $("empty").hidden = shown.length > 0;
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

  function setStatus(state, text) {
    const status = $("status");
    status.dataset.state = state;
    status.textContent = text;
  }

  async function getJson(path) {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), TIMEOUT_MS);
    try {
      const response = await fetch(path, {
        signal: controller.signal,
        cache: "no-store",
        headers: { Accept: "application/json" },
      });
      if (!response.ok) throw new Error(path + ": HTTP " + response.status);
      return await response.json();
    } finally {
      clearTimeout(timer);
    }
  }

  async function poll() {
    if (document.hidden) return;
    try {
      // Relative URLs: the page works behind a reverse proxy's path prefix too.
      const [list, fleet] = await Promise.all([getJson("devices"), getJson("fleet")]);
      devices = Array.isArray(list) ? list : [];
      renderDevices();
      renderSummary(fleet);
      lastOk = Date.now();
      setStatus("live", "live · updated " + new Date(lastOk).toLocaleTimeString());
    } catch (error) {
      const since = lastOk ? ", last update " + new Date(lastOk).toLocaleTimeString() : "";
      setStatus("lost", "gateway unreachable, retrying" + since);
      console.warn("fleet poll failed:", error);
    }
  }

  async function loop() {
    // One request pair at a time: a slow gateway gets fewer polls, not a pile-up.
    await poll();
    setTimeout(loop, POLL_MS);
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("filter").addEventListener("input", renderDevices);
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) poll();
    });
    loop();
  });
})();
