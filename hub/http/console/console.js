// callhub agent console: plain JavaScript, no build step, no dependencies (docs/CONSOLE.md).
// Event data only ever reaches the page through textContent and attributes, never as HTML.
"use strict";
(() => {
  const REPLAY = 300;          // on sign-in, replay at most this many recent hub events
  const LINGER_MS = 3000;      // an ended call stays on the board this long, then moves to recent
  const STALE_MS = 4 * 3600e3; // a call silent this long is taken as over (its end was never seen)
  const MAX_RECENT = 50, MAX_ACTIVITY = 50, POLL_MS = 2000;
  const TYPES = ["call.ringing", "call.answered", "call.bridged", "call.held", "call.resumed", "call.ended",
    "call.enriched", "action.succeeded", "action.failed", "hub.gap",
    "hub.upstream.connected", "hub.upstream.disconnected"];

  // Every label, "English|Tiếng Việt".
  const L = {
    console: "console|bảng điều khiển", skip: "Skip to content|Bỏ qua đến nội dung",
    off: "Not connected|Chưa kết nối", connecting: "Connecting…|Đang kết nối…", live: "Live|Trực tuyến",
    reconnecting: "Reconnecting…|Đang kết nối lại…", signin: "Sign in|Đăng nhập", signout: "Sign out|Đăng xuất",
    tokenLabel: "Agent token or API key|Mã truy cập (token) hoặc khóa API",
    tokenHint: "From your administrator (callhub token --agent NAME); kept in this tab only.|Do quản trị viên cấp (callhub token --agent TÊN); chỉ lưu trong thẻ này.",
    calls: "Calls|Cuộc gọi", supervisor: "Supervisor|Giám sát", retryNow: "Reconnect now|Kết nối lại ngay",
    dismiss: "Dismiss|Đóng", dial: "Click-to-call|Gọi nhanh", number: "Number|Số điện thoại",
    agent: "Agent|Nhân viên", call: "Call|Gọi", filter: "Filter|Lọc", direction: "Direction|Chiều gọi",
    type: "Type|Loại", allAgents: "All agents|Tất cả nhân viên", allDirections: "All directions|Mọi chiều",
    allTypes: "Calls and actions|Cuộc gọi và tác vụ", typeCalls: "Calls only|Chỉ cuộc gọi",
    typeActions: "Actions only|Chỉ tác vụ", inbound: "Inbound|Gọi đến", outbound: "Outbound|Gọi đi",
    internal: "Internal|Nội bộ", active: "Active calls|Cuộc gọi đang diễn ra",
    noActive: "No active calls.|Không có cuộc gọi nào.", recent: "Recent calls|Cuộc gọi gần đây",
    noRecent: "No ended calls yet.|Chưa có cuộc gọi nào kết thúc.",
    activity: "Rule actions and activity|Tác vụ tự động và hoạt động", noActivity: "Nothing yet.|Chưa có gì.",
    sl: "Service level 15 min / today|Mức phục vụ 15 phút / hôm nay",
    abandoned: "Abandoned 15 min / today|Khách bỏ máy 15 phút / hôm nay", rate: "Events/s|Sự kiện/giây", head: "Last seq|Seq mới nhất", subscribers: "Subscribers|Thuê bao",
    updated: "Updated|Cập nhật", upstreams: "Upstreams|Kết nối nguồn", who: "Who|Ai",
    transport: "Transport|Giao thức", state: "State|Trạng thái", buffer: "Buffer|Bộ đệm", since: "Since|Từ",
    rules: "Rules|Quy tắc", rule: "Rule|Quy tắc", matched: "Matched|Khớp", ok: "Succeeded|Thành công",
    failed: "Failed|Thất bại", lastFired: "Last fired|Lần cuối",
    webhooks: "Webhook subscriptions|Đăng ký webhook", endpoint: "Endpoint|Điểm nhận", backlog: "Backlog|Tồn đọng",
    lastFailure: "Last failure|Lỗi gần nhất", noWebhooks: "No webhook subscriptions.|Chưa có đăng ký webhook nào.",
    s_active: "Active|Hoạt động", s_paused: "Paused|Tạm dừng", s_disabled: "Disabled|Đã tắt",
    noRules: "No rules configured.|Chưa cấu hình quy tắc nào.", ringing: "Ringing|Đang đổ chuông",
    answered: "Answered|Đang nghe", held: "On hold|Đang giữ máy", ended: "Ended|Đã kết thúc",
    o_answered: "Answered|Đã nghe", o_missed: "Missed|Gọi nhỡ", o_busy: "Busy|Máy bận",
    o_no_answer: "No answer|Không trả lời", o_cancelled: "Caller hung up|Khách gác máy", o_failed: "Failed|Thất bại",
    o_unknown: "Unknown|Không rõ", callback: "Call back|Gọi lại", recording: "Recording|Ghi âm",
    customer: "Customer|Khách hàng", lead: "Lead|Khách tiềm năng", owner: "Owner|Phụ trách", stage: "Stage|Giai đoạn",
    did: "via {n}|qua {n}", signedInAgent: "{name} · agent {agent}|{name} · nhân viên {agent}",
    signedInAdmin: "{name} · {role}, all agents|{name} · {role}, mọi nhân viên",
    badToken: "The hub refused this token: {m}|Hub từ chối token này: {m}",
    unreachable: "The hub cannot be reached.|Không kết nối được tới hub.",
    expired: "Your session ended: {m}. Sign in again.|Phiên làm việc đã hết: {m}. Hãy đăng nhập lại.",
    lost: "Connection lost. Reconnecting in {s} s.|Mất kết nối. Kết nối lại sau {s} giây.",
    lostNow: "Connection lost. Reconnecting…|Mất kết nối. Đang kết nối lại…",
    gap: "{n} events (seq {from}–{to}) were removed by retention before this page resumed: calls from then may be missing.|{n} sự kiện (seq {from}–{to}) đã bị xóa theo hạn lưu trữ trước khi trang kết nối lại: có thể thiếu cuộc gọi.",
    c_ringing: "Ringing {agent}'s phone: answer it to call {number}.|Đang đổ chuông máy của {agent}: nhấc máy để gọi {number}.",
    c_device_offline: "{agent}'s phone is offline (not registered).|Máy của {agent} đang ngoại tuyến (chưa đăng ký).",
    c_invalid: "Not a valid phone number.|Số điện thoại không hợp lệ.",
    c_failed: "The call was not placed: {m}|Không gọi được: {m}", c_sending: "Calling…|Đang gọi…",
    c_needAgent: "Choose the agent whose phone should ring.|Chọn nhân viên có máy sẽ đổ chuông.",
    a_ticket: "Ticket #{id} created in AntCRM|Đã tạo phiếu #{id} trên AntCRM",
    a_ring: "Call-back rung: {agent} → {number}|Đã đổ chuông gọi lại: {agent} → {number}",
    a_contact: "Caller saved in AntCRM|Đã lưu người gọi vào AntCRM",
    a_campaign: "Added to Vbee campaign {c}|Đã thêm vào chiến dịch Vbee {c}",
    a_other: "{action} done|{action} đã xong", a_failed: "{action} failed: {m}|{action} thất bại: {m}",
    byRule: "rule {r}|quy tắc {r}",
    up: "{u} connected|{u} đã kết nối", down: "{u} disconnected|{u} mất kết nối", connected: "connected|đã kết nối",
    disconnected: "disconnected|mất kết nối", none: "none|không có",
  };

  const $ = (id) => document.getElementById(id);
  const store = (kind) => { try { return window[kind]; } catch { return null; } };
  const S = {
    lang: (store("localStorage")?.getItem("callhub.lang")) || (navigator.language.startsWith("vi") ? "vi" : "en"),
    token: null, me: null, es: null, lastSeq: 0, opens: 0, retries: 0, retryAt: 0, timer: 0, heardAt: 0, beatMs: 0,
    calls: new Map(), agents: new Set(), view: "calls", poll: 0, prevHead: null,
  };

  function t(key, vars) {
    const s = L[key] ? L[key].split("|")[S.lang === "vi" ? 1 : 0] ?? L[key] : key;
    return vars ? s.replace(/\{(\w+)\}/g, (_, k) => (vars[k] ?? "")) : s;
  }
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = text;
    return e;
  }

  // Vietnamese national format: +84903555777 -> 0903 555 777, 02873019555 -> 028 7301 9555.
  function phone(n) {
    if (!n) return "";
    let d = String(n).replace(/[\s.\-()]/g, "");
    if (/^\+84\d{9,10}$/.test(d)) d = "0" + d.slice(3);
    if (/^0[35789]\d{8}$/.test(d)) return `${d.slice(0, 4)} ${d.slice(4, 7)} ${d.slice(7)}`;
    if (/^02\d{9}$/.test(d)) return `${d.slice(0, 3)} ${d.slice(3, 7)} ${d.slice(7)}`;
    return String(n);
  }
  const isPhone = (n) => /^(\+\d{8,15}|0\d{8,10})$/.test(String(n || "").replace(/[\s.\-()]/g, ""));
  function clock(ms) {
    const s = Math.max(0, Math.floor(ms / 1000)), h = Math.floor(s / 3600), m = Math.floor(s / 60) % 60;
    const ss = String(s % 60).padStart(2, "0");
    return h ? `${h}:${String(m).padStart(2, "0")}:${ss}` : `${m}:${ss}`;
  }
  const timeOf = (ev) => { const v = Date.parse(ev.time); return Number.isFinite(v) ? Math.min(v, Date.now()) : Date.now(); };
  const hhmm = (ms) => new Date(ms).toLocaleTimeString(S.lang === "vi" ? "vi-VN" : "en-GB", { hour12: false });

  // ---- language ----
  function applyLang() {
    document.documentElement.lang = S.lang;
    for (const e of document.querySelectorAll("[data-i18n]")) e.textContent = t(e.dataset.i18n);
    for (const b of document.querySelectorAll("[data-lang]")) b.setAttribute("aria-pressed", String(b.dataset.lang === S.lang));
    setConn(S.connState || "off");
    if (S.me) showWho();
    for (const c of S.calls.values()) render(c);
    for (const li of $("activity").children) li.firstChild.nextSibling.textContent = activityText(li._ev);
  }

  // ---- sign-in ----
  async function api(path, opts = {}) {
    const headers = { Authorization: `Bearer ${S.token}`, ...(opts.body ? { "Content-Type": "application/json" } : {}) };
    const r = await fetch(path, { ...opts, headers, cache: "no-store" });
    let body = null;
    try { body = await r.json(); } catch { /* not JSON */ }
    return { status: r.status, ok: r.ok, body: body || {} };
  }
  const errMsg = (r) => (r.body.error && r.body.error.message) || `HTTP ${r.status}`;

  async function signIn(token, quiet) {
    S.token = token;
    let r;
    try { r = await api("/v1/whoami"); } catch { r = null; }
    if (!r || !r.ok) {
      S.token = null;
      store("sessionStorage")?.removeItem("callhub.token");
      if (!quiet || r) $("signin-error").textContent = r ? t("badToken", { m: errMsg(r) }) : t("unreachable");
      return;
    }
    store("sessionStorage")?.setItem("callhub.token", token);
    S.me = r.body;
    $("signin-error").textContent = "";
    $("token").value = "";
    $("signin").hidden = true;
    $("app").hidden = false;
    $("signout").hidden = false;
    const admin = S.me.role === "admin";
    $("tabs").hidden = !admin;
    $("filters").hidden = !admin;
    $("dial-agent-label").hidden = !!S.me.agent;
    showWho();
    S.lastSeq = Math.max(0, (S.me.head || 0) - REPLAY);
    connect();
  }
  function showWho() {
    const m = S.me;
    $("who").hidden = false;
    $("who").textContent = m.agent ? t("signedInAgent", m) : t("signedInAdmin", m);
  }
  function signOut(message) {
    if (S.es) S.es.close();
    S.es = null;
    clearTimeout(S.timer);
    clearInterval(S.poll);
    store("sessionStorage")?.removeItem("callhub.token");
    S.token = S.me = null;
    S.calls.clear(); S.agents.clear(); S.opens = 0; S.retries = 0;
    for (const id of ["active", "recent", "activity"]) $(id).replaceChildren();
    $("app").hidden = true; $("who").hidden = true; $("signout").hidden = true;
    $("n-conn").hidden = $("n-gap").hidden = true;
    $("signin").hidden = false;
    $("signin-error").textContent = message || "";
    setConn("off");
    $("token").focus();
  }

  // ---- the stream: SSE, resumed from the last seq seen ----
  function setConn(state) {
    S.connState = state;
    $("conn").dataset.state = state;
    $("conn-text").textContent = t(state);
  }
  function connect() {
    clearTimeout(S.timer);
    if (S.es) S.es.close();
    const url = new URL("/v1/stream", location.href);
    url.searchParams.set("token", S.token);
    url.searchParams.set("types", "call.*,action.*,hub.*");
    url.searchParams.set("after", String(S.lastSeq));
    // Heartbeats as events: EventSource hides comments, and a dead connection (a laptop waking
    // up, a NAT that forgot us) may never report an error; `tick` reconnects when they stop.
    url.searchParams.set("heartbeat", "event");
    const es = new EventSource(url);
    S.es = es;
    setConn(S.opens ? "reconnecting" : "connecting");
    es.addEventListener("heartbeat", (m) => {
      S.heardAt = Date.now();
      try { S.beatMs = 1000 * Number(JSON.parse(m.data).interval) || 0; } catch { /* keep the last */ }
    });
    es.onopen = () => {
      S.heardAt = Date.now();
      S.opens += 1; S.retries = 0;
      setConn("live");
      $("n-conn").hidden = true;
    };
    es.onerror = () => {
      if (S.es !== es) return;
      // Closing and reopening ourselves (rather than EventSource's own retry) resumes with
      // `after=` even after an HTTP error, and lets us tell an expired token from a hub restart.
      es.close();
      S.es = null;
      retry();
    };
    for (const type of TYPES) es.addEventListener(type, onMessage);
  }
  function retry() {
    const delay = Math.min(1000 * 2 ** S.retries, 10000) * (0.5 + Math.random() / 2);
    S.retries += 1;
    S.retryAt = Date.now() + delay;
    setConn("reconnecting");
    $("n-conn").hidden = false;
    countdown();
    clearTimeout(S.timer);
    S.timer = setTimeout(reconnect, delay);
  }
  function countdown() {
    const s = Math.ceil((S.retryAt - Date.now()) / 1000);
    $("n-conn-text").textContent = s > 0 ? t("lost", { s }) : t("lostNow");
  }
  async function reconnect() {
    if (!S.token) return;
    let r = null;
    try { r = await api("/v1/whoami"); } catch { /* hub down: try again later */ }
    if (r && (r.status === 401 || r.status === 403)) return signOut(t("expired", { m: errMsg(r) }));
    if (!r || !r.ok) return retry();
    connect();
  }

  function onMessage(m) {
    S.heardAt = Date.now();
    let ev;
    try { ev = JSON.parse(m.data); } catch { return; }
    const seq = Number(ev.seq) || 0;
    if (seq && seq <= S.lastSeq) return; // already shown: a card never doubles
    if (seq) S.lastSeq = seq;
    const d = ev.data || {};
    if (d.agent && !S.agents.has(d.agent)) addAgent(d.agent);
    if (ev.type === "hub.gap") return gap(d);
    if (ev.type.startsWith("call.")) return callEvent(ev, d);
    activity(ev);
  }
  function gap(d) {
    if (S.opens <= 1) return; // the first replay of a fresh sign-in: nothing was seen before, nothing lost
    $("n-gap-text").textContent = t("gap", { n: d.missing, from: d.from, to: d.to });
    $("n-gap").hidden = false;
  }

  // ---- calls ----
  function callEvent(ev, d) {
    const id = d.call_id || ev.subject || ev.id;
    let c = S.calls.get(id);
    if (!c) {
      if (ev.type === "call.enriched") return;
      c = { id, legs: new Map(), state: "ringing", start: timeOf(ev), answeredAt: 0, node: null, customer: null };
      S.calls.set(id, c);
    }
    if (c.state === "ended" && ev.type !== "call.enriched") return;
    c.last = timeOf(ev);
    c.dir = c.dir || d.direction;
    c.from = c.from || (d.from && d.from.number);
    c.fromName = c.fromName || (d.from && d.from.name);
    c.to = c.to || (d.to && d.to.number);
    c.agent = c.agent || d.agent;
    c.did = c.did || d.did_number;
    const leg = d.leg_id || id;
    switch (ev.type) {
      case "call.enriched": c.customer = d.customer || null; break;
      case "call.ringing": if (!c.legs.has(leg)) c.legs.set(leg, true); break;
      case "call.answered": case "call.bridged": case "call.resumed":
        c.legs.set(leg, true);
        if (!c.answeredAt) c.answeredAt = timeOf(ev);
        c.state = "answered"; break;
      case "call.held": c.state = "held"; break;
      case "call.ended": {
        c.legs.set(leg, false);
        // Answered on any leg wins; else the customer's leg (whose id is the call's) has the last word.
        if (c.outcome !== "answered" && (d.outcome === "answered" || leg === id || !c.outcome)) c.outcome = d.outcome;
        c.duration = Math.max(c.duration || 0, Number(d.duration_s) || 0);
        c.recording = c.recording || d.recording;
        if (leg === id || d.reconciled || ![...c.legs.values()].some(Boolean)) finish(c, timeOf(ev));
        break;
      }
    }
    render(c);
  }
  function finish(c, at) {
    c.state = "ended";
    c.endedAt = at;
    const wait = Math.max(0, LINGER_MS - (Date.now() - at));
    setTimeout(() => moveToRecent(c), wait);
  }
  function moveToRecent(c) {
    if (!c.node) render(c);
    const list = $("recent");
    list.prepend(c.node);
    c.moved = true;
    while (list.children.length > MAX_RECENT) {
      const gone = list.lastElementChild;
      S.calls.delete(gone._id);
      gone.remove();
    }
    render(c);
    counts();
  }
  const party = (c) => (c.dir === "outbound" ? c.to : c.from);
  const missed = (c) => c.state === "ended" && c.outcome !== "answered";
  function outcomeKey(c) {
    if (c.outcome === "answered") return "o_answered";
    if (c.dir === "inbound" && (c.outcome === "no_answer" || c.outcome === "cancelled")) return "o_missed";
    return `o_${c.outcome || "unknown"}`;
  }

  function render(c) {
    let n = c.node;
    if (!n) {
      n = c.node = $("t-call").content.firstElementChild.cloneNode(true);
      n._id = c.id;
      n.querySelector(".callback").addEventListener("click", () => callBack(c));
      $("active").prepend(n);
    }
    n.dataset.state = c.state;
    n.dataset.dir = c.dir || "";
    n.dataset.agent = c.agent || "";
    n.dataset.call = c.id;
    n.classList.toggle("missed", missed(c));
    n.querySelector(".dir").textContent = t(c.dir || "inbound");
    n.querySelector(".badge").textContent = c.state === "ended" ? t(outcomeKey(c)) : t(c.state);
    const who = party(c);
    n.querySelector(".num").textContent = phone(who) || "—";
    n.querySelector(".num").title = c.fromName && c.fromName !== c.from ? c.fromName : "";
    n.querySelector(".agent").textContent = c.agent ? `${t("agent")}: ${c.agent}` : "";
    n.querySelector(".did").textContent = c.did && c.dir === "inbound" ? t("did", { n: phone(c.did) }) : "";
    n.querySelector(".at").textContent = c.state === "ended" ? hhmm(c.endedAt) : "";
    const crm = n.querySelector(".crm"), cu = c.customer;
    crm.hidden = !cu;
    if (cu) {
      crm.querySelector(".crm-name").textContent = cu.name || "";
      const kind = cu.contactType === "lead" ? t("lead") : t("customer");
      crm.querySelector(".crm-detail").textContent =
        [kind, cu.stage && `${t("stage")}: ${cu.stage}`, cu.responsibleStaff && `${t("owner")}: ${cu.responsibleStaff}`]
          .filter(Boolean).join(" · ");
      crm.querySelector(".tags").replaceChildren(...(cu.tags || []).map((tag) => el("li", null, String(tag))));
    }
    const end = n.querySelector(".end");
    end.hidden = c.state !== "ended";
    if (c.state === "ended") {
      const rec = end.querySelector(".rec");
      rec.hidden = !c.recording;
      if (c.recording) {
        rec.textContent = t("recording");
        // Always through the hub, which answers only for recordings AntRing itself reported: an
        // event's own URL could point anywhere (a publisher could set it).
        rec.href = `/v1/recordings/${encodeURIComponent(c.recording)}?token=${encodeURIComponent(S.token)}`;
      }
      const cb = end.querySelector(".callback");
      cb.hidden = !(missed(c) && isPhone(who));
      cb.textContent = t("callback");
    }
    tick1(c);
    n.setAttribute("aria-label", `${n.querySelector(".dir").textContent} ${phone(who)} ${n.querySelector(".badge").textContent}`);
    filter1(n);
    counts();
  }
  function tick1(c) {
    const dur = c.node.querySelector(".dur");
    if (c.state === "ended") dur.textContent = clock((c.duration || 0) * 1000);
    else dur.textContent = clock(Date.now() - (c.answeredAt || c.start));
  }
  function tick() {
    const now = Date.now();
    for (const c of S.calls.values()) {
      if (c.state === "ended" || !c.node) continue;
      if (now - c.last > STALE_MS) { c.outcome = c.outcome || "unknown"; finish(c, now - LINGER_MS); render(c); continue; }
      tick1(c);
    }
    if (!$("n-conn").hidden && S.retryAt) countdown();
    if (S.es && S.connState === "live" && S.beatMs && now - S.heardAt > 2.5 * S.beatMs) {
      S.es.close(); S.es = null; retry(); // silent for 2.5 heartbeats: the connection is dead
    }
  }
  function counts() {
    const shown = [...$("active").children].filter((e) => !e.hidden).length;
    $("active-count").textContent = String(shown);
    $("active-empty").hidden = shown > 0;
    $("recent-empty").hidden = [...$("recent").children].some((e) => !e.hidden);
    $("activity-empty").hidden = [...$("activity").children].some((e) => !e.hidden);
  }

  // ---- activity: rule actions, click-to-call attempts, upstreams ----
  function activityText(ev) {
    const d = ev.data || {}, r = d.result || {}, req = d.target || {};
    const rule = d.rule ? ` (${t("byRule", { r: d.rule })})` : "";
    switch (ev.type) {
      case "action.succeeded":
        switch (d.action) {
          case "antcrm.create_ticket": return t("a_ticket", { id: r.TicketId ?? "?" }) + rule;
          case "antring.click_to_call":
            return t("a_ring", { agent: r.agent || req.agent || "", number: phone(r.number || req.number) }) + rule;
          case "antcrm.upsert_contact": return t("a_contact") + rule;
          case "vbee.add_contacts": return t("a_campaign", { c: req.campaign_id || "" }) + rule;
          default: return t("a_other", { action: d.action }) + rule;
        }
      case "action.failed": {
        const m = typeof d.error === "string" ? d.error : (d.error && d.error.message) || d.status || "";
        return t("a_failed", { action: d.action, m }) + rule;
      }
      case "hub.upstream.connected": return t("up", { u: d.upstream });
      case "hub.upstream.disconnected": return t("down", { u: d.upstream });
    }
    return ev.type;
  }
  function activity(ev) {
    const d = ev.data || {};
    const bad = ev.type === "action.failed" || ev.type === "hub.upstream.disconnected";
    const li = el("li", bad ? "bad" : "good");
    li._ev = ev;
    li.dataset.agent = d.agent || "";
    li.dataset.kind = ev.type;
    const time = el("time", null, hhmm(timeOf(ev)));
    time.dateTime = ev.time || "";
    li.append(time, el("span", null, activityText(ev)));
    const list = $("activity");
    list.prepend(li);
    while (list.children.length > MAX_ACTIVITY) list.lastElementChild.remove();
    filter1(li);
    counts();
  }

  // ---- filters (admin) ----
  function addAgent(a) {
    S.agents.add(a);
    const opt = el("option", null, a); opt.value = a;
    $("f-agent").append(opt);
    const dl = el("option"); dl.value = a;
    $("agents").append(dl);
  }
  function filter1(node) {
    const f = { agent: $("f-agent").value, dir: $("f-dir").value };
    const a = node.dataset.agent;
    node.hidden = (f.agent && a !== f.agent) || (!!f.dir && node.dataset.dir !== undefined && node.dataset.dir !== f.dir);
  }
  function applyFilters() {
    for (const id of ["active", "recent", "activity"]) for (const n of $(id).children) filter1(n);
    const type = $("f-type").value;
    $("s-active").hidden = $("s-recent").hidden = type === "action";
    $("s-activity").hidden = type === "call";
    counts();
  }

  // ---- click-to-call ----
  async function dial(number, agent, out) {
    out.className = "result";
    if (!agent) { out.classList.add("bad"); out.textContent = t("c_needAgent"); return; }
    out.textContent = t("c_sending");
    let r;
    try { r = await api("/v1/calls/click-to-call", { method: "POST", body: JSON.stringify({ number, agent }) }); }
    catch { out.classList.add("bad"); out.textContent = t("unreachable"); return; }
    const code = r.body.error && r.body.error.code;
    out.dataset.outcome = r.ok ? "ringing" : code || String(r.status);
    out.classList.add(r.ok ? "good" : "bad");
    if (r.ok) out.textContent = t("c_ringing", { agent, number: phone(r.body.number || number) });
    else if (code === "device_offline") out.textContent = t("c_device_offline", { agent });
    else if (code === "invalid_phone_number") out.textContent = t("c_invalid");
    else out.textContent = t("c_failed", { m: errMsg(r) });
  }
  function callBack(c) {
    dial(party(c), (S.me && S.me.agent) || c.agent || $("dial-agent").value.trim(), c.node.querySelector(".call > .result"));
  }

  // ---- supervisor (admin): the hub's own API, polled while shown ----
  function showView(view) {
    S.view = view;
    $("view-calls").hidden = view !== "calls";
    $("view-sup").hidden = view !== "sup";
    $("tab-calls").setAttribute("aria-pressed", String(view === "calls"));
    $("tab-sup").setAttribute("aria-pressed", String(view === "sup"));
    clearInterval(S.poll);
    if (view === "sup") { S.prevHead = null; supervise(); S.poll = setInterval(supervise, POLL_MS); }
  }
  function row(cells) {
    const tr = el("tr");
    for (const c of cells) tr.append(c instanceof Node ? wrap(c) : el("td", null, c == null ? "" : String(c)));
    return tr;
  }
  const wrap = (node) => { const td = el("td"); td.append(node); return td; };
  async function supervise() {
    let subs, ready, rules, hooks, calls;
    try {
      [subs, ready, rules, hooks, calls] = await Promise.all([api("/v1/subscribers"), api("/readyz"), api("/v1/rules"),
        api("/v1/subscriptions"), api("/v1/stats/calls")]);
    } catch { $("sup-error").textContent = t("unreachable"); return; }
    // The call figures (GET /v1/stats/calls): in progress, service level and abandoned calls.
    if (calls.ok) {
      const c = calls.body, pct = (v) => (v == null ? "–" : Math.round(v * 100) + "%");
      $("st-calls").textContent = c.now.in_progress.total;
      $("st-sl").textContent = `${pct(c.last_15m.service_level)} / ${pct(c.today.service_level)}`;
      $("st-ab").textContent = `${c.last_15m.abandoned} / ${c.today.abandoned}`;
    }
    $("sup-error").textContent = subs.ok ? "" : errMsg(subs);
    const now = Date.now(), head = subs.body.head ?? ready.body.head;
    if (S.prevHead && head != null) $("st-rate").textContent = ((head - S.prevHead.head) / ((now - S.prevHead.at) / 1000)).toFixed(1);
    if (head != null) S.prevHead = { head, at: now };
    $("st-head").textContent = head ?? "–";
    $("st-subs").textContent = subs.body.count ?? "–";
    $("st-time").textContent = hhmm(now);
    const ups = Object.entries(ready.body.upstreams || {});
    $("upstreams").replaceChildren(...(ups.length ? ups.map(([name, u]) => {
      const li = el("li", u.connected ? "good" : "bad");
      li.append(el("strong", null, name), ` ${u.connected ? t("connected") : t("disconnected")} · ${hhmm(Date.parse(u.since))}`
        + (!u.connected && u.last_error ? ` · ${u.last_error}` : ""));  // a polled upstream says why
      return li;
    }) : [el("li", null, t("none"))]));
    $("subs").tBodies[0].replaceChildren(...(subs.body.subscribers || []).map((s) => {
      const m = el("meter"); m.min = 0; m.max = 1; m.high = 0.7; m.value = s.buffer.fill;
      const fill = el("span", "fill"); fill.append(m, ` ${s.buffer.events}/${s.buffer.limit}`);
      return row([s.principal, s.agent || "–", s.transport, s.state, fill, hhmm(Date.parse(s.since))]);
    }));
    const rs = rules.body.rules || [];
    $("rules-empty").hidden = rs.length > 0;
    $("rules").tBodies[0].replaceChildren(...rs.map((r) => {
      const tr = row([r.name, r.matched, r.actions_ok, r.actions_failed, r.last_fired ? hhmm(Date.parse(r.last_fired)) : "–"]);
      if (r.actions_failed) tr.cells[3].className = "bad";
      return tr;
    }));
    // Outbound webhook subscriptions: the endpoint's host (a URL may carry a token), state, backlog, last failure.
    const hs = hooks.body.subscriptions || [];
    $("hooks-empty").hidden = hs.length > 0;
    $("hooks").tBodies[0].replaceChildren(...hs.map((h) => {
      const f = h.last_failure, host = (() => { try { return new URL(h.url).host; } catch { return "?"; } })();
      const what = f ? `${hhmm(Date.parse(f.at))} · ${f.error || f.outcome}` : "–";
      const tr = row([h.description ? `${h.description} (${host})` : host, t("s_" + h.state),
        h.backlog, h.disabled ? `${what} · ${h.disabled.reason}` : what]);
      tr.dataset.id = h.id;
      if (h.state !== "active") tr.cells[1].className = "bad";
      if (f) tr.cells[3].className = "bad";
      return tr;
    }));
  }

  // ---- wiring ----
  function start() {
    $("signin-form").addEventListener("submit", (e) => { e.preventDefault(); signIn($("token").value.trim()); });
    $("signout").addEventListener("click", () => signOut());
    $("retry-now").addEventListener("click", () => { S.retries = 0; reconnect(); });
    $("gap-ok").addEventListener("click", () => { $("n-gap").hidden = true; });
    $("tab-calls").addEventListener("click", () => showView("calls"));
    $("tab-sup").addEventListener("click", () => showView("sup"));
    for (const id of ["f-agent", "f-dir", "f-type"]) $(id).addEventListener("change", applyFilters);
    for (const b of document.querySelectorAll("[data-lang]")) {
      b.addEventListener("click", () => { S.lang = b.dataset.lang; store("localStorage")?.setItem("callhub.lang", S.lang); applyLang(); });
    }
    $("dial").addEventListener("submit", (e) => {
      e.preventDefault();
      const agent = (S.me && S.me.agent) || $("dial-agent").value.trim();
      dial($("dial-number").value.trim(), agent, $("dial-out"));
    });
    setInterval(tick, 1000);
    applyLang();
    // `?token=` works once: it is moved to sessionStorage and taken out of the address bar.
    const url = new URL(location.href), given = url.searchParams.get("token");
    if (given) { url.searchParams.delete("token"); history.replaceState(null, "", url.pathname + url.search + url.hash); }
    const token = given || store("sessionStorage")?.getItem("callhub.token");
    if (token) signIn(token, !given); else $("token").focus();
  }
  start();
})();
