// What the pages of the gateway share: DOM and SVG helpers that write network text through
// textContent only, the SVG time-series chart, and `request`, the one way the page writes to
// the API. The API token is asked for once, at the first write that needs it, and kept in
// sessionStorage: only this tab holds it, it survives a reload of the tab and goes with it.
// Every module of the page is a plain script on window.Edgetwin: no build step, no CDN.
"use strict";

(function () {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const TOKEN_KEY = "edgetwin.api-token";
  // A reading's own `source`.
  const READING_SOURCES = { real: "real", emulated: "emulated", simulated: "simulated" };

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

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    return node;
  }

  function titled(text) {
    const title = svg("title");
    title.textContent = text;
    return title;
  }

  function sourceClass(source) {
    return "src-" + lookup(READING_SOURCES, source, "none");
  }

  // The frame both charts share: the y axis's top and bottom values (the top one with the
  // unit, if given), the time axis's first and last moments, and the two axis lines.
  function axisFrame(frame) {
    const { width, height, pad, low, high, t0, t1 } = frame;
    const axis = svg("g", { class: "axis" });
    const label = (text, attrs) => {
      const node = svg("text", attrs);
      node.textContent = text;
      axis.append(node);
    };
    const unit = frame.unit ? " " + frame.unit : "";
    label(formatNumber(high) + unit, { x: pad.left - 6, y: pad.top + 8, "text-anchor": "end" });
    label(formatNumber(low), { x: pad.left - 6, y: height - pad.bottom, "text-anchor": "end" });
    label(new Date(t0 * 1000).toLocaleTimeString(), { x: pad.left, y: height - 6 });
    label(new Date(t1 * 1000).toLocaleTimeString(), {
      x: width - pad.right,
      y: height - 6,
      "text-anchor": "end",
    });
    axis.append(
      svg("line", { x1: pad.left, x2: pad.left, y1: pad.top, y2: height - pad.bottom }),
      svg("line", {
        x1: pad.left,
        x2: width - pad.right,
        y1: height - pad.bottom,
        y2: height - pad.bottom,
      }),
    );
    return axis;
  }

  // One quantity over time: a line, one dot per reading coloured by its source, and a band
  // over the readings an injected fault's label marks.
  function chart(series, column) {
    const width = 720;
    const height = 180;
    const pad = { left: 56, right: 10, top: 10, bottom: 24 };
    const root = svg("svg", { class: "chart-svg", viewBox: "0 0 " + width + " " + height });
    const ts = series.ts;
    const values = column.values;
    const present = values.filter((v) => typeof v === "number");
    if (!present.length) return root;
    let low = Math.min(...present);
    let high = Math.max(...present);
    if (high === low) {
      low -= 1;
      high += 1;
    }
    const t0 = ts[0];
    const t1 = ts[ts.length - 1] > t0 ? ts[ts.length - 1] : t0 + 1;
    const x = (t) => pad.left + ((t - t0) / (t1 - t0)) * (width - pad.left - pad.right);
    const y = (v) => pad.top + (1 - (v - low) / (high - low)) * (height - pad.top - pad.bottom);

    // Fault bands first, under the line.
    let i = 0;
    while (i < ts.length) {
      const kind = series.anomaly[i];
      if (!kind) {
        i += 1;
        continue;
      }
      let j = i;
      while (j + 1 < ts.length && series.anomaly[j + 1] === kind) j += 1;
      const left = x(ts[i]) - 3;
      const band = svg("rect", {
        class: "fault",
        "data-anomaly": kind,
        x: left.toFixed(1),
        y: pad.top,
        width: Math.max(6, x(ts[j]) + 3 - left).toFixed(1),
        height: height - pad.top - pad.bottom,
      });
      band.append(titled("fault: " + kind));
      root.append(band);
      i = j + 1;
    }
    root.append(axisFrame({ width, height, pad, low, high, t0, t1 }));
    let path = "";
    let pen = "M";
    values.forEach((v, k) => {
      if (typeof v !== "number") {
        pen = "M";
        return;
      }
      path += pen + x(ts[k]).toFixed(1) + " " + y(v).toFixed(1) + " ";
      pen = "L";
    });
    root.append(svg("path", { class: "line", d: path }));
    const dots = svg("g", { class: "points" });
    values.forEach((v, k) => {
      if (typeof v !== "number") return;
      const dot = svg("circle", {
        class: "pt " + sourceClass(series.source[k]),
        "data-source": lookup(READING_SOURCES, series.source[k], "none"),
        "data-seq": series.seq[k],
        cx: x(ts[k]).toFixed(1),
        cy: y(v).toFixed(1),
        r: 2.5,
      });
      dot.append(
        titled(
          formatNumber(v) + " " + column.unit + " · seq " + series.seq[k] + " · " + series.source[k],
        ),
      );
      dots.append(dot);
    });
    root.append(dots);
    return root;
  }

  // Several quantities over one time axis (the engine panel's figures): one path per line,
  // broken where a value is missing or where samples are more than `gap` seconds apart (a
  // stopped engine), the y axis from 0 (or the lowest value, if negative) up. `lines`:
  // [{name, values}], the name also its CSS class (line-NAME) and its data-line. The frame is
  // drawn like chart's; dots and fault bands are the device charts' own. `options`: unit,
  // start and end (the time axis; default the first and last of `ts`), gap, width.
  function lineChart(ts, lines, options) {
    const opts = options || {};
    // A narrower box for a narrower column keeps the axis text legible once scaled down.
    const width = opts.width || 720;
    const height = 180;
    const pad = { left: 56, right: 10, top: 10, bottom: 24 };
    const root = svg("svg", { class: "chart-svg", viewBox: "0 0 " + width + " " + height });
    const present = lines.flatMap((line) => line.values.filter((v) => typeof v === "number"));
    if (!ts.length || !present.length) return root;
    const low = Math.min(0, ...present);
    let high = Math.max(...present);
    if (high <= low) high = low + 1;
    const t1 = opts.end !== undefined ? opts.end : ts[ts.length - 1];
    const t0 = opts.start !== undefined ? opts.start : ts[0];
    const span = t1 > t0 ? t1 - t0 : 1;
    const gap = opts.gap || Infinity;
    const x = (t) => pad.left + ((t - t0) / span) * (width - pad.left - pad.right);
    const y = (v) => pad.top + (1 - (v - low) / (high - low)) * (height - pad.top - pad.bottom);
    root.append(axisFrame({ width, height, pad, low, high, t0, t1, unit: opts.unit }));
    for (const line of lines) {
      let path = "";
      let pen = "M";
      let last = null;
      line.values.forEach((v, k) => {
        if (typeof v !== "number" || ts[k] < t0) {
          pen = "M";
          return;
        }
        if (k > 0 && ts[k] - ts[k - 1] > gap) pen = "M";
        path += pen + x(ts[k]).toFixed(1) + " " + y(v).toFixed(1) + " ";
        pen = "L";
        last = v;
      });
      const node = svg("path", { class: "line line-" + line.name, "data-line": line.name, d: path });
      if (last !== null) node.dataset.last = String(last);
      node.append(titled(line.name));
      root.append(node);
    }
    return root;
  }

  // -- the API token and writes -----------------------------------------------------------

  function token() {
    try {
      return sessionStorage.getItem(TOKEN_KEY);
    } catch (error) {
      return null; // storage disabled: the token is asked for at each write
    }
  }

  function setToken(value) {
    try {
      if (value) sessionStorage.setItem(TOKEN_KEY, value);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch (error) {
      // storage disabled: nothing is kept
    }
    renderTokenState();
  }

  function renderTokenState() {
    const button = document.getElementById("token-button");
    if (!button) return;
    const held = Boolean(token());
    button.textContent = held ? "token set · forget" : "set API token";
    button.dataset.held = String(held);
  }

  // The token dialog: resolves with the token typed, or null when the operator cancels.
  function askToken(reason) {
    const dialog = document.getElementById("token-dialog");
    const input = document.getElementById("token-input");
    document.getElementById("token-reason").textContent = reason || "";
    input.value = "";
    return new Promise((resolve) => {
      const done = () => {
        dialog.removeEventListener("close", done);
        const value = dialog.returnValue === "ok" ? input.value.trim() : "";
        if (value) setToken(value);
        resolve(value || null);
      };
      dialog.addEventListener("close", done);
      dialog.returnValue = "";
      dialog.showModal();
      input.focus();
    });
  }

  // The gateway's error text: FastAPI's `detail`, a string or a list of validation errors.
  function reason(body, status) {
    const detail = body && typeof body === "object" ? body.detail : null;
    if (typeof detail === "string") return detail;
    if (Array.isArray(detail)) {
      return detail
        .map((d) => (Array.isArray(d.loc) ? d.loc.join(".") + ": " : "") + (d.msg || ""))
        .join("; ");
    }
    return "HTTP " + status;
  }

  // One call to the API, relative to the page. Writes carry the tab's token; a 401, or a 403
  // for a wrong token, asks for it once and tries again. Resolves with
  // { ok, status, etag, body, reason } and never throws for an HTTP error.
  async function request(method, url, options) {
    const opts = options || {};
    const write = method !== "GET";
    for (let attempt = 0; attempt < 2; attempt += 1) {
      const headers = { Accept: "application/json" };
      if (opts.body !== undefined) headers["Content-Type"] = "application/json";
      if (opts.ifMatch !== undefined && opts.ifMatch !== null) headers["If-Match"] = opts.ifMatch;
      const held = token();
      if (write && held) headers.Authorization = "Bearer " + held;
      let response;
      try {
        response = await fetch(url, {
          method,
          headers,
          cache: "no-store",
          body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
        });
      } catch (error) {
        return { ok: false, status: 0, etag: null, body: null, reason: "gateway unreachable" };
      }
      const text = await response.text();
      let body = null;
      try {
        body = text ? JSON.parse(text) : null;
      } catch (error) {
        body = text;
      }
      const result = {
        ok: response.ok,
        status: response.status,
        etag: response.headers.get("ETag"),
        body,
        reason: response.ok ? "" : reason(body, response.status),
      };
      const tokenProblem =
        response.status === 401 || (response.status === 403 && result.reason === "wrong API token");
      if (!write || !tokenProblem || attempt > 0) return result;
      if (response.status === 403) setToken(null);
      const typed = await askToken(result.reason);
      if (!typed) return result;
    }
    return { ok: false, status: 0, etag: null, body: null, reason: "no token" };
  }

  document.addEventListener("DOMContentLoaded", () => {
    const dialog = document.getElementById("token-dialog");
    if (dialog) {
      // Buttons rather than <form method="dialog">: the page's policy allows no form action.
      document.getElementById("token-ok").addEventListener("click", () => dialog.close("ok"));
      document.getElementById("token-cancel").addEventListener("click", () => dialog.close(""));
      document.getElementById("token-input").addEventListener("keydown", (event) => {
        if (event.key === "Enter") dialog.close("ok");
      });
    }
    const button = document.getElementById("token-button");
    if (button) {
      button.addEventListener("click", () => {
        if (token()) setToken(null);
        else askToken("");
      });
    }
    renderTokenState();
  });

  window.Edgetwin = {
    READING_SOURCES,
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
    lineChart,
    request,
    token,
    askToken,
  };
})();
