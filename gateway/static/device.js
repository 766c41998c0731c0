// A device's page beyond its charts, and the fleet page's "add device" form.
//
// - The twin documents (GET /devices/ID: status, state, desired, reported, the hand-over log)
//   as definition lists and tables, read again whenever the live feed says the device changed
//   (fleet.js announces it), so "applied vN" or a rejection shows as soon as the agent reports.
// - The shell commands that follow the device (GET /devices/ID/watch, plus curl for the API).
// - The desired configuration as a form, saved with PUT and If-Match: the version the edit is
//   based on. A 409 shows, per field, what the gateway has now against what the edit started
//   from, and "rebase" puts the operator's own edits on top of the current version, because
//   retyping them is how edits get lost.
// - The outputs: per output what is desired and what the agent applied (and why not the
//   desired value), and a new value saved with the same PUT and If-Match as the form, the rest
//   of the document as the gateway has it. Rows are updated in place, so the live feed never
//   takes a value the operator is typing.
// - Adding a manifest device (POST /devices) and removing one (DELETE), with the gateway's
//   reason shown beside the form and the form's input kept.
// Every write goes through Edgetwin.request, which asks for the API token once per tab.
// Network text reaches the DOM through textContent only (Edgetwin.el).
"use strict";

(function () {
  const { el, badge, request, isoTime, age, lookup, formatNumber } = window.Edgetwin;
  const $ = (id) => document.getElementById(id);

  // The contract's SensorSettings defaults (agent/contract.py): the gateway writes every field
  // out, the form may leave some out, and a comparison must not take the two for a change.
  const DEFAULTS = {
    interval: 5,
    bus: 1,
    address: null,
    pins: {},
    device: null,
    options: {},
    backend: "auto",
    enabled: true,
  };
  const FIELDS = ["driver", "address", "bus", "interval", "backend", "enabled", "options"];
  const KEPT_FIELDS = ["pins", "device"]; // not in the form: carried over as they are
  const BACKENDS = ["auto", "real", "emulated"];
  const SERVING = {
    agent: "badge src-real",
    simulation: "badge src-simulated",
    none: "badge src-none",
  };
  const HEALTH = { ok: "health-ok", faulted: "health-faulted", missing: "health-missing" };

  const view = {
    device: null,
    twin: null,
    base: null, // { version, sensors }: the desired document the edit is based on
    dirty: false,
    conflict: null, // { base, mine, current } while a 409 is shown
    awaiting: null, // the version saved here, until the agent applies or rejects it
    loading: false,
    reload: false,
    editor: null,
  };

  // -- values as the form shows and reads them ----------------------------------------------

  function hex(address) {
    return typeof address === "number" ? "0x" + address.toString(16).padStart(2, "0") : "";
  }

  function parseAddress(text) {
    const t = text.trim().toLowerCase();
    if (!t) return null;
    const n = /^0x[0-9a-f]+$/.test(t) ? parseInt(t, 16) : /^[0-9]+$/.test(t) ? Number(t) : NaN;
    if (!Number.isInteger(n)) throw new Error("address must be a number like 0x76, not " + text);
    return n;
  }

  function optionsText(options) {
    return Object.entries(options || {})
      .map(([k, v]) => k + "=" + v)
      .join(", ");
  }

  // "a=1, b=x" -> {a: "1", b: "x"}
  function parsePairs(text, what) {
    const pairs = {};
    for (const part of text.split(",")) {
      const item = part.trim();
      if (!item) continue;
      const eq = item.indexOf("=");
      if (eq < 1) throw new Error(what + " are key=value pairs, not " + item);
      pairs[item.slice(0, eq).trim()] = item.slice(eq + 1).trim();
    }
    return pairs;
  }

  // "gain=2, mode=fast" -> {gain: 2, mode: "fast"}: what a driver option looks like typed.
  function parseOptions(text) {
    const options = {};
    for (const [key, raw] of Object.entries(parsePairs(text, "options"))) {
      let value = raw;
      if (raw === "true" || raw === "false") value = raw === "true";
      else if (raw !== "" && Number.isFinite(Number(raw))) value = Number(raw);
      options[key] = value;
    }
    return options;
  }

  // One sensor's settings with every field present, for comparing.
  function full(settings) {
    return Object.assign({}, DEFAULTS, settings || {});
  }

  function shown(field, value) {
    if (value === undefined) return "—";
    if (field === "address") return value === null ? "driver default" : hex(value);
    if (field === "options" || field === "pins") return optionsText(value) || "none";
    if (value === null) return "—";
    return String(value);
  }

  function same(a, b) {
    return JSON.stringify(a) === JSON.stringify(b);
  }

  // -- the sensor editor: rows of inputs, shared by the desired form and the add form --------

  function sensorEditor(box) {
    const rows = [];

    function input(className, value, label, type) {
      const node = el("input", className);
      node.type = type || "text";
      node.value = value;
      node.setAttribute("aria-label", label);
      node.autocomplete = "off";
      node.spellcheck = false;
      return node;
    }

    function addRow(name, settings, onChange) {
      const s = full(settings);
      const row = el("div", "sensor-row");
      const fields = {
        name: input("f-name", name, "sensor name"),
        driver: input("f-driver", s.driver || "", "driver"),
        address: input("f-address", hex(s.address), "I2C address"),
        bus: input("f-bus", String(s.bus), "I2C bus", "number"),
        interval: input("f-interval", String(s.interval), "interval (s)", "number"),
        backend: el("select", "f-backend"),
        enabled: input("f-enabled", "", "enabled", "checkbox"),
        options: input("f-options", optionsText(s.options), "driver options (key=value, …)"),
      };
      fields.interval.step = "any";
      fields.interval.min = "0";
      fields.bus.min = "0";
      fields.address.placeholder = "default";
      fields.options.placeholder = "key=value, …";
      for (const backend of BACKENDS) {
        const option = el("option", null, backend);
        option.value = backend;
        fields.backend.append(option);
      }
      fields.backend.value = lookup({ auto: 1, real: 1, emulated: 1 }, s.backend, 0)
        ? s.backend
        : "auto";
      fields.enabled.checked = s.enabled !== false;
      const remove = el("button", "f-remove", "remove");
      remove.type = "button";
      remove.setAttribute("aria-label", "remove this sensor");
      const record = { row, fields, kept: settings || {} };
      remove.addEventListener("click", () => {
        rows.splice(rows.indexOf(record), 1);
        row.remove();
        if (onChange) onChange();
      });
      const labelled = (text, node) => {
        const label = el("label", "field");
        label.append(el("span", "field-name", text), node);
        return label;
      };
      row.append(
        labelled("name", fields.name),
        labelled("driver", fields.driver),
        labelled("address", fields.address),
        labelled("bus", fields.bus),
        labelled("interval s", fields.interval),
        labelled("backend", fields.backend),
        labelled("enabled", fields.enabled),
        labelled("options", fields.options),
        remove,
      );
      row.dataset.sensor = name;
      if (onChange) {
        row.addEventListener("input", onChange);
        row.addEventListener("change", onChange);
      }
      rows.push(record);
      box.append(row);
      return record;
    }

    return {
      set(sensors, onChange) {
        rows.length = 0;
        box.replaceChildren();
        for (const [name, settings] of Object.entries(sensors || {})) {
          addRow(name, settings, onChange);
        }
      },
      add(name, settings, onChange) {
        const record = addRow(name, settings, onChange);
        record.fields.name.focus();
        return record;
      },
      // The sensors as the form has them; throws with the first input that cannot be read.
      read() {
        const sensors = {};
        for (const { fields, kept } of rows) {
          const name = fields.name.value.trim();
          const where = "sensor " + (name || "(no name)") + ": ";
          if (!name) throw new Error(where + "give it a name");
          if (Object.prototype.hasOwnProperty.call(sensors, name)) {
            throw new Error(where + "the name is used twice");
          }
          const settings = {};
          for (const key of KEPT_FIELDS) {
            if (kept[key] !== undefined) settings[key] = kept[key];
          }
          try {
            settings.driver = fields.driver.value.trim();
            if (!settings.driver) throw new Error("give it a driver, e.g. bme280");
            const address = parseAddress(fields.address.value);
            if (address !== null) settings.address = address;
            settings.bus = Number(fields.bus.value || DEFAULTS.bus);
            settings.interval = Number(fields.interval.value);
            if (!fields.interval.value || !Number.isFinite(settings.interval)) {
              throw new Error("interval must be a number of seconds");
            }
            settings.backend = fields.backend.value;
            settings.enabled = fields.enabled.checked;
            settings.options = parseOptions(fields.options.value);
          } catch (error) {
            throw new Error(where + error.message);
          }
          sensors[name] = settings;
        }
        return sensors;
      },
    };
  }

  // -- what an edit changed, and rebasing it ------------------------------------------------

  // Per sensor and field, where `a` and `b` differ: [{sensor, field, a, b}]; field null for a
  // sensor only one of them has.
  function changes(a, b) {
    const out = [];
    const names = [...new Set([...Object.keys(a), ...Object.keys(b)])].sort();
    for (const name of names) {
      if (!(name in a) || !(name in b)) {
        out.push({ sensor: name, field: null, a: a[name], b: b[name] });
        continue;
      }
      const x = full(a[name]);
      const y = full(b[name]);
      for (const field of [...FIELDS, ...KEPT_FIELDS]) {
        if (!same(x[field], y[field])) out.push({ sensor: name, field, a: x[field], b: y[field] });
      }
    }
    return out;
  }

  // The operator's edits (from `base` to `mine`) applied to `current`, field by field.
  function rebase(base, mine, current) {
    const result = JSON.parse(JSON.stringify(current));
    for (const change of changes(base, mine)) {
      if (change.field === null) {
        if (change.b === undefined) delete result[change.sensor];
        else result[change.sensor] = change.b;
      } else if (result[change.sensor]) {
        result[change.sensor] = full(result[change.sensor]);
        result[change.sensor][change.field] = change.b;
      } else {
        // Removed meanwhile, edited here: the edit says the operator wants it, as they have it.
        result[change.sensor] = mine[change.sensor];
      }
    }
    return result;
  }

  // -- rendering the twin ---------------------------------------------------------------------

  function definitions(pairs) {
    const dl = el("dl", "doc-fields");
    for (const [term, value] of pairs) {
      if (value === undefined) continue;
      dl.append(el("dt", null, term), el("dd", null, value === null ? "—" : String(value)));
    }
    return dl;
  }

  function table(headings, rows, className) {
    const t = el("table", "doc-table" + (className ? " " + className : ""));
    const head = el("tr");
    for (const h of headings) head.append(el("th", null, h));
    const thead = el("thead");
    thead.append(head);
    const tbody = el("tbody");
    for (const cells of rows) {
      const tr = el("tr");
      for (const cell of cells) {
        const td = el("td");
        if (cell instanceof Node) td.append(cell);
        else td.textContent = cell === null || cell === undefined ? "—" : String(cell);
        tr.append(td);
      }
      tbody.append(tr);
    }
    t.append(thead, tbody);
    return t;
  }

  function when(ts) {
    return typeof ts === "number" ? isoTime(ts) + " (" + age(ts) + ")" : null;
  }

  function doc(name, title, ...content) {
    const box = el("section", "doc");
    box.dataset.doc = name;
    box.append(el("h4", null, title), ...content);
    return box;
  }

  function sensorsTable(sensors) {
    return table(
      ["sensor", "driver", "address", "bus", "interval s", "backend", "enabled", "options"],
      Object.entries(sensors || {}).map(([name, s]) => {
        const f = full(s);
        return [
          name,
          f.driver,
          shown("address", f.address),
          f.bus,
          f.interval,
          f.backend,
          f.enabled ? "yes" : "no",
          shown("options", f.options),
        ];
      }),
    );
  }

  function renderTwin() {
    const twin = view.twin;
    const box = $("twin-docs");
    if (!twin) {
      box.replaceChildren(el("p", "empty", "This device is not in the fleet."));
      return;
    }
    const status = twin.status || {};
    const nodes = [
      doc(
        "status",
        "status (the agent's birth or last will)",
        definitions([
          ["presence", status.state],
          ["reason", status.reason],
          ["boot", status.boot],
          ["session", status.session],
          ["agent version", status.agent_version],
          ["last seen", when(twin.last_seen)],
          ["served by", twin.served_by],
          ["duplicate id", twin.duplicate_id || undefined],
        ]),
      ),
    ];
    const state = twin.state;
    nodes.push(
      doc(
        "state",
        "state (what the agent runs)",
        ...(state
          ? [
              definitions([
                ["at", when(state.ts)],
                ["agent version", state.agent_version],
                ["up", formatNumber(state.uptime_s) + " s"],
                ["outbox depth", state.outbox_depth],
                ["dropped", state.dropped],
                ["unstored", state.unstored],
                ["storage error", state.storage_error || undefined],
              ]),
              table(
                ["sensor", "health", "backend", "reason"],
                Object.entries(state.sensors || {}).map(([name, s]) => [
                  name,
                  badge(s.health, "health " + lookup(HEALTH, s.health, "health-unknown")),
                  s.backend,
                  s.reason || "",
                ]),
              ),
            ]
          : [el("p", "sub", "No state document yet.")]),
      ),
    );
    const desired = twin.desired;
    nodes.push(
      doc(
        "desired",
        "desired (written by the gateway)",
        ...(desired
          ? [definitions([["version", desired.version]]), sensorsTable(desired.sensors)]
          : [
              el("p", "sub", "No desired document: the device runs its manifest entry."),
              sensorsTable(twin.manifest_sensors || {}),
            ]),
      ),
    );
    const reported = twin.reported;
    nodes.push(
      doc(
        "reported",
        "reported (written by the agent)",
        reported
          ? definitions([
              ["status", reported.status],
              ["applied version", reported.applied_version],
              ["rejected version", reported.rejected_version ?? undefined],
              ["reason", reported.reason ?? undefined],
              ["at", when(reported.ts)],
            ])
          : el("p", "sub", "No report from an agent yet."),
      ),
    );
    const handovers = twin.handovers || [];
    nodes.push(
      doc(
        "handovers",
        "hand-overs (who served each sensor when, since the gateway started)",
        handovers.length
          ? table(
              ["at", "sensor", "from", "to", "after seq", "agent"],
              handovers
                .slice()
                .reverse()
                .map((h) => [
                  when(h.ts),
                  h.sensor,
                  h.previous ? badge(h.previous, lookup(SERVING, h.previous, "badge")) : "—",
                  badge(h.served_by, lookup(SERVING, h.served_by, "badge")),
                  h.seq,
                  h.presence,
                ]),
              "handovers",
            )
          : el("p", "sub", "No hand-over yet."),
      ),
    );
    const raw = el("details", "raw");
    raw.append(el("summary", null, "raw JSON"), el("pre", null, JSON.stringify(twin, null, 2)));
    nodes.push(raw);
    box.replaceChildren(...nodes);
  }

  function renderConfigState() {
    const twin = view.twin;
    const line = $("config-state");
    const rejection = $("rejection");
    rejection.hidden = true;
    if (!twin) {
      line.textContent = "";
      line.dataset.state = "";
      return;
    }
    const desired = twin.desired ? twin.desired.version : null;
    const reported = twin.reported;
    const applied = twin.applied_version;
    line.dataset.version = desired === null ? "" : String(desired);
    line.dataset.state = twin.config;
    let text;
    if (twin.config === "in_sync") text = "applied v" + desired;
    else if (twin.config === "rejected") text = "rejected v" + desired;
    else if (twin.config === "no_desired") text = "no desired config: runs its manifest entry";
    else {
      text =
        "pending v" +
        desired +
        (applied === null || applied === undefined
          ? ": no report from the agent yet"
          : ": the agent runs v" + applied);
    }
    line.replaceChildren(badge(text, lookup(CONFIG_CLASSES, twin.config, "cfg-pending")));
    if (view.awaiting !== null && view.awaiting === desired && twin.config !== "pending") {
      // The answer to the save made here: said beside the save button too.
      const rejected = twin.config === "rejected";
      message(
        "desired-message",
        "version " +
          desired +
          (rejected ? " rejected by the agent (see above)" : " applied by the agent"),
        rejected ? "error" : "ok",
      );
      view.awaiting = null;
    }
    if (reported && reported.status === "rejected" && reported.rejected_version === desired) {
      $("rejected-version").textContent = String(reported.rejected_version);
      $("rejection-reason").textContent = reported.reason || "(no reason given)";
      $("rejection-running").textContent = String(reported.applied_version);
      rejection.hidden = false;
    }
  }
  const CONFIG_CLASSES = {
    in_sync: "cfg-in_sync",
    pending: "cfg-pending",
    rejected: "cfg-rejected",
    no_desired: "cfg-no_desired",
  };

  // -- the desired form -----------------------------------------------------------------------

  function baseFromTwin(twin) {
    if (twin.desired) return { version: twin.desired.version, sensors: twin.desired.sensors };
    return { version: 0, sensors: twin.manifest_sensors || {} };
  }

  function setBase(base, sensors) {
    view.base = base;
    view.editor.set(sensors || base.sensors, markDirty);
    view.dirty = sensors !== undefined;
    renderBase();
  }

  function renderBase() {
    const base = view.base;
    $("desired-base").textContent = base
      ? (base.version
          ? "Editing from version " + base.version
          : "No desired document yet: editing from the manifest entry") +
        (view.dirty ? " · edited, not saved" : "")
      : "";
    $("desired-panel").dataset.dirty = String(view.dirty);
    $("desired-panel").dataset.base = base ? String(base.version) : "";
  }

  function markDirty() {
    if (!view.dirty) {
      view.dirty = true;
      renderBase();
    }
  }

  function message(id, text, kind) {
    const node = $(id);
    node.textContent = text;
    node.dataset.kind = kind || "";
  }

  async function save() {
    let sensors;
    try {
      sensors = view.editor.read();
    } catch (error) {
      message("desired-message", error.message, "error");
      return;
    }
    const device = view.device;
    const base = view.base;
    message("desired-message", "saving…", "");
    const answer = await request("PUT", "devices/" + encodeURIComponent(device) + "/desired", {
      body: { sensors },
      ifMatch: '"' + base.version + '"',
    });
    if (device !== view.device) return;
    if (answer.ok) {
      hideConflict();
      view.awaiting = answer.body.version;
      setBase({ version: answer.body.version, sensors: answer.body.sensors });
      message(
        "desired-message",
        "saved as version " + answer.body.version + "; waiting for the agent…",
        "ok",
      );
      loadTwin();
      return;
    }
    if (answer.status === 409) {
      const current = await request("GET", "devices/" + encodeURIComponent(device) + "/desired");
      if (device !== view.device) return;
      if (current.ok) {
        const now = { version: current.body.version, sensors: current.body.sensors };
        showConflict(base, sensors, now);
        message("desired-message", "not saved: " + answer.reason, "error");
        return;
      }
    }
    message("desired-message", "not saved: " + answer.reason, "error");
  }

  function showConflict(base, mine, current) {
    view.conflict = { base, mine, current };
    $("conflict-base").textContent = String(base.version);
    $("conflict-current").textContent = String(current.version);
    const rows = [];
    const theirs = changes(base.sensors, current.sensors);
    const yours = changes(base.sensors, mine);
    const key = (c) => c.sensor + "\u0000" + (c.field || "");
    const seen = new Set();
    for (const change of [...theirs, ...yours]) {
      if (seen.has(key(change))) continue;
      seen.add(key(change));
      const field = change.field;
      const pick = (sensors) => {
        const s = sensors[change.sensor];
        if (field === null) return s === undefined ? "(no such sensor)" : "(sensor present)";
        return s === undefined ? "(no such sensor)" : shown(field, full(s)[field]);
      };
      const tr = el("tr");
      tr.dataset.field = change.sensor + (field ? "." + field : "");
      const ours = yours.some((c) => key(c) === key(change));
      const changed = theirs.some((c) => key(c) === key(change));
      if (changed) tr.className = ours ? "both-changed" : "they-changed";
      else tr.className = "you-changed";
      tr.append(
        el("td", "diff-field", change.sensor + (field ? "." + field : "")),
        el("td", null, pick(base.sensors)),
        el("td", changed ? "diff-theirs" : null, pick(current.sensors)),
        el("td", ours ? "diff-yours" : null, pick(mine)),
      );
      rows.push(tr);
    }
    $("conflict-rows").replaceChildren(...rows);
    $("conflict").hidden = false;
  }

  function hideConflict() {
    view.conflict = null;
    $("conflict").hidden = true;
  }

  function doRebase() {
    const conflict = view.conflict;
    if (!conflict) return;
    let mine;
    try {
      mine = view.editor.read(); // edits made while the conflict was shown count too
    } catch (error) {
      mine = conflict.mine;
    }
    const merged = rebase(conflict.base.sensors, mine, conflict.current.sensors);
    hideConflict();
    setBase(conflict.current, merged);
    message(
      "desired-message",
      "rebased on version " + conflict.current.version + " with your edits on top: check, then save",
      "",
    );
  }

  // -- outputs ----------------------------------------------------------------------------------

  // name -> { row, driver, cells, input, edited }: the rows as built, kept across reloads.
  const outputRows = new Map();

  function outputValue(value) {
    return typeof value === "number" ? String(Number(value.toFixed(4))) : "—";
  }

  function outputWhere(settings) {
    if (typeof settings.pin === "number") return "GPIO" + settings.pin;
    const at = typeof settings.address === "number" ? " at " + hex(settings.address) : "";
    const bus = settings.bus === 1 ? "" : " on bus " + settings.bus;
    return "channel " + settings.channel + at + bus;
  }

  function outputRow(name, driver) {
    const row = el("tr");
    row.dataset.output = name;
    const cells = {};
    for (const key of ["name", "driver", "where", "desired", "applied", "reason"]) {
      cells[key] = el("td", "output-" + key);
      row.append(cells[key]);
    }
    cells.name.textContent = name;
    cells.driver.textContent = driver || "—";
    const entry = { row, driver, cells, input: null, edited: false };
    const control = el("td", "output-control");
    if (driver) {
      const input = el("input");
      if (driver === "digital_output") {
        input.type = "checkbox";
      } else {
        input.type = "number";
        input.step = "any";
      }
      input.setAttribute("aria-label", "new value of " + name);
      input.addEventListener("input", () => {
        entry.edited = true;
      });
      const button = el("button", null, "set");
      button.type = "button";
      button.addEventListener("click", () => setOutput(name, entry));
      control.append(input, button);
      entry.input = input;
    }
    row.append(control);
    return entry;
  }

  function showInput(entry, value) {
    if (entry.input.type === "checkbox") entry.input.checked = value === 1;
    else if (document.activeElement !== entry.input) entry.input.value = outputValue(value);
  }

  function renderOutputs() {
    const twin = view.twin;
    const desired = (twin && twin.desired && twin.desired.outputs) || {};
    const reported = (twin && twin.reported && twin.reported.outputs) || {};
    const names = [...new Set([...Object.keys(desired), ...Object.keys(reported)])].sort();
    $("outputs-panel").hidden = names.length === 0;
    const shown = [...outputRows.keys()];
    const driverOf = (name) => (Object.hasOwn(desired, name) ? desired[name].driver : null);
    if (
      shown.length !== names.length ||
      names.some((name, i) => shown[i] !== name || outputRows.get(name).driver !== driverOf(name))
    ) {
      // Built anew only when the outputs themselves change: a rebuilt input loses its focus.
      outputRows.clear();
      for (const name of names) outputRows.set(name, outputRow(name, driverOf(name)));
      $("output-rows").replaceChildren(...[...outputRows.values()].map((entry) => entry.row));
    }
    for (const name of names) {
      const entry = outputRows.get(name);
      const wanted = Object.hasOwn(desired, name) ? desired[name] : null;
      const applied = Object.hasOwn(reported, name) ? reported[name] : null;
      entry.cells.where.textContent = wanted ? outputWhere(wanted) : "—";
      entry.cells.desired.textContent = wanted ? outputValue(wanted.value) : "(not desired)";
      // The backend says who applied it: an agent on real or emulated pins, or the gateway
      // that simulates the device while its agent is away.
      entry.cells.applied.textContent = applied
        ? outputValue(applied.value) + (applied.backend ? " · " + applied.backend : "")
        : "—";
      entry.row.dataset.backend = (applied && applied.backend) || "";
      entry.cells.reason.textContent = (applied && applied.reason) || "";
      entry.row.dataset.applied = applied && applied.value !== null ? String(applied.value) : "";
      entry.row.dataset.reason = (applied && applied.reason) || "";
      if (entry.input && wanted && !entry.edited) showInput(entry, wanted.value);
    }
  }

  async function setOutput(name, entry) {
    const twin = view.twin;
    if (!twin || !twin.desired || !Object.hasOwn(twin.desired.outputs || {}, name)) return;
    let value;
    if (entry.input.type === "checkbox") {
      value = entry.input.checked ? 1 : 0;
    } else {
      value = entry.input.value.trim() === "" ? NaN : Number(entry.input.value);
      if (!Number.isFinite(value)) {
        message("outputs-message", name + ": a number is needed", "error");
        return;
      }
    }
    const base = twin.desired;
    const outputs = Object.assign({}, base.outputs);
    outputs[name] = Object.assign({}, base.outputs[name], { value });
    const device = view.device;
    message("outputs-message", "setting " + name + "…", "");
    const answer = await request("PUT", "devices/" + encodeURIComponent(device) + "/desired", {
      body: { sensors: base.sensors, outputs },
      ifMatch: '"' + base.version + '"',
    });
    if (device !== view.device) return;
    if (answer.ok) {
      entry.edited = false;
      message(
        "outputs-message",
        name + " set to " + outputValue(value) + " in version " + answer.body.version +
          "; waiting for the agent…",
        "ok",
      );
    } else {
      // The typed value stays: after a 409 the rows show the current version, to set again.
      message("outputs-message", name + " not set: " + answer.reason, "error");
    }
    loadTwin();
  }

  // -- loading ----------------------------------------------------------------------------------

  async function loadTwin() {
    // One request at a time; a change meanwhile asks for one more read.
    if (view.loading) {
      view.reload = true;
      return;
    }
    view.loading = true;
    try {
      const device = view.device;
      const answer = await request("GET", "devices/" + encodeURIComponent(device));
      if (device !== view.device) return;
      view.twin = answer.ok ? answer.body : null;
      renderTwin();
      renderConfigState();
      renderOutputs();
      // An untouched form follows the gateway; an edited one keeps its base until saved, so
      // a change behind the operator's back ends in a 409 they can see, not a silent loss.
      if (view.twin && !view.dirty && !view.conflict) {
        const base = baseFromTwin(view.twin);
        if (!view.base || !same(base, view.base)) setBase(base);
      }
    } finally {
      view.loading = false;
      if (view.reload) {
        view.reload = false;
        loadTwin();
      }
    }
  }

  function shellQuote(text) {
    return /^[A-Za-z0-9_/.:=@%+,-]+$/.test(text) ? text : "'" + text.replace(/'/g, "'\\''") + "'";
  }

  function apiCommands(device) {
    // The API as this page reaches it: behind a proxy's path prefix too.
    const base = new URL(".", location.href).href.replace(/\/$/, "");
    const url = (path) => shellQuote(base + path);
    const id = encodeURIComponent(device);
    const version = view.twin && view.twin.desired ? view.twin.desired.version : 0;
    return [
      { title: "the twin from the API", command: "curl -s " + url("/devices/" + id) },
      {
        title: "its changes as they happen (Server-Sent Events)",
        command: "curl -sN " + url("/events?device=" + id),
      },
      {
        title: "the desired config and its ETag",
        command: "curl -si " + url("/devices/" + id + "/desired"),
      },
      {
        title: "change one field (JSON merge patch; the token from $EDGETWIN_API_TOKEN)",
        command:
          'curl -s -X PATCH -H "Authorization: Bearer $EDGETWIN_API_TOKEN" ' +
          "-H " +
          shellQuote('If-Match: "' + version + '"') +
          " -H 'Content-Type: application/json' -d " +
          shellQuote('{"sensors": {"env": {"interval": 2}}}') +
          " " +
          url("/devices/" + id + "/desired"),
      },
    ];
  }

  async function copy(text, button) {
    try {
      await navigator.clipboard.writeText(text);
      button.textContent = "copied";
      button.dataset.copied = "true";
    } catch (error) {
      // No clipboard access (a plain-http page on another host): select it for Ctrl+C.
      const code = button.parentElement.querySelector("code");
      const range = document.createRange();
      range.selectNodeContents(code);
      const selection = getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      button.textContent = "selected: press Ctrl+C";
      button.dataset.copied = "selected";
    }
    setTimeout(() => {
      button.textContent = "copy";
    }, 2500);
  }

  function commandNode(item) {
    const box = el("div", "command");
    const code = el("code", null, item.command);
    const button = el("button", "copy", "copy");
    button.type = "button";
    button.setAttribute("aria-label", "copy: " + item.title);
    button.addEventListener("click", () => copy(item.command, button));
    const pre = el("pre");
    pre.append(code);
    box.append(el("div", "sub", item.title), pre, button);
    return box;
  }

  async function loadWatch() {
    const device = view.device;
    const answer = await request("GET", "devices/" + encodeURIComponent(device) + "/watch");
    if (device !== view.device) return;
    const items = [...(answer.ok ? answer.body.commands : []), ...apiCommands(device)];
    const nodes = items.map(commandNode);
    if (!answer.ok) nodes.unshift(el("p", "sub", "MQTT commands unavailable: " + answer.reason));
    $("watch-commands").replaceChildren(...nodes);
  }

  // -- remove -----------------------------------------------------------------------------------

  async function removeDevice() {
    const device = view.device;
    message("remove-message", "removing…", "");
    const answer = await request("DELETE", "devices/" + encodeURIComponent(device));
    if (answer.ok) {
      message("remove-message", "", "");
      $("remove-confirm").hidden = true;
      location.hash = "#";
      return;
    }
    message("remove-message", "not removed: " + answer.reason, "error");
  }

  // -- the fleet page's add-device form ----------------------------------------------------------

  let addForm = null;

  function buildAddForm() {
    const panel = el("section", "panel add-device");
    panel.id = "add-device";
    panel.hidden = true;
    const field = (label, input) => {
      const box = el("label", "field");
      box.append(el("span", "field-name", label), input);
      return box;
    };
    const text = (id, placeholder) => {
      const input = el("input");
      input.id = id;
      input.type = "text";
      input.placeholder = placeholder;
      input.autocomplete = "off";
      input.spellcheck = false;
      return input;
    };
    const id = text("add-id", "e.g. greenhouse-07");
    const site = text("add-site", "optional");
    const labels = text("add-labels", "key=value, …");
    const sensors = el("div", "sensor-editor");
    sensors.id = "add-sensors";
    const editor = sensorEditor(sensors);
    editor.set({ env: { driver: "bme280", address: 0x76, interval: 5, backend: "auto" } });
    const more = el("button", null, "add sensor");
    more.type = "button";
    more.addEventListener("click", () => editor.add("", { driver: "" }));
    const submit = el("button", "primary", "add to the manifest");
    submit.id = "add-submit";
    submit.type = "button";
    const cancel = el("button", null, "cancel");
    cancel.type = "button";
    cancel.addEventListener("click", () => {
      panel.hidden = true;
    });
    const note = el("p", "form-message");
    note.id = "add-message";
    note.setAttribute("role", "status");
    const buttons = el("div", "form-buttons");
    buttons.append(more, cancel, submit);
    const row = el("div", "add-fields");
    row.append(field("id", id), field("site", site), field("labels", labels));
    panel.append(
      el("h3", null, "Add a device to the manifest"),
      el("p", "sub", "The gateway simulates it until its agent comes online."),
      row,
      sensors,
      buttons,
      note,
    );
    submit.addEventListener("click", async () => {
      const body = { id: id.value.trim() };
      try {
        if (site.value.trim()) body.site = site.value.trim();
        body.labels = parsePairs(labels.value, "labels");
        body.sensors = editor.read();
      } catch (error) {
        message("add-message", error.message, "error");
        return;
      }
      message("add-message", "adding…", "");
      const answer = await request("POST", "devices", { body });
      if (!answer.ok) {
        message("add-message", "not added: " + answer.reason, "error");
        return;
      }
      message("add-message", "added " + answer.body.id, "ok");
      id.value = "";
    });
    $("fleet-view").prepend(panel);
    return panel;
  }

  // -- wiring -----------------------------------------------------------------------------------

  function onRoute(device) {
    view.device = device;
    view.twin = null;
    view.base = null;
    view.dirty = false;
    view.awaiting = null;
    hideConflict();
    message("desired-message", "", "");
    message("outputs-message", "", "");
    outputRows.clear();
    $("output-rows").replaceChildren();
    $("outputs-panel").hidden = true;
    message("remove-message", "", "");
    $("remove-confirm").hidden = true;
    $("add-device-button").hidden = Boolean(device);
    if (addForm && device) addForm.hidden = true;
    if (!device) return;
    view.editor.set({});
    $("twin-docs").replaceChildren();
    $("watch-commands").replaceChildren();
    $("config-state").textContent = "";
    $("config-state").dataset.state = "";
    $("rejection").hidden = true;
    $("remove-name").textContent = device;
    // The watch commands after the twin: the curl example names its current version.
    loadTwin().then(loadWatch);
  }

  document.addEventListener("edgetwin:route", (event) => onRoute(event.detail.device));
  document.addEventListener("edgetwin:device-changed", (event) => {
    if (event.detail.device === view.device) loadTwin();
  });

  // Wired as the script runs (deferred: the document is parsed by then), before fleet.js's
  // DOMContentLoaded handler announces the first route.
  {
    view.editor = sensorEditor($("desired-editor"));
    $("desired-add-sensor").addEventListener("click", () => {
      view.editor.add("", { driver: "" }, markDirty);
      markDirty();
    });
    $("desired-discard").addEventListener("click", () => {
      hideConflict();
      view.dirty = false;
      message("desired-message", "", "");
      if (view.twin) setBase(baseFromTwin(view.twin));
    });
    $("desired-save").addEventListener("click", save);
    $("conflict-rebase").addEventListener("click", doRebase);
    $("remove-device").addEventListener("click", () => {
      $("remove-confirm").hidden = false;
    });
    $("remove-no").addEventListener("click", () => {
      $("remove-confirm").hidden = true;
    });
    $("remove-yes").addEventListener("click", removeDevice);
    $("add-device-button").addEventListener("click", () => {
      if (!addForm) addForm = buildAddForm();
      addForm.hidden = !addForm.hidden;
      if (!addForm.hidden) $("add-id").focus();
    });
  }
})();
