// Grafter dashboard: local times with relative hints, live refresh of marked
// regions, confirmation of destructive actions, select-all, and the browser's
// time zone for rescheduling. No framework; served from the binary.
"use strict";

function relative(date) {
  const s = Math.round((Date.now() - date.getTime()) / 1000);
  const a = Math.abs(s);
  let text;
  if (a < 45) text = a + " s";
  else if (a < 3600) text = Math.round(a / 60) + " min";
  else if (a < 86400) text = Math.round(a / 3600) + " h";
  else text = Math.round(a / 86400) + " d";
  return s >= 0 ? text + " ago" : "in " + text;
}

function localizeTimes(root) {
  for (const el of root.querySelectorAll("time[datetime]")) {
    const date = new Date(el.getAttribute("datetime"));
    if (isNaN(date)) continue;
    el.title = el.getAttribute("datetime");
    el.textContent = date.toLocaleString() + " (" + relative(date) + ")";
  }
}

// Regions marked data-live="/url" reload their content from that URL until
// the content says data-live-done or the page is left: each time the event
// stream named by data-events says the job changed (docs/events.md), or,
// without one (or once it cannot connect), every data-interval ms.
function startLive(region) {
  const url = region.dataset.live;
  const every = parseInt(region.dataset.interval || "3000", 10);
  const done = () => region.querySelector("[data-live-done]");
  let loading = false, again = false;
  async function load() {
    if (loading) { again = true; return; }
    loading = true;
    try {
      const response = await fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } });
      if (response.ok) {
        region.innerHTML = await response.text();
        localizeTimes(region);
        region.dataset.updated = String(Date.now());
      }
    } catch (e) {
      // The server may be restarting; the next change or tick tries again.
    }
    loading = false;
    if (again) { again = false; load(); }
  }
  async function poll() {
    if (!document.hidden) await load();
    if (!done()) setTimeout(poll, every);
  }
  const stream = region.dataset.events;
  if (stream && window.EventSource && !done()) {
    const source = new EventSource(stream);
    source.addEventListener("open", () => { region.dataset.stream = "open"; });
    source.addEventListener("state", load);
    source.addEventListener("progress", load);
    source.addEventListener("end", () => {
      source.close();
      region.dataset.stream = "ended";
      load();
    });
    source.addEventListener("error", () => {
      // A refused stream (an expired token) is closed for good; a dropped
      // one reconnects by itself, resuming after its last event.
      if (source.readyState === EventSource.CLOSED) {
        region.dataset.stream = "closed";
        setTimeout(poll, every);
      }
    });
    return;
  }
  if (!done()) setTimeout(poll, every);
}

document.addEventListener("submit", (event) => {
  const button = event.submitter;
  const message = (button && button.dataset.confirm) || event.target.dataset.confirm;
  if (message && !window.confirm(message)) {
    event.preventDefault();
    return;
  }
  const offset = event.target.querySelector("input[name=tz_offset]");
  const when = event.target.querySelector("input[name=when]");
  if (offset && when && when.value) {
    offset.value = String(new Date(when.value).getTimezoneOffset());
  }
});

document.addEventListener("change", (event) => {
  if (event.target.matches("[data-select-all]")) {
    const table = event.target.closest("table");
    for (const box of table.querySelectorAll("input[name=ids]")) box.checked = event.target.checked;
  }
});

document.addEventListener("DOMContentLoaded", () => {
  localizeTimes(document);
  // The reschedule picker starts at the browser's own "now".
  for (const when of document.querySelectorAll("input[type=datetime-local][name=when]")) {
    const now = new Date(Date.now() - new Date().getTimezoneOffset() * 60000);
    when.value = now.toISOString().slice(0, 16);
  }
  for (const region of document.querySelectorAll("[data-live]")) startLive(region);
  // Keep "3 min ago" true on pages left open.
  setInterval(() => localizeTimes(document), 30000);
});
