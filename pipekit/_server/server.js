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
    fillSelect(f.status, ["queued", "running", "succeeded", "failed", "cancelled", "interrupted", "error"]);
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

  function runPage() {
    const id = body.dataset.run;
    const live = document.getElementById("live");
    const frame = document.getElementById("report");
    let stream = null;
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
      if (run.run_id && !frame.getAttribute("src")) frame.setAttribute("src", "/runs/" + id + "/report");
      const going = run.status === "queued" || run.status === "running";
      if (going && !stream) follow();
      return going;
    }
    function follow() {
      stream = new EventSource("/api/runs/" + id + "/events");
      stream.onmessage = (e) => {
        const d = JSON.parse(e.data);
        const line = el("div", d.stage + " | " + d.line, "line");
        line.dataset.stage = d.stage;
        live.appendChild(line);
      };
      stream.addEventListener("end", () => { stream.close(); refresh(true); });
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

  if (body.dataset.page === "runs") runsPage();
  if (body.dataset.page === "run") runPage();
})();
