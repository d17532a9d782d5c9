// Airlock console: progressive enhancement only (every page works without it).
// - <time data-rel> shows a relative time (absolute stays in the title on hover);
// - #events[data-stream] follows the session's SSE stream and appends new events, and a
//   running command's output as it arrives;
// - #sessions[data-refresh] re-reads the sessions list (live statuses);
// - #inbox[data-stream] follows the approvals inbox over SSE (data-poll is the fallback).
"use strict";
function rel(iso) {
  const s = Math.round((Date.now() - Date.parse(iso)) / 1000);
  const a = Math.abs(s), f = s >= 0 ? " ago" : " from now";
  if (a < 60) return a + "s" + f;
  if (a < 3600) return Math.round(a / 60) + "m" + f;
  if (a < 86400) return Math.round(a / 3600) + "h" + f;
  return Math.round(a / 86400) + "d" + f;
}
function relTimes() {
  document.querySelectorAll("time[data-rel]").forEach(t => {
    t.title = t.getAttribute("datetime");
    t.textContent = rel(t.getAttribute("datetime"));
  });
}
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
function renderEvent(ev) {
  const d = el("div", "ev ev-" + ev.kind);
  d.dataset.seq = ev.seq;
  const head = el("div", "mut");
  head.appendChild(el("span", "mono", "#" + ev.seq + " " + ev.kind + " "));
  const t = el("time");
  t.setAttribute("datetime", new Date(ev.ts).toISOString());
  t.setAttribute("data-rel", "");
  head.appendChild(t);
  d.appendChild(head);
  const body = JSON.stringify(ev.data, null, 2);
  if (body.length > 600) {
    const det = el("details");
    det.appendChild(el("summary", "", body.slice(0, 120).replace(/\s+/g, " ") + " …"));
    det.appendChild(el("pre", "mono", body));
    d.appendChild(det);
  } else {
    d.appendChild(el("pre", "mono", body));
  }
  return d;
}
function follow(box) {
  const url = box.dataset.stream + "?after=" + (box.dataset.after || "0");
  const src = new EventSource(url);
  src.onmessage = null;
  const onEvent = m => {
    let ev;
    try { ev = JSON.parse(m.data); } catch (_) { return; }
    if (!ev || ev.seq === undefined) return;
    if (box.querySelector('[data-seq="' + ev.seq + '"]')) return;
    if (ev.kind === "tool_result" && ev.data && ev.data.call_id) {
      box.querySelectorAll(".ev-running").forEach(d => { if (d.dataset.call === ev.data.call_id) d.remove(); });
    }
    box.appendChild(renderEvent(ev));
    box.dataset.after = ev.seq;
    relTimes();
    const st = document.getElementById("status");
    if (st && ev.kind === "status" && ev.data && ev.data.status) {
      st.textContent = ev.data.status;
      st.className = "st st-" + ev.data.status;
    }
  };
  ["message", "status", "user_message", "model_request", "model_response", "model_error",
   "tool_calls", "tool_started", "tool_result", "error"].forEach(k => src.addEventListener(k, onEvent));
  // A running command's output as the sandbox prints it (not stored: its tool_result,
  // appended when the command ends, holds all of it and replaces this block).
  src.addEventListener("exec_output", m => {
    let c;
    try { c = JSON.parse(m.data); } catch (_) { return; }
    if (!c || !c.call_id) return;
    let live = Array.from(box.querySelectorAll(".ev-running")).find(d => d.dataset.call === c.call_id);
    if (!live) {
      live = el("div", "ev ev-running");
      live.dataset.call = c.call_id;
      live.appendChild(el("div", "mut", "output of " + c.call_id + " (running…)"));
      live.appendChild(el("pre", "mono live-out"));
      box.appendChild(live);
    }
    const pre = live.querySelector("pre");
    const span = el("span", c.stream === "stderr" ? "err" : "", c.data);
    pre.appendChild(span);
    pre.scrollTop = pre.scrollHeight;
  });
  src.onerror = () => { src.close(); };
}
// The inbox follows its SSE stream (the server sends the re-rendered, escaped table when the
// pending set changes); if the stream fails it falls back to re-fetching every 2 s.
function pollInbox(box) {
  setInterval(async () => {
    try {
      const r = await fetch(box.dataset.poll, { credentials: "same-origin" });
      if (r.ok) { box.innerHTML = await r.text(); relTimes(); }
    } catch (_) { /* keep the last view */ }
  }, 2000);
}
function streamInbox(box) {
  if (!window.EventSource) { pollInbox(box); return; }
  const src = new EventSource(box.dataset.stream);
  let opened = false;
  src.addEventListener("open", () => { opened = true; box.dataset.live = "1"; });
  src.addEventListener("inbox", m => { box.innerHTML = m.data; relTimes(); });
  src.onerror = () => {
    if (!opened) { src.close(); delete box.dataset.live; if (box.dataset.poll) pollInbox(box); }
  };
}
// The sessions list keeps its statuses live: it re-reads this same page (same filters, one
// database page) and swaps the table in.
function refreshList(box) {
  setInterval(async () => {
    if (document.hidden) return;
    try {
      const r = await fetch(location.href, { credentials: "same-origin" });
      if (!r.ok) return;
      const doc = new DOMParser().parseFromString(await r.text(), "text/html");
      const fresh = doc.getElementById(box.id);
      if (fresh) { box.innerHTML = fresh.innerHTML; relTimes(); }
    } catch (_) { /* keep the last view */ }
  }, Number(box.dataset.refresh) || 3000);
}
document.addEventListener("DOMContentLoaded", () => {
  relTimes();
  setInterval(relTimes, 15000);
  const ev = document.getElementById("events");
  if (ev && ev.dataset.stream) follow(ev);
  const list = document.getElementById("sessions");
  if (list && list.dataset.refresh) refreshList(list);
  const inbox = document.getElementById("inbox");
  if (inbox && inbox.dataset.stream) streamInbox(inbox);
  else if (inbox && inbox.dataset.poll) pollInbox(inbox);
});
