// The storefront: the public /recommend and /events, called as any client calls them.
// A click on a recommended item is a `view` event whose context names the list it came from
// (request_id) and its place in it (position), the event contract's fields; the list is then
// asked for again until the session's new features change it (the speed layer, ~1 s).
"use strict";
(function () {
  const cfg = window.SHOP;
  const $ = (id) => document.getElementById(id);
  const K = 10;
  const CHANGE_POLL_MS = 300;
  const CHANGE_WAIT_MS = 15000;
  const shop = { user: null, session: null, list: null, category: null, busy: false };

  function hex(bytes) {
    const a = new Uint8Array(bytes);
    crypto.getRandomValues(a);
    return Array.from(a, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c instanceof Node ? c : String(c));
    return node;
  }

  function headers(json) {
    const h = json ? { "Content-Type": "application/json" } : {};
    const key = cfg.keysRequired ? ($("api-key").value || sessionStorage.getItem("lambdarec.key") || "") : "";
    if (key) h["X-API-Key"] = key;
    return h;
  }

  function show(message, isError) {
    const box = $("message");
    box.hidden = !message;
    box.textContent = message || "";
    box.className = isError ? "note error" : "note";
  }

  async function call(url, options) {
    const response = await fetch(url, options);
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      const why = body && body.error ? body.error.message : response.statusText;
      const field = body && body.error && body.error.field !== "$" ? body.error.field + ": " : "";
      throw new Error(`${response.status} ${field}${why}`);
    }
    return body;
  }

  function log(text) {
    const item = el("li", {}, `${new Date().toLocaleTimeString()} ${text}`);
    $("log").prepend(item);
  }

  async function refreshStatus() {
    try {
      const status = await call(cfg.status);
      $("status-model").textContent = status.model_version == null ? "none (no champion)" : `two_tower v${status.model_version}`;
    } catch (e) {
      $("status-model").textContent = `unknown (${e.message})`;
    }
  }

  async function recommend() {
    const q = new URLSearchParams({ user_id: shop.user, session_id: shop.session, k: String(K) });
    return call(`${cfg.recommend}?${q}`, { headers: headers(false) });
  }

  function reasonList(item) {
    const top = Math.max(1e-9, ...item.reasons.map((r) => Math.abs(r.contribution)));
    return el("ul", { class: "reasons" }, ...item.reasons.map((r) =>
      el("li", {}, `${r.feature} ${r.contribution > 0 ? "+" : ""}${r.contribution.toFixed(3)}`,
        el("span", { class: r.contribution < 0 ? "bar neg" : "bar",
          style: `width:${Math.round(40 * Math.abs(r.contribution) / top)}px` }))));
  }

  function card(item, fromList, fresh) {
    const ctx = fromList ? { request_id: shop.list.request_id, position: item.position } : { page: "category" };
    const title = el("a", { class: "view", title: "view this item", onclick: () => act(item, "view", ctx) }, item.item_id);
    const sources = (item.sources || []).map((s) => el("span", { class: s === item.source ? "badge main" : "badge" }, s));
    const body = [
      el("h3", {}, title, el("span", { class: "muted" }, fromList ? `#${item.position + 1}` : "")),
      el("div", { class: "muted" }, `category ${item.category || "?"}`),
    ];
    if (fromList) {
      body.push(el("div", {}, ...sources), el("div", { class: "muted" }, `score ${item.score.toFixed(4)}`));
      if (item.reasons.length) body.push(reasonList(item));
    }
    body.push(el("div", { class: "actions" },
      el("button", { type: "button", class: "cart", onclick: () => act(item, "add_to_cart", ctx) }, "Add to cart"),
      el("button", { type: "button", class: "buy primary", onclick: () => act(item, "purchase", ctx) }, "Buy")));
    return el("li", { class: fresh ? "item fresh" : "item", "data-item": item.item_id }, ...body);
  }

  function render(answer, previous) {
    shop.list = answer;
    const before = new Set(previous || []);
    $("recs").replaceChildren(...answer.items.map((i) => card(i, true, previous && !before.has(i.item_id))));
    $("recs").dataset.session = answer.session_id;
    $("status-variant").textContent = answer.variant;
    $("status-policy").textContent = answer.policy;
    $("status-degraded").textContent = answer.degraded ? answer.degraded_parts.join(", ") : "no";
    $("status-request").textContent = answer.request_id;
  }

  async function loadList() {
    try {
      const answer = await recommend();
      if (answer.session_id !== shop.session) return; // a newer session's list is on its way
      render(answer, null);
      show("");
    } catch (e) {
      show(`GET /recommend: ${e.message}`, true);
    }
  }

  async function act(item, type, context) {
    if (shop.busy) return;
    shop.busy = true;
    document.body.dataset.busy = "1";
    const shown = shop.list ? shop.list.items.map((i) => i.item_id) : [];
    const event = {
      event_id: `shop-${hex(12)}`, user_id: shop.user, session_id: shop.session,
      item_id: item.item_id, event_type: type, ts: new Date().toISOString(), context: context,
    };
    if (item.category) event.category = item.category;
    try {
      await call(cfg.events, { method: "POST", headers: headers(true), body: JSON.stringify(event) });
      const where = context.request_id ? ` (list ${context.request_id.slice(0, 8)}, position ${context.position})` : "";
      log(`${type} ${item.item_id}${where}: accepted`);
      const t0 = performance.now();
      let answer = null;
      while (performance.now() - t0 < CHANGE_WAIT_MS) {
        await new Promise((r) => setTimeout(r, CHANGE_POLL_MS));
        answer = await recommend();
        if (answer.items.map((i) => i.item_id).join() !== shown.join()) break;
      }
      const seconds = ((performance.now() - t0) / 1000).toFixed(1);
      const changed = answer && answer.items.map((i) => i.item_id).join() !== shown.join();
      if (answer) render(answer, shown);
      const text = changed ? `The list changed ${seconds} s after your ${type}.` : `The list is the same ${seconds} s after your ${type}.`;
      show(text);
      $("message").dataset.changed = changed ? "1" : "0";
      log(text);
      refreshStatus();
    } catch (e) {
      show(`${type} ${item.item_id}: ${e.message}`, true);
    } finally {
      shop.busy = false;
      delete document.body.dataset.busy;
    }
  }

  async function browse(category) {
    shop.category = category;
    for (const b of document.querySelectorAll("#categories button")) b.classList.toggle("active", b.dataset.category === category);
    try {
      const q = new URLSearchParams({ category: category, limit: "12" });
      const answer = await call(`${cfg.catalog}?${q}`);
      $("category-title").textContent = `Category ${category}: its most popular items`;
      $("browse").replaceChildren(...answer.items.map((i) => card(i, false, false)));
    } catch (e) {
      show(`catalog: ${e.message}`, true);
    }
  }

  function newSession() {
    shop.session = `shop-${hex(6)}`;
    $("session").textContent = shop.session;
    $("log").replaceChildren();
    loadList();
  }

  async function start() {
    if (cfg.keysRequired) {
      const input = $("api-key");
      input.value = sessionStorage.getItem("lambdarec.key") || "";
      input.addEventListener("change", () => { sessionStorage.setItem("lambdarec.key", input.value); loadList(); });
      if (!input.value) show("This API wants a key: paste one with the recommend and events scopes (`lambdarec api-key new --name shop --scopes recommend,events`).", false);
    }
    let catalog;
    try {
      catalog = await call(cfg.catalog);
    } catch (e) {
      show(`catalog: ${e.message}`, true);
      return;
    }
    const picker = $("shopper");
    const users = catalog.shoppers.length ? catalog.shoppers : ["guest"];
    picker.replaceChildren(...users.map((u) => el("option", { value: u }, u)));
    picker.addEventListener("change", () => { shop.user = picker.value; newSession(); });
    shop.user = users[0];
    $("categories").replaceChildren(...catalog.categories.map((c) =>
      el("li", {}, el("button", { type: "button", "data-category": c.name, onclick: () => browse(c.name) }, `${c.name} (${c.items})`))));
    $("new-session").addEventListener("click", newSession);
    refreshStatus();
    newSession();
    if (catalog.categories.length) browse(catalog.categories[0].name);
  }

  start();
})();
