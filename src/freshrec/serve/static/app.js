// freshrec dashboard: polls /v1/stats once a second and draws SVG line charts.
// No library: a few dozen lines of SVG are enough, and nothing is fetched from a CDN.
"use strict";

const COLORS = ["#1f5fbf", "#e07b00", "#2a9d4b", "#b00020", "#7b3fbf", "#00838f", "#8d6e63", "#546e7a"];
const $ = (id) => document.getElementById(id);

function apiKey() { return localStorage.getItem("freshrec-key") || ""; }

async function api(path) {
  const headers = apiKey() ? { "X-API-Key": apiKey() } : {};
  const response = await fetch(path, { headers });
  if (response.status === 401 || response.status === 403) {
    $("key-form").hidden = false;
    throw new Error("an API key with read access is needed");
  }
  const body = await response.json();
  if (!response.ok) throw new Error(body.detail || response.statusText);
  return body;
}

function draw(svg, series, opts = {}) {
  // series: [{name, values: [number|null]}], all as long as t
  const w = 480, h = 160, left = 40, bottom = 18, top = 8;
  const all = series.flatMap((s) => s.values).filter((v) => v !== null && isFinite(v));
  const max = opts.max ?? Math.max(1e-9, ...all);
  const min = opts.min ?? Math.min(0, ...all);
  const n = Math.max(...series.map((s) => s.values.length), 2);
  const x = (i) => left + (i / (n - 1)) * (w - left - 4);
  const y = (v) => top + (1 - (v - min) / (max - min || 1)) * (h - top - bottom);
  let out = `<line class="axis" x1="${left}" y1="${h - bottom}" x2="${w}" y2="${h - bottom}"/>`;
  out += `<text x="2" y="${top + 8}">${fmt(max)}</text><text x="2" y="${h - bottom}">${fmt(min)}</text>`;
  out += `<text x="${left}" y="${h - 4}">-${n}s</text><text x="${w - 24}" y="${h - 4}">now</text>`;
  series.forEach((s, k) => {
    let d = "", pen = false;
    s.values.forEach((v, i) => {
      if (v === null || !isFinite(v)) { pen = false; return; }
      d += `${pen ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`;
      pen = true;
    });
    out += `<path d="${d}" stroke="${s.color || COLORS[k % COLORS.length]}"><title>${s.name}</title></path>`;
  });
  svg.innerHTML = out;
}

function fmt(v) {
  if (v === null || v === undefined) return "–";
  if (Math.abs(v) >= 1000) return v.toLocaleString(undefined, { maximumFractionDigits: 0 });
  return Number(v.toPrecision(3)).toString();
}

function rolling(hits, trials, width) {
  const out = [];
  let h = 0, t = 0;
  for (let i = 0; i < hits.length; i++) {
    h += hits[i]; t += trials[i];
    if (i >= width) { h -= hits[i - width]; t -= trials[i - width]; }
    out.push(t ? h / t : null);
  }
  return out;
}

async function refresh() {
  let data;
  try { data = await api("/v1/stats"); } catch (e) { $("learner").textContent = e.message; return; }
  const st = data.status, se = data.series;
  $("model-version").textContent = st.model_version ?? "none yet";
  $("learner").textContent = st.learner;
  $("catalog-items").textContent = fmt(st.catalog_items);
  $("log-offset").textContent = fmt(st.log_offset);
  $("hit-rate").textContent = st.hit_rate === null ? "–" : (100 * st.hit_rate).toFixed(1) + " %";
  $("quarantined").textContent = `${fmt(st.quarantined_users)} (${fmt(st.quarantined_events)} events)`;
  const types = Object.keys(se.events);
  draw($("chart-events"), types.map((t) => ({ name: t, values: se.events[t] })));
  $("legend-events").innerHTML = types.map((t, k) => `<span><i style="background:${COLORS[k % COLORS.length]}"></i>${t}</span>`).join("");
  draw($("chart-hits"), [{ name: "hit rate", values: rolling(se.hits, se.trials, 60) }], { min: 0 });
  const g = (key) => se.gauges.map((x) => (x && x[key] !== undefined ? x[key] : null));
  draw($("chart-lag"), [{ name: "events", values: g("lag_events") }]);
  draw($("chart-lag-s"), [{ name: "seconds", values: g("lag_seconds") }]);
  draw($("chart-loss"), [{ name: "loss", values: g("loss") }]);
  draw($("chart-requests"), [{ name: "requests", values: se.requests }]);
  await refreshExperiment();
  document.body.dataset.updated = String(Date.now());
}

const armSeries = {};  // arm -> click-through sampled once a second since the page opened

function interval(values) {
  return `[${(100 * values[0]).toFixed(1)}, ${(100 * values[1]).toFixed(1)}]`;
}

