// pipekit serve: the runs list and a run's page, built from the JSON API with textContent only.
"use strict";
(function () {
  const body = document.body;
  const el = (tag, text, cls) => {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  };
  const when = (t) => (t ? new Date(t * 1000).toLocaleString() : "");
  const secs = (d) => (d === null || d === undefined ? "" : d.toFixed(1) + "s");
  const getJSON = (url) => fetch(url, { credentials: "same-origin" }).then((r) => (r.ok ? r.json() : Promise.reject(r.status)));

  function fillSelect(select, values) {
    const have = new Set(Array.from(select.options).map((o) => o.value));
    for (const v of values) if (!have.has(v)) { const o = el("option", v); o.value = v; select.appendChild(o); }
  }

  function runsPage() {
    const tbody = document.querySelector("#runs tbody");
    const f = { project: document.getElementById("f-project"), branch: document.getElementById("f-branch"), status: document.getElementById("f-status") };
    fillSelect(f.status, ["queued", "running", "awaiting_approval", "succeeded", "failed", "cancelled", "interrupted", "error"]);
    const params = new URLSearchParams(location.search);
    for (const k of Object.keys(f)) {
      if (params.get(k)) { fillSelect(f[k], [params.get(k)]); f[k].value = params.get(k); }
      f[k].addEventListener("change", () => { refresh(); });
    }
    function refresh() {
      const q = new URLSearchParams();
      for (const k of Object.keys(f)) if (f[k].value) q.set(k, f[k].value);
      history.replaceState(null, "", q.toString() ? "?" + q : location.pathname);
      getJSON("/api/runs?" + q).then((runs) => {
        tbody.replaceChildren();
        for (const r of runs) {
          const tr = el("tr", null, "status-" + r.status);
          const link = el("a", "#" + r.id); link.href = "/runs/" + r.id;
          const first = el("td"); first.appendChild(link); tr.appendChild(first);
          for (const v of [r.project, r.branch, r.commit.slice(0, 12), r.trigger]) tr.appendChild(el("td", v));
          tr.appendChild(el("td", r.status, "status"));
          tr.appendChild(el("td", when(r.started))); tr.appendChild(el("td", secs(r.duration)));
          tbody.appendChild(tr);
        }
        fillSelect(f.project, runs.map((r) => r.project)); fillSelect(f.branch, runs.map((r) => r.branch));
      }).catch(() => {});
    }
    refresh();
    setInterval(refresh, 2000);
  }

  function hidden(name, value) {
    const i = el("input"); i.type = "hidden"; i.name = name; i.value = value; return i;
  }

  // a gate: its question, who may decide, and Approve / Reject forms while it awaits (logged in)
  function gateBox(id, g, awaiting) {
    const box = el("section", null, "gate"); box.dataset.stage = g.stage;
    box.appendChild(el("h2", "Approval: " + g.stage));
    box.appendChild(el("p", g.message, "message"));
    if (g.approvers.length) box.appendChild(el("p", "approvers: " + g.approvers.join(", "), "approvers"));
    if (g.deadline) box.appendChild(el("p", "times out at " + when(g.deadline), "deadline"));
    const d = g.decision;
    if (d) {
      const what = d.verdict + " by " + d.by + " at " + when(d.when) + (d.reason ? ": " + d.reason : "");
      box.appendChild(el("p", what, "decision decision-" + d.verdict));
      for (const [k, v] of Object.entries(d.params)) box.appendChild(el("p", k + " = " + v, "decision-param"));
      return box;
    }
    if (!awaiting || !body.dataset.csrf) return box;
    const approve = el("form", null, "approve"); approve.method = "post"; approve.action = "/api/runs/" + id + "/approvals";
    for (const [k, v] of [["csrf", body.dataset.csrf], ["stage", g.stage], ["decision", "approve"]]) approve.appendChild(hidden(k, v));
    for (const p of g.params) {
      const label = el("label", p.name + (p.help ? " (" + p.help + ")" : "") + " ");
      const input = el("input"); input.name = "param." + p.name; input.id = "param-" + g.stage + "-" + p.name;
      if (p.default !== null && p.default !== undefined) input.value = String(p.default); else input.required = true;
      label.appendChild(input); approve.appendChild(label);
    }
    const ok = el("button", "Approve"); ok.id = "approve-" + g.stage; approve.appendChild(ok);
    const reject = el("form", null, "reject"); reject.method = "post"; reject.action = approve.action;
    for (const [k, v] of [["csrf", body.dataset.csrf], ["stage", g.stage], ["decision", "reject"]]) reject.appendChild(hidden(k, v));
    const reason = el("input"); reason.name = "reason"; reason.id = "reason-" + g.stage; reason.required = true; reason.placeholder = "reason";
    reject.appendChild(reason);
    const no = el("button", "Reject"); no.id = "reject-" + g.stage; reject.appendChild(no);
    box.appendChild(approve); box.appendChild(reject);
    return box;
  }

  function runPage() {
    const id = body.dataset.run;
    const live = document.getElementById("live");
    const frame = document.getElementById("report");
    const refused = new URLSearchParams(location.search).get("refused");
    if (refused) { const n = document.getElementById("notice"); n.textContent = refused; n.hidden = false; }
    let stream = null;
    let shownGates = null;
    function show(run) {
      document.getElementById("title").textContent = "Run " + run.id + " · " + run.project + " · " + run.status;
      document.getElementById("facts").textContent =
        run.branch + " @ " + run.commit.slice(0, 12) + " · " + run.trigger + (run.triggered_by ? " by " + run.triggered_by : "") + (run.started ? " · started " + when(run.started) : "") +
        (run.duration !== null ? " · " + secs(run.duration) : "") + (run.error ? " · " + run.error : "");
      body.dataset.status = run.status;
      const tbody = document.querySelector("#stages tbody");
      tbody.replaceChildren();
      for (const s of run.stages) {
        const tr = el("tr", null, "status-" + s.status);
        tr.dataset.stage = s.name;
        for (const v of [s.name, s.status, secs(s.duration), s.error || ""]) tr.appendChild(el("td", v));
        tbody.appendChild(tr);
      }
      const gates = JSON.stringify([run.status, run.gates || []]);
      if (gates !== shownGates) {  // redrawn only when they change: an approver's typing stays
        shownGates = gates;
        const box = document.getElementById("gates");
        box.replaceChildren(...(run.gates || []).map((g) => gateBox(id, g, run.status === "awaiting_approval" && g.status === "awaiting_approval")));
      }
      if (run.run_id && !frame.getAttribute("src")) frame.setAttribute("src", "/runs/" + id + "/report");
      const going = run.status === "queued" || run.status === "running";
      if (going && !stream) follow();
      return going || run.status === "awaiting_approval";
    }
    function follow() {
      stream = new EventSource("/api/runs/" + id + "/events");
      stream.onmessage = (e) => {
        const d = JSON.parse(e.data);
        const line = el("div", d.stage + " | " + d.line, "line");
        line.dataset.stage = d.stage;
        live.appendChild(line);
      };
      stream.addEventListener("end", () => { stream.close(); stream = null; refresh(true); });
    }
    function refresh(reload) {
      getJSON("/api/runs/" + id).then((run) => {
        const going = show(run);
        if (reload && run.run_id) frame.setAttribute("src", "/runs/" + id + "/report?t=" + Date.now());
        if (going) setTimeout(refresh, 1000);
      }).catch(() => {});
    }
    refresh(false);
  }

  function deploymentsPage() {
    const tbody = document.querySelector("#deployments tbody");
    const select = document.getElementById("f-environment");
    const wanted = new URLSearchParams(location.search).get("environment");
    if (wanted) { fillSelect(select, [wanted]); select.value = wanted; }
    select.addEventListener("change", () => refresh());
    function refresh() {
      const q = new URLSearchParams(); if (select.value) q.set("environment", select.value);
      history.replaceState(null, "", q.toString() ? "?" + q : location.pathname);
      getJSON("/api/deployments?" + q).then((rows) => {
        tbody.replaceChildren();
        for (const d of rows) {
          const tr = el("tr", null, "outcome-" + d.outcome);
          tr.appendChild(el("td", d.environment)); tr.appendChild(el("td", d.project));
          const cell = el("td");
          if (d.run) { const a = el("a", "#" + d.run); a.href = "/runs/" + d.run; cell.appendChild(a); } else cell.textContent = d.run_id;
          tr.appendChild(cell);
          for (const v of [(d.commit || "").slice(0, 12), d.stage, d.approved_by || "", when(d.approved_at), when(d.started), d.outcome]) tr.appendChild(el("td", v));
          tbody.appendChild(tr);
        }
        fillSelect(select, rows.map((d) => d.environment));
      }).catch(() => {});
    }
    refresh();
    setInterval(refresh, 3000);
  }

  if (body.dataset.page === "runs") runsPage();
  if (body.dataset.page === "deployments") deploymentsPage();
  if (body.dataset.page === "run") runPage();
})();
