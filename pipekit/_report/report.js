const data = JSON.parse(document.getElementById('pipekit-data').textContent);
const FILL = %FILL%;
const NS = 'http://www.w3.org/2000/svg';
function el(tag, attrs, text) {
  const e = tag.startsWith('svg:') ? document.createElementNS(NS, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}
function secs(v) { return v === null || v === undefined ? '-' : v.toFixed(2) + ' s'; }
const run = data.run;
document.getElementById('title').textContent = 'pipekit: ' + run.pipeline + ' ' + run.status;
document.getElementById('meta').textContent = 'run ' + run.id + ' \u00b7 started ' + run.started +
  ' by ' + run.user + ' \u00b7 ' + secs(run.duration) + ' \u00b7 branch ' + (run.branch || '-') +
  ' at ' + (run.commit || '-') + ' \u00b7 ' + run.argv;
const params = document.getElementById('params');
for (const [k, v] of Object.entries(data.params)) {
  const tr = el('tr'); tr.append(el('th', {}, k), el('td', {}, v)); params.append(tr);
}
if (!Object.keys(data.params).length) params.append(el('tr', {}, 'no parameters'));
const byName = {};
for (const s of data.stages) byName[s.name] = s;
const W = data.dag.w, H = data.dag.h, GX = data.dag.gx, GY = data.dag.gy;
// the graph scales down to the page's width (never wider than its natural size); the wheel
// zooms around the pointer, a drag pans, a double-click shows it whole again
function zoomAndPan(svg, view) {
  let k = 1, tx = 0, ty = 0, drag = null;
  const apply = () => view.setAttribute('transform', 'translate(' + tx + ',' + ty + ') scale(' + k + ')');
  const units = () => data.dag.width / svg.getBoundingClientRect().width;  // viewBox units per pixel
  svg.addEventListener('wheel', e => {
    e.preventDefault();
    const r = svg.getBoundingClientRect(), u = units();
    const px = (e.clientX - r.left) * u, py = (e.clientY - r.top) * u;
    const next = Math.min(8, Math.max(0.2, k * Math.exp(-e.deltaY / 500)));
    tx = px - (px - tx) * next / k; ty = py - (py - ty) * next / k; k = next;
    apply();
  }, {passive: false});
  svg.addEventListener('mousedown', e => { drag = {x: e.clientX, y: e.clientY, tx: tx, ty: ty}; });
  window.addEventListener('mousemove', e => {
    if (!drag) return;
    const u = units();
    tx = drag.tx + (e.clientX - drag.x) * u; ty = drag.ty + (e.clientY - drag.y) * u;
    apply();
  });
  window.addEventListener('mouseup', () => { drag = null; });
  svg.addEventListener('dblclick', () => { k = 1; tx = 0; ty = 0; apply(); });
  apply();
}
function drawDag() {
  const svg = document.getElementById('dag');
  svg.setAttribute('viewBox', '0 0 ' + data.dag.width + ' ' + data.dag.height);
  svg.setAttribute('preserveAspectRatio', 'xMinYMin meet');
  svg.style.maxWidth = data.dag.width + 'px';
  const defs = el('svg:defs');
  const marker = el('svg:marker', {id: 'dag-arrow', viewBox: '0 0 10 10', refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse'});
  marker.append(el('svg:path', {d: 'M0,0 L10,5 L0,10 z', fill: '#57606a'}));
  defs.append(marker);
  const view = el('svg:g', {id: 'dag-view'});
  svg.append(defs, view);
  const pos = s => [10 + s.layer * (W + GX), GY + s.row * (H + GY)];
  for (const e of data.dag.edges) {
    const d = 'M' + e.points.map(p => p[0] + ',' + p[1]).join(' L');
    view.append(el('svg:path', {class: 'edge', 'data-from': e.from, 'data-to': e.to, d: d, fill: 'none', stroke: '#8c959f', 'stroke-width': 1.5, 'marker-end': 'url(#dag-arrow)'}));
  }
  for (const s of data.stages) {
    const [x, y] = pos(s);
    const g = el('svg:g', {class: 'node', 'data-stage': s.name, 'data-status': s.status});
    g.append(el('svg:rect', {x: x, y: y, width: W, height: H, rx: 5, fill: FILL[s.status] || '#fff', stroke: '#57606a'}));
    g.append(el('svg:text', {x: x + 8, y: y + 14}, s.name.length > 24 ? s.name.slice(0, 23) + '\u2026' : s.name));
    g.append(el('svg:text', {x: x + 8, y: y + 28, class: s.status}, s.status + ' \u00b7 ' + secs(s.duration)));
    g.addEventListener('click', () => select(s.name));
    view.append(g);
  }
  zoomAndPan(svg, view);
}
function drawTimeline() {
  const svg = document.getElementById('timeline');
  const ran = data.stages.filter(s => s.started !== null).sort((a, b) => a.started - b.started);
  const end = Math.max(0.001, run.duration || 0, ...ran.map(s => s.started + (s.duration || 0)));
  const X = 180, WIDTH = 700, ROW = 22;
  svg.setAttribute('viewBox', '0 0 ' + (X + WIDTH + 120) + ' ' + (ran.length * ROW + 10));
  svg.style.maxWidth = (X + WIDTH + 120) + 'px';
  const sx = t => X + (t / end) * WIDTH;
  ran.forEach((s, i) => {
    const y = 5 + i * ROW;
    const g = el('svg:g', {class: 'bar', 'data-stage': s.name});
    g.append(el('svg:text', {x: 0, y: y + 13}, s.name));
    if (s.ready !== null && s.ready < s.started)
      g.append(el('svg:rect', {x: sx(s.ready), y: y + 4, width: Math.max(1, sx(s.started) - sx(s.ready)), height: 8, fill: '#d0d7de', class: 'wait'}));
    g.append(el('svg:rect', {x: sx(s.started), y: y, width: Math.max(2, sx(s.started + (s.duration || 0)) - sx(s.started)), height: 16, fill: FILL[s.status] || '#ddd', stroke: '#57606a', class: 'run'}));
    for (const t of s.retries || [])
      g.append(el('svg:line', {x1: sx(t), y1: y - 2, x2: sx(t), y2: y + 18, stroke: '#cf222e', 'stroke-width': 2, class: 'retry'}));
    const note = secs(s.duration) + (s.attempts > 1 ? ' (' + s.attempts + ' attempts)' : '');
    g.append(el('svg:text', {x: sx(s.started + (s.duration || 0)) + 6, y: y + 13}, note));
    g.addEventListener('click', () => select(s.name));
    svg.append(g);
  });
}
function select(name) {
  const s = byName[name];
  document.querySelectorAll('.node').forEach(n => n.classList.toggle('selected', n.dataset.stage === name));
  const box = document.getElementById('stage');
  box.replaceChildren();
  box.append(el('h2', {}, s.name), el('div', {class: 'status ' + s.status}, s.status + (s.reason ? ' (' + s.reason + ')' : '')));
  const facts = el('table');
  for (const [k, v] of [['image', s.image], ['defined at', s.location], ['duration', secs(s.duration)], ['attempts', s.attempts], ['exit code', s.exit_code]]) {
    const tr = el('tr'); tr.append(el('th', {}, k), el('td', {}, v === null || v === undefined ? '-' : v)); facts.append(tr);
  }
  box.append(facts);
  if (s.error) {
    box.append(el('h2', {}, 'Error'), el('div', {class: 'error', id: 'stage-error'}, s.error));
    box.append(el('h2', {}, 'Last lines'), el('pre', {id: 'stage-tail'}, s.tail.join('\n')));
  }
  if (s.commands.length) {
    box.append(el('h2', {}, 'Commands'));
    const t = el('table', {id: 'commands'});
    for (const c of s.commands) { const tr = el('tr'); tr.append(el('td', {}, c.exit_code), el('td', {}, secs(c.duration_s)), el('td', {}, c.command)); t.append(tr); }
    box.append(t);
  }
  for (const t of s.tests) {
    box.append(el('h2', {}, 'Tests'), el('div', {}, t.tests + ' tests: ' + (t.tests - t.failures - t.errors - t.skipped) + ' passed, ' + t.failures + ' failed, ' + t.errors + ' errors, ' + t.skipped + ' skipped'));
    for (const f of t.failed) { const d = el('details', {open: ''}); d.append(el('summary', {}, f.kind + ': ' + f.name), el('pre', {}, f.message)); box.append(d); }
  }
  if (s.artifacts.length) {
    box.append(el('h2', {}, 'Artifacts'));
    const t = el('table');
    for (const a of s.artifacts) { const tr = el('tr'); tr.append(el('td', {}, a.path), el('td', {}, a.size + ' B'), el('td', {}, a.sha256.slice(0, 12))); t.append(tr); }
    box.append(t);
  }
  const log = el('details', {id: 'stage-log'});
  log.append(el('summary', {}, 'Log (' + s.lines + ' lines)'));
  log.addEventListener('toggle', () => { if (log.open && log.children.length === 1) log.append(el('pre', {}, data.logs[s.name])); });
  box.append(log);
}
function search(q) {
  const hits = document.getElementById('hits');
  hits.replaceChildren();
  if (q.length < 2) return;
  let count = 0;
  for (const s of data.stages) {
    const lines = (data.logs[s.name] || '').split('\n');
    for (let i = 0; i < lines.length && count < 500; i++) {
      if (lines[i].includes(q)) {
        const d = el('div', {class: 'hit'}, s.name + ':' + (i + 1) + ': ' + lines[i]);
        d.addEventListener('click', () => select(s.name));
        hits.append(d); count++;
      }
    }
  }
  document.getElementById('hit-count').textContent = count + (count === 500 ? '+' : '') + ' lines';
}
document.getElementById('q').addEventListener('input', e => search(e.target.value));
drawDag();
drawTimeline();
const first = data.stages.find(s => s.status === 'failed') || data.stages[0];
if (first) select(first.name);
