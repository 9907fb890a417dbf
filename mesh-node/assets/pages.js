// ClosedMesh pages: the capacity-tier toggle, and a periodic refresh that re-renders what the
// server rendered, from /api/models, /api/status and /api/mesh-share. The formatting matches
// mesh-node/src/pages.rs; keep the two in step.
(() => {
  'use strict';
  const body = document.body;
  const page = body.dataset.page;
  const refreshMs = Math.max(1000, Number(body.dataset.refreshMs) || 10000);
  const DASH = '\u2014';
  const TIERS = ['daily-driver', 'capacity', 'experimental'];
  const $ = (id) => document.getElementById(id);

  const isNum = (v) => typeof v === 'number' && Number.isFinite(v);
  const tps = (v) => (isNum(v) ? v.toFixed(2) : DASH);
  const ms = (v) => (isNum(v) ? Math.round(v) + ' ms' : DASH);
  const signedMs = (v) => (isNum(v) ? (v < 0 ? '\u2212' : '+') + Math.round(Math.abs(v)) + ' ms' : DASH);
  const gb = (v) => (isNum(v) ? v.toFixed(1) + ' GB' : DASH);
  const percent = (r) => Math.round(r * 100) + '%';
  const sharePct = (p) => p.toFixed(1).replace(/\.0$/, '') + '%';
  const plural = (n, one) => n + ' ' + one + (n === 1 ? '' : 's');
  const pad = (n) => String(n).padStart(2, '0');
  const minuteUtc = (s) => {
    if (!isNum(s)) return DASH;
    const d = new Date(s * 1000);
    return d.getUTCFullYear() + '-' + pad(d.getUTCMonth() + 1) + '-' + pad(d.getUTCDate()) + ' ' +
      pad(d.getUTCHours()) + ':' + pad(d.getUTCMinutes()) + ' UTC';
  };
  const clockUtc = (d) => pad(d.getUTCHours()) + ':' + pad(d.getUTCMinutes()) + ':' + pad(d.getUTCSeconds()) + ' UTC';

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === 'class') e.className = v;
      else e.setAttribute(k, v);
    }
    for (const c of children) e.append(c);
    return e;
  }
  const td = (cls, ...children) => el('td', { class: cls }, ...children);
  const code = (text) => el('code', {}, text);
  const setHidden = (node, hidden) => { if (node) node.hidden = hidden; };
  const replaceRows = (tbody, rows) => { if (tbody) tbody.replaceChildren(...rows); };

  function serving(kind, nodes) {
    switch (kind) {
      case 'solo': return 'solo \u00b7 1 node';
      case 'pipeline': return 'pipeline \u00b7 ' + plural(nodes, 'node');
      case 'multi_host': return 'replicas \u00b7 ' + plural(nodes, 'host');
      default: return 'not served';
    }
  }

  function efficiency(e) {
    if (e && ['green', 'amber', 'red'].includes(e.band)) return [e.band, percent(e.ratio)];
    return ['none', 'no measurement yet'];
  }

  function catalogRow(r) {
    const [band, bandText] = efficiency(r.mesh_efficiency);
    return el('tr', { class: 'model-row', 'data-model': r.name, 'data-tier': r.tier, 'data-band': band },
      td('model', r.name),
      td('serving', serving(r.split_kind, r.node_count)),
      td('size num', gb(r.size_gb)),
      td('through num', tps(r.through_tps_p50)),
      td('native num', tps(r.native_tps_p50)),
      td('efficiency', el('span', { class: 'band band-' + band }, bandText)),
      td('ttft num', ms(r.ttft_ms_p50)),
      td('native-ttft num', ms(r.native_ttft_ms_p50)),
      td('overhead num', signedMs(r.ttft_overhead_ms)),
      td('first-served', minuteUtc(r.first_served_at)));
  }

  function renderCatalog(catalog) {
    const models = catalog.models || [];
    setHidden($('catalog-empty'), models.length > 0);
    for (const tier of TIERS) {
      const rows = models.filter((r) => r.tier === tier);
      setHidden($('tier-' + tier), rows.length === 0);
      replaceRows($('rows-' + tier), rows.map(catalogRow));
      if (tier === 'capacity' && $('capacity-count')) $('capacity-count').textContent = plural(rows.length, 'model');
    }
  }

  function peerLabel(p) {
    const cell = td('peer', code(p.id));
    if (p.hostname) cell.append(' (' + p.hostname + ')');
    return cell;
  }

  function renderStatus(s) {
    $('node-id').textContent = s.node_id;
    $('mesh-id').textContent = s.mesh_id || DASH;
    $('peer-count').textContent = plural(s.peers.length, 'peer');

    const groups = [];
    for (const g of [s.my_split_group, ...s.peers.map((p) => p.split_group)]) {
      if (g && !groups.some((x) => x.model === g.model && x.host_id === g.host_id)) groups.push(g);
    }
    groups.sort((a, b) => (a.model < b.model ? -1 : a.model > b.model ? 1 : a.host_id < b.host_id ? -1 : a.host_id > b.host_id ? 1 : 0));
    setHidden($('splits-empty'), groups.length > 0);
    setHidden($('splits-table'), groups.length === 0);
    replaceRows($('split-rows'), groups.map((g) => el('tr', { class: 'split-row', 'data-model': g.model, 'data-host': g.host_id },
      td('model', g.model), td('host', code(g.host_id)), td('members', g.peer_ids.join(', ')),
      td('pooled num', gb(g.total_group_vram_gb)))));

    const verdicts = [];
    for (const p of s.peers) {
      for (const model of Object.keys(p.verify_by_model || {}).sort()) verdicts.push([p, model, p.verify_by_model[model]]);
    }
    setHidden($('verify-empty'), verdicts.length > 0);
    setHidden($('verify-table'), verdicts.length === 0);
    replaceRows($('verify-rows'), verdicts.map(([p, model, v]) => el('tr', { class: 'verify-row', 'data-peer': p.id, 'data-model': model, 'data-verdict': v.verdict },
      peerLabel(p), td('model', model), el('td', {}, el('span', { class: 'verdict verdict-' + v.verdict }, v.verdict)),
      td('agreement num', percent(v.agreement)), td('compared num', String(v.compared_tokens)), td('mode', v.mode),
      td('checked', minuteUtc(v.checked_at_unix_secs)))));

    setHidden($('peers-empty'), s.peers.length > 0);
    setHidden($('peers-table'), s.peers.length === 0);
    replaceRows($('peer-rows'), s.peers.map((p) => el('tr', { class: 'peer-row', 'data-peer': p.id },
      td('peer', code(p.id)), td('hostname', p.hostname || DASH), td('role', p.role), td('state', p.state),
      td('rtt num', p.rtt_ms === null || p.rtt_ms === undefined ? 'undialable' : p.rtt_ms + ' ms'),
      td('vram num', gb(p.vram_gb)), td('hosted', p.hosted_models.length ? p.hosted_models.join(', ') : DASH),
      td('inflight num', String(p.inflight_requests)))));
  }

  function renderShare(share) {
    setHidden($('share'), !share);
    setHidden($('share-unavailable'), !!share);
    if (!share) return;
    for (const [id, w] of [['24h', share.last_24h], ['7d', share.last_7d]]) {
      const card = $('share-' + id);
      const has = isNum(w.mesh_share_pct);
      const pct = card.querySelector('.pct');
      pct.textContent = has ? sharePct(w.mesh_share_pct) : DASH;
      pct.className = has ? 'pct' : 'pct none';
      card.querySelector('.note').textContent = has ? '' : 'no traffic yet';
      card.querySelector('.mesh').textContent = String(w.mesh);
      card.querySelector('.fallback').textContent = String(w.fallback);
      card.querySelector('.total').textContent = String(w.total);
    }
  }

  function renderMilestones(catalog) {
    const rows = (catalog.models || []).filter((r) => isNum(r.first_served_at));
    rows.sort((a, b) => a.first_served_at - b.first_served_at || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    setHidden($('milestones-empty'), rows.length > 0);
    replaceRows($('milestone-list'), rows.map((r) => {
      const li = el('li', { class: 'milestone', 'data-model': r.name },
        el('span', { class: 'when' }, minuteUtc(r.first_served_at)), ' ',
        el('span', { class: 'model' }, r.name), ' ',
        el('span', { class: 'tier tier-' + r.tier }, r.tier));
      return li;
    }));
  }

  const toggle = $('capacity-toggle');
  if (toggle) {
    toggle.addEventListener('click', () => {
      const open = toggle.getAttribute('aria-expanded') !== 'true';
      toggle.setAttribute('aria-expanded', String(open));
      toggle.textContent = open ? 'hide capacity tier' : 'show capacity tier';
      setHidden($('capacity-body'), !open);
    });
  }

  async function getJson(path) {
    const resp = await fetch(path, { cache: 'no-store', headers: { accept: 'application/json' } });
    if (!resp.ok) throw new Error(path + ' answered ' + resp.status);
    return resp.json();
  }

  let refreshes = 0;
  async function refresh() {
    try {
      if (page === 'status') {
        const [catalog, status] = await Promise.all([getJson('/api/models'), getJson('/api/status')]);
        renderCatalog(catalog);
        renderStatus(status);
      } else if (page === 'dashboard') {
        const [catalog, share] = await Promise.all([getJson('/api/models'), getJson('/api/mesh-share').catch(() => null)]);
        renderMilestones(catalog);
        renderShare(share);
      }
      refreshes += 1;
      body.dataset.refreshes = String(refreshes);
      $('updated').textContent = 'updated ' + clockUtc(new Date());
    } catch (e) {
      $('updated').textContent = 'refresh failed: ' + e.message;
    }
  }
  setInterval(refresh, refreshMs);
})();
