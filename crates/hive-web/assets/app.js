// Hive dashboard: live updates over server-sent events (the page's <main> is fetched
// again and swapped, at most every 300 ms, or as a costly page's `data-refresh-ms` says;
// never while the operator is typing in it), DAG node details, and confirmations.
(function () {
  "use strict";
  // One refresh at a time: a timer waiting, or a fetch in flight. Changes announced
  // meanwhile ask for one more once it is done, so a slow page never has requests piling
  // up, nor an older answer replacing a newer one.
  let timer = null;
  let inFlight = false;
  let again = false;
  let selected = null;
  // A refresh held back because the operator is editing a field in <main>: a swap would
  // throw away what they typed and their focus. It runs once they are done.
  let held = false;

  // Whether a field differs from what the server rendered (its default).
  function edited(el) {
    if (el instanceof HTMLSelectElement) {
      const options = Array.from(el.options);
      const rendered = options.findIndex((o) => o.defaultSelected);
      return el.selectedIndex !== (rendered < 0 && options.length ? 0 : rendered);
    }
    if (el.type === "checkbox" || el.type === "radio") return el.checked !== el.defaultChecked;
    return el.value !== el.defaultValue;
  }

  // The fields the operator changed since the last swap. Tracked by their events, not by
  // comparing every field with what the server rendered: a browser that restores a form
  // (Back, a reload) changes fields without the operator, and the page must stay live.
  let touched = new Set();

  // Whether a field in <main> has the focus, or holds what the operator changed since the
  // last swap (text typed into a field they then left, a status chosen, not yet sent).
  function editing() {
    const main = document.getElementById("main");
    if (!main) return false;
    const active = document.activeElement;
    if (active && main.contains(active) && active.matches("input, textarea, select")) {
      return true;
    }
    return Array.from(touched).some((el) => main.contains(el) && edited(el));
  }

  // Holds a refresh back while the operator edits, and says so on the live dot.
  function hold(on) {
    held = on;
    const dot = document.getElementById("live");
    if (!dot) return;
    dot.classList.toggle("held", on);
    dot.title = on ? "live updates wait until you leave or send the form" : "live updates";
  }

  // Once the operator is done (focus left the field, or a change was undone), the held
  // refresh runs. Checked a moment later: focus moving to the next field passes through
  // the page's body first.
  function resume() {
    setTimeout(() => {
      if (held && !editing()) {
        hold(false);
        schedule();
      }
    }, 0);
  }

  function refresh() {
    if (editing()) {
      hold(true);
      return;
    }
    inFlight = true;
    fetch(location.href, { headers: { "x-hive-partial": "1" } })
      .then((r) => (r.ok ? r.text() : Promise.reject(r.status)))
      .then((html) => {
        const doc = new DOMParser().parseFromString(html, "text/html");
        const fresh = doc.getElementById("main");
        const main = document.getElementById("main");
        // The operator may have started typing while the page was fetched.
        if (editing()) {
          hold(true);
          return;
        }
        if (fresh && main) {
          touched = new Set();
          main.replaceWith(fresh);
          wire();
          if (selected) show(selected);
        }
      })
      .catch(() => {})
      .finally(() => {
        inFlight = false;
        if (again) {
          again = false;
          schedule();
        }
      });
  }

  // A page that is costly to build (a large plan's) asks to be followed less often.
  function schedule() {
    if (timer) return;
    if (inFlight) {
      again = true;
      return;
    }
    const paced = document.querySelector("[data-refresh-ms]");
    const wait = paced ? Number(paced.dataset.refreshMs) || 300 : 300;
    timer = setTimeout(() => {
      timer = null;
      refresh();
    }, wait);
  }

  function show(id) {
    selected = id;
    const node = document.querySelector('.dag .node[data-subtask="' + CSS.escape(id) + '"]');
    const panel = document.getElementById("node-details");
    if (!node || !panel) return;
    document.querySelectorAll(".dag .node.selected").forEach((n) => n.classList.remove("selected"));
    node.classList.add("selected");
    panel.replaceChildren();
    const rows = [
      ["subtask", node.dataset.subtask],
      ["status", node.dataset.status],
      ["task", node.dataset.task],
      ["worker", node.dataset.worker || "—"],
      ["attempts", node.dataset.attempts],
      ["duration", node.dataset.duration || "—"],
      ["error", node.dataset.error || "—"],
    ];
    const dl = document.createElement("dl");
    for (const [k, v] of rows) {
      const dt = document.createElement("dt");
      dt.textContent = k;
      const dd = document.createElement("dd");
      dd.textContent = v;
      dl.append(dt, dd);
    }
    const a = document.createElement("a");
    a.href = "/tasks/" + encodeURIComponent(node.dataset.task);
    a.textContent = "open task";
    panel.append(dl, a);
  }

  function wire() {
    document.querySelectorAll(".dag .node").forEach((n) => {
      n.addEventListener("click", () => show(n.dataset.subtask));
      n.addEventListener("mouseenter", () => show(n.dataset.subtask));
    });
    document.querySelectorAll("form[data-confirm]").forEach((f) => {
      f.addEventListener("submit", (e) => {
        if (!window.confirm(f.dataset.confirm)) e.preventDefault();
      });
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    wire();
    if (!window.EventSource || !document.getElementById("main").hasAttribute("data-live")) return;
    const dot = document.getElementById("live");
    document.addEventListener("focusout", resume);
    const touch = (e) => {
      if (e.target instanceof Element && e.target.matches("input, textarea, select")) {
        touched.add(e.target);
      }
      resume();
    };
    document.addEventListener("input", touch);
    document.addEventListener("change", touch);
    const es = new EventSource("/events");
    es.onopen = () => dot && dot.classList.add("on");
    es.onerror = () => dot && dot.classList.remove("on");
    es.onmessage = schedule;
  });
})();
