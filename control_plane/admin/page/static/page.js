// The routeplane status page: polls the admin address's /api/* once a second and redraws
// its tables. Every value from the registry or a proxy goes into the page as text
// (textContent, never as markup), and the page's Content-Security-Policy allows no inline
// script. The admin token, when one is set, travels in the page's HttpOnly cookie, which
// fetch sends on its own (same origin); this script never sees it.
"use strict";

const POLL_MS = 1000;
const PAGE_SIZE = 100;
let serversOffset = 0;

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "–" : String(text);
  if (className) {
    td.className = className;
  }
  row.appendChild(td);
  return td;
}

function number(row, value) {
  return cell(row, value, "number");
}

function fill(tableId, rows) {
  document.querySelector("#" + tableId + " tbody").replaceChildren(...rows);
}

function range(id, answer, kind) {
  const shown = answer[kind].length;
  const first = shown ? answer.offset + 1 : 0;
  document.getElementById(id).textContent =
    "(" + first + "–" + (answer.offset + shown) + " of " + answer.total + ")";
}

function serverRows(answer) {
  return answer.servers.map((server) => {
    const tr = document.createElement("tr");
    tr.dataset.server = server.name;
    cell(tr, server.name);
    cell(tr, (server.hostnames || []).join(", "));
    cell(tr, server.protocol);
    cell(tr, (server.regions || []).join(", ") || "any");
    cell(tr, server.cold_start ? server.cold_start.mode : null);
    const scaling = server.autoscaling;
    cell(tr, scaling
      ? scaling.min_replicas + "–" + scaling.max_replicas + " at " + scaling.target_concurrency
      : "off");
    const replicas = Object.entries(server.replicas || {})
      .map(([region, counts]) => region + " " + counts.ready + "/" + counts.draining);
    cell(tr, replicas.join(", "));
    return tr;
  });
}

function loadRows(answer) {
  const rows = [];
  for (const server of answer.servers) {
    for (const load of server.load) {
      const tr = document.createElement("tr");
      tr.dataset.server = load.server;
      tr.dataset.region = load.region;
      tr.dataset.total = String(load.region === "*");
      cell(tr, load.server);
      cell(tr, load.region);
      number(tr, load.ready_replicas);
      number(tr, load.in_flight);
      number(tr, load.requests_per_second);
      number(tr, load.errors_per_second);
      number(tr, load.desired_replicas);
      number(tr, load.cold_starts);
      number(tr, load.utilization);
      rows.push(tr);
    }
  }
  return rows;
}

function proxyRows(answer) {
  return answer.proxies.map((node) => {
    const tr = document.createElement("tr");
    tr.dataset.node = node.node_id;
    cell(tr, node.node_id);
    cell(tr, node.group);
    cell(tr, node.address);
    cell(tr, node.client + (node.worker ? " (worker " + node.worker + ")" : ""));
    cell(tr, node.streams
      .map((s) => s.service + " " + s.protocol + (s.on_demand ? " on-demand" : ""))
      .join(", "));
    const types = cell(tr, "");
    const errors = [];
    for (const stream of node.streams) {
      for (const [type, status] of Object.entries(stream.types)) {
        const span = document.createElement("span");
        span.className = status.state;
        span.dataset.type = type;
        span.dataset.state = status.state;
        span.textContent = type + " " + status.state + " (" + status.nacks + ") ";
        types.appendChild(span);
        if (status.last_error) {
          errors.push(type + ": " + status.last_error);
        }
      }
    }
    cell(tr, errors.join("; ")).className = "nack";
    return tr;
  });
}

function problemRows(answer) {
  return answer.problems.map((problem) => {
    const tr = document.createElement("tr");
    tr.dataset.kind = problem.kind;
    tr.dataset.name = problem.name;
    for (const key of ["kind", "name", "field", "value", "message"]) {
      cell(tr, problem[key]);
    }
    return tr;
  });
}

async function get(path) {
  const response = await fetch(path, { credentials: "same-origin", cache: "no-store" });
  if (!response.ok) {
    throw new Error(path + ": HTTP " + response.status);
  }
  return response.json();
}

async function poll() {
  const status = document.getElementById("status");
  try {
    const [servers, proxies, problems] = await Promise.all([
      get("/api/servers?offset=" + serversOffset + "&limit=" + PAGE_SIZE),
      get("/api/proxies?limit=" + PAGE_SIZE),
      get("/api/problems?limit=" + PAGE_SIZE),
    ]);
    fill("servers", serverRows(servers));
    fill("load", loadRows(servers));
    fill("proxies", proxyRows(proxies));
    fill("problems", problemRows(problems));
    range("servers-range", servers, "servers");
    range("proxies-range", proxies, "proxies");
    range("problems-range", problems, "problems");
    document.getElementById("servers-prev").disabled = serversOffset === 0;
    document.getElementById("servers-next").disabled =
      serversOffset + PAGE_SIZE >= servers.total;
    const convergence = document.getElementById("convergence");
    convergence.dataset.synced = String(proxies.convergence.synced);
    convergence.dataset.nodes = String(proxies.convergence.nodes);
    convergence.textContent =
      proxies.convergence.synced + " of " + proxies.convergence.nodes + " proxies synced";
    document.getElementById("unanswered").textContent = proxies.unanswered.length
      ? "not listed: " + proxies.unanswered.join("; ")
      : "";
    status.dataset.state = "live";
    status.textContent = "updated " + new Date().toLocaleTimeString();
  } catch (error) {
    status.dataset.state = "error";
    status.textContent = String(error.message || error);
  }
}

function start() {
  document.getElementById("servers-prev").addEventListener("click", () => {
    serversOffset = Math.max(0, serversOffset - PAGE_SIZE);
    poll();
  });
  document.getElementById("servers-next").addEventListener("click", () => {
    serversOffset += PAGE_SIZE;
    poll();
  });
  const loop = async () => {
    await poll(); // one poll at a time: the next starts a second after this one ends
    setTimeout(loop, POLL_MS);
  };
  loop();
}

document.addEventListener("DOMContentLoaded", start);