function percent(v) { return v === null || v === undefined ? "–" : (100 * v).toFixed(1) + " %"; }

async function refreshExperiment() {
  let data;
  try { data = await api("/v1/experiments"); } catch (e) { return; }
  const ex = data.experiments[0];
  $("experiment").hidden = !ex;
  if (!ex) return;
  $("experiment-name").textContent = ex.name;
  const serving = ex.serving_arms ? "arms serving" : "default model serving everyone";
  $("experiment-status").textContent = `${ex.status}${ex.winner ? ` (winner ${ex.winner})` : ""}, ${serving}`;
  const arms = Object.entries(ex.arms);
  $("arms").tBodies[0].replaceChildren(...arms.map(([name, a]) => {
    const tr = document.createElement("tr");
    tr.dataset.arm = name;
    let vs = name === ex.control ? "control" : "–";
    if (a.difference !== null && a.difference !== undefined) {
      vs = `${(100 * a.difference).toFixed(1)} pts ${interval(a.difference_interval)}${a.significant ? " significant" : ""}`;
    }
    const cells = [
      name, `${(100 * a.share).toFixed(0)} %`, a.own_model ? (a.model_version ?? a.learner ?? "–") : "default",
      fmt(a.lists), `${percent(a.click_through)} ${interval(a.click_through_interval)}`,
      `${percent(a.hit_rate)} ${interval(a.hit_rate_interval)}`, vs,
    ];
    tr.replaceChildren(...cells.map((text) => { const td = document.createElement("td"); td.textContent = text; return td; }));
    return tr;
  }));
  arms.forEach(([name, a]) => {
    const values = (armSeries[name] = armSeries[name] || []);
    values.push(a.click_through);
    if (values.length > 600) values.shift();
  });
  draw($("chart-arms"), arms.map(([name]) => ({ name, values: armSeries[name] })), { min: 0 });
  $("legend-arms").innerHTML = arms.map(([name], k) => `<span><i style="background:${COLORS[k % COLORS.length]}"></i>${name}</span>`).join("");
}

function itemLink(id, title) {
  const a = document.createElement("a");
  a.textContent = title || id;
  a.title = id;
  a.addEventListener("click", () => showSimilar(id, title));
  return a;
}

async function showUser(userId) {
  $("user-error").textContent = "";
  try {
    const [recs, hist] = await Promise.all([
      api(`/v1/users/${encodeURIComponent(userId)}/recommendations?k=10&explain=true`),
      api(`/v1/users/${encodeURIComponent(userId)}/history?n=20`),
    ]);
    const variant = recs.variant && recs.variant !== "default" ? `, arm ${recs.variant}` : "";
    $("rec-version").textContent = (recs.model_version ? `model ${recs.model_version}` : "(no model yet)") + variant;
    const ol = $("recs");
    ol.replaceChildren(...recs.items.map((it) => {
      const li = document.createElement("li");
      li.append(itemLink(it.item_id, it.title));
      const score = document.createElement("span");
      score.className = "score"; score.textContent = fmt(it.score);
      li.append(score);
      const why = document.createElement("span");
      why.className = "why"; why.textContent = it.explanation || "";
      li.append(why);
      return li;
    }));
    $("history").tBodies[0].replaceChildren(...hist.events.map((e) => {
      const tr = document.createElement("tr");
      const when = document.createElement("td"); when.textContent = new Date(e.timestamp * 1000).toLocaleString();
      const what = document.createElement("td"); what.textContent = e.type + (e.value !== null ? ` ${e.value}` : "");
      const item = document.createElement("td"); item.append(itemLink(e.item_id, e.title));
      tr.append(when, what, item);
      return tr;
    }));
  } catch (e) { $("user-error").textContent = e.message; }
}

async function showSimilar(itemId, title) {
  $("similar-to").textContent = title || itemId;
  try {
    const sim = await api(`/v1/items/${encodeURIComponent(itemId)}/similar?k=10`);
    $("similar").replaceChildren(...sim.items.map((it) => {
      const li = document.createElement("li");
      li.append(itemLink(it.item_id, it.title));
      const score = document.createElement("span");
      score.className = "score"; score.textContent = fmt(it.score);
      li.append(score);
      return li;
    }));
  } catch (e) { $("user-error").textContent = e.message; }
}

$("user-form").addEventListener("submit", (ev) => { ev.preventDefault(); showUser($("user-id").value.trim()); });
$("key-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  localStorage.setItem("freshrec-key", $("key").value);
  $("key-form").hidden = true;
  refresh();
});
const params = new URLSearchParams(location.search);
if (params.get("user")) { $("user-id").value = params.get("user"); showUser(params.get("user")); }
refresh();
setInterval(refresh, 1000);
