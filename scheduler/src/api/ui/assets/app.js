// Sluice's web UI: live updates of a run page over Server-Sent Events, and sortable tables.
// Every page works without this file; it only saves reloading.
"use strict";

// Script errors of the page, kept where a browser test (or a person in the console) can read them.
window.sluiceErrors = window.sluiceErrors || [];
window.addEventListener("error", (event) => window.sluiceErrors.push(String(event.message)));
window.addEventListener("unhandledrejection", (event) => window.sluiceErrors.push(String(event.reason)));
document.addEventListener("securitypolicyviolation", (event) =>
  window.sluiceErrors.push(`blocked by the page's policy: ${event.violatedDirective} ${event.blockedURI}`));
const consoleError = console.error.bind(console);
console.error = (...args) => {
  window.sluiceErrors.push(args.map(String).join(" "));
  consoleError(...args);
};

(function live() {
  const page = document.querySelector("[data-live]");
  if (!page || !window.EventSource) return;
  const source = new EventSource(page.getAttribute("data-live"));
  source.addEventListener("nodes", (event) => {
    const change = JSON.parse(event.data);
    for (const [id, status] of Object.entries(change)) {
      for (const node of document.querySelectorAll(`[data-node="${id}"]`)) {
        node.setAttribute("class", `node st-${status}`);
      }
    }
  });
  source.addEventListener("steps", (event) => {
    const change = JSON.parse(event.data);
    for (const [name, status] of Object.entries(change)) {
      for (const badge of document.querySelectorAll(`[data-status-of="${CSS.escape(name)}"]`)) {
        badge.textContent = status;
        badge.className = `badge st-${status}`;
      }
    }
  });
  source.addEventListener("log", (event) => {
    const log = JSON.parse(event.data);
    const tail = document.getElementById("stdout-tail");
    if (!tail) return;
    if (log.reset) tail.textContent = "";
    tail.textContent = (tail.textContent + log.text).slice(-200000);
    tail.scrollTop = tail.scrollHeight;
  });
  source.addEventListener("run", (event) => {
    const run = JSON.parse(event.data);
    const badge = document.querySelector("[data-run-status]");
    if (badge) {
      badge.textContent = run.status;
      badge.className = `badge st-${run.status}`;
    }
    if (run.ended) {
      source.close();
      // The details (exit codes, outputs, metrics) are on the page as rendered now.
      window.location.reload();
    }
  });
})();

(function sortable() {
  for (const table of document.querySelectorAll("table[data-sortable]")) {
    const heads = table.querySelectorAll("th");
    heads.forEach((th, column) => {
      th.classList.add("sortable");
      th.addEventListener("click", () => {
        const body = table.tBodies[0];
        const rows = Array.from(body.rows);
        const up = th.getAttribute("data-dir") !== "up";
        heads.forEach((h) => h.removeAttribute("data-dir"));
        th.setAttribute("data-dir", up ? "up" : "down");
        const key = (row) => {
          const text = row.cells[column] ? row.cells[column].textContent.trim() : "";
          const number = Number(text);
          return text !== "" && !Number.isNaN(number) ? number : text;
        };
        rows.sort((a, b) => {
          const x = key(a), y = key(b);
          const order = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
          return up ? order : -order;
        });
        rows.forEach((row) => body.appendChild(row));
      });
    });
  }
})();
