// therasim studio: the state chart and the live Try-it turns. Small, hand-written, no framework.
// Server-rendered HTML is inserted as is: the server escapes every untrusted text (Jinja2).
"use strict";

const RISK = ["none", "passive", "active", "imminent"];

function chartData(t) {
  const line = (name, y, axis, color, dash) => ({
    x: t.turn, y: y, name: name, type: "scatter", mode: "lines+markers", yaxis: axis,
    line: { color: color, dash: dash || "solid", shape: axis === "y3" ? "hv" : "linear" },
  });
  return [
    line("SUDS", t.suds, "y", "#c0392b"),
    line("belief", t.belief, "y", "#8e44ad", "dot"),
    line("alliance", t.alliance, "y2", "#2f5d9e"),
    line("engagement", t.engagement, "y2", "#16a085", "dot"),
    line("risk", t.risk, "y3", "#d35400"),
  ];
}

const LAYOUT = {
  margin: { l: 60, r: 20, t: 20, b: 40 },
  legend: { orientation: "h", y: -0.12 },
  xaxis: { title: { text: "therapist turn" }, dtick: 1, anchor: "y3" },
  yaxis: { domain: [0.5, 1], range: [0, 100], title: { text: "0–100" } },
  yaxis2: { domain: [0.2, 0.45], range: [0, 1], title: { text: "0–1" } },
  yaxis3: { domain: [0, 0.15], range: [-0.3, 3.3], tickvals: [0, 1, 2, 3], ticktext: RISK, title: { text: "risk" } },
};

function drawChart(t) {
  const el = document.getElementById("chart");
  if (!el || !window.Plotly) return;
  window.Plotly.react(el, chartData(t), LAYOUT, { displayModeBar: false, responsive: true });
}

function csrf() {
  return document.querySelector('meta[name="csrf"]').content;
}

async function post(url, form) {
  const response = await fetch(url, {
    method: "POST",
    headers: { "Accept": "application/json", "X-CSRF-Token": csrf() },
    body: new URLSearchParams(new FormData(form)),
    credentials: "same-origin",
  });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function showStatus(s) {
  document.getElementById("phase").textContent = s.phase;
  document.getElementById("turn-count").textContent = s.turns;
  if (s.ended) {
    const ended = document.getElementById("ended");
    ended.textContent = " · ended: " + s.ended;
    ended.className = "ended";
    document.querySelectorAll("#turn-form textarea, #turn-form button, #run-form button.primary")
      .forEach((el) => { el.disabled = true; });
  }
  document.getElementById("session-error").textContent = s.error || "";
  drawChart(s.trajectory);
}

function addTurns(html) {
  const box = document.getElementById("transcript");
  box.insertAdjacentHTML("beforeend", html);
  box.lastElementChild && box.lastElementChild.scrollIntoView({ block: "nearest" });
}

function setBusy(text) {
  const busy = document.getElementById("busy");
  if (busy) busy.textContent = text;
}

function wireTurnForm(form) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = form.querySelector("button");
    button.disabled = true;
    setBusy("the patient is answering…");
    try {
      const s = await post(form.action, form);
      addTurns(s.html);
      showStatus(s);
      form.querySelector("textarea").value = "";
      setBusy("");
    } catch (err) {
      setBusy(String(err.message || err));
    } finally {
      if (!document.getElementById("ended").textContent) button.disabled = false;
      form.querySelector("textarea").focus();
    }
  });
  form.querySelector("textarea").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) form.requestSubmit();
  });
}

function wireRunForm(form, key) {
  let source = null;
  const stop = document.getElementById("stop");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (event.submitter === stop) {
      await post("/play/" + key + "/stop", form);
      if (source) source.close();
      setBusy("stopped");
      return;
    }
    try {
      await post(form.action, form);
    } catch (err) {
      setBusy(String(err.message || err));
      return;
    }
    setBusy("playing…");
    source = new EventSource("/play/" + key + "/stream");
    source.addEventListener("turn", (e) => { const s = JSON.parse(e.data); addTurns(s.html); showStatus(s); });
    source.addEventListener("failure", (e) => { setBusy(JSON.parse(e.data).error); source.close(); });
    source.addEventListener("end", (e) => { showStatus(JSON.parse(e.data)); setBusy(""); source.close(); });
    source.onerror = () => { source.close(); setBusy(""); };
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const data = document.getElementById("trajectory");
  if (data) drawChart(JSON.parse(data.textContent));
  const play = document.querySelector(".play[data-key]");
  const turnForm = document.getElementById("turn-form");
  if (turnForm) wireTurnForm(turnForm);
  const runForm = document.getElementById("run-form");
  if (runForm && play) wireRunForm(runForm, play.dataset.key);
});
