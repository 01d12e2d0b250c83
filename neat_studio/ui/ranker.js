// NEAT Studio ranker: keyboard-first ranking with ties. Runs as the js_on_load of the Annotate tab's gr.HTML.
// State lives in the DOM (data-rank / data-mark on each card). Every change is also kept as a DRAFT in the
// browser's localStorage (key neat-draft:<prompt id>), so ranks, marks, the comment and the flag not yet submitted
// survive a reload, a crash or a detour to another prompt (comment and flag only where they differ from what the
// server last saved: the root's data-comment / data-flagged); the draft is dropped once a submit or skip of that prompt has been accepted (the server moved on). Only whole commands go
// to the server (submit, skip, edit, previous): trigger('click', {...}).
//
// Keys: 1-9 select a response, then 1-9 set its rank group (same group = tie) · Esc clear selection ·
// P / N / 0 mark the selected response pos / neg / neutral · A accept the AI suggestion (a weak scorer's, marked
// data-suggest-confirm on the root, only with a second A right after the first; any other key cancels) · U undo ·
// H show/hide origins · E edit the selected response · F flag · C comment · Enter submit · S skip · B previous.
(function () {
  const ORIGIN_KEY = "neat-show-origins";
  const DRAFT = "neat-draft:";
  const MAX_DRAFTS = 500;
  const W = window;
  const root = () => element.querySelector(".neat-ranker");
  const cards = () => Array.from(element.querySelectorAll(".neat-card"));
  const itemId = () => (root() ? root().dataset.item : "");
  W.__neatRanker = W.__neatRanker || { item: null, undo: [], sel: null };
  const S = W.__neatRanker;

  function snapshot() {
    return cards().map((c) => [c.dataset.rank || "", c.dataset.mark || ""]);
  }
  function restore(snap) {
    cards().forEach((c, i) => {
      if (!snap[i]) return;
      c.dataset.rank = snap[i][0];
      c.dataset.mark = snap[i][1];
    });
  }
  function pushUndo() {
    S.undo.push(snapshot());
    if (S.undo.length > 200) S.undo.shift();
  }
  function label(i) { return "#" + (i + 1); }

  function rankingText() {
    const groups = {};
    cards().forEach((c, i) => {
      const g = c.dataset.rank;
      if (g) (groups[g] = groups[g] || []).push(label(i));
    });
    const keys = Object.keys(groups).map(Number).sort((a, b) => a - b);
    return keys.map((g) => groups[g].join(" = ")).join("  >  ");
  }

  function paint(msg) {
    const r = root();
    if (!r) return;
    const show = localStorage.getItem(ORIGIN_KEY) === "1";
    r.classList.toggle("neat-show-origins", show);
    const ob = r.querySelector('[data-cmd="origins"]');
    if (ob) ob.textContent = show ? "Hide origins (H)" : "Show origins (H)";
    let unranked = 0;
    cards().forEach((c, i) => {
      const sel = S.sel === i;
      c.classList.toggle("neat-selected", sel);
      c.setAttribute("aria-selected", sel ? "true" : "false");
      const rb = c.querySelector(".neat-rank-badge");
      if (rb) rb.textContent = c.dataset.rank ? "rank " + c.dataset.rank : "unranked";
      c.classList.toggle("neat-ranked", !!c.dataset.rank);
      if (!c.dataset.rank) unranked++;
      const mb = c.querySelector(".neat-mark-badge");
      if (mb) {
        mb.textContent = c.dataset.mark || "";
        mb.dataset.mark = c.dataset.mark || "";
      }
    });
    const st = r.querySelector(".neat-rk-status");
    if (st) {
      const rt = rankingText();
      let text = msg || (S.sel !== null
        ? "Response " + label(S.sel) + " selected: press 1-9 for its rank group (same number = tie), P/N/0 to mark, Esc to cancel."
        : "Press 1-9 to select a response.");
      text += "   Ranking: " + (rt || "(none yet)");
      if (unranked) text += "   ·  " + unranked + " unranked";
      st.textContent = text;
    }
    if (r.dataset.item === S.item) saveDraft();
  }

  const commentBox = () => document.querySelector("#ann-comment textarea");
  const flagBox = () => document.querySelector("#ann-flag input[type=checkbox]");
  function fieldsDraft() {  // the comment / flag where they differ from the server's saved values
    const r = root(), out = {};
    if (!r) return out;
    const cb = commentBox(), fb = flagBox();
    if (cb && cb.value !== (r.dataset.comment || "")) out.comment = cb.value;
    if (fb && fb.checked !== (r.dataset.flagged === "1")) out.flag = fb.checked;
    return out;
  }
  function saveDraft() {
    const it = itemId();
    if (!it) return;
    const st = state();
    const f = S.fields || {};  // set by the user's own edits (onField) or a restored draft, never read at a render
    try {
      if (!Object.keys(st.ranks).length && !Object.keys(st.marks).length && !Object.keys(f).length) {
        localStorage.removeItem(DRAFT + it);
        return;
      }
      localStorage.setItem(DRAFT + it, JSON.stringify(Object.assign({ ranks: st.ranks, marks: st.marks, t: Date.now() }, f)));
      const keys = Object.keys(localStorage).filter((k) => k.startsWith(DRAFT));
      if (keys.length > MAX_DRAFTS) {  // keep the newest drafts
        keys.map((k) => [k, (JSON.parse(localStorage.getItem(k) || "{}").t || 0)]).sort((a, b) => a[1] - b[1])
          .slice(0, keys.length - MAX_DRAFTS).forEach((kv) => localStorage.removeItem(kv[0]));
      }
    } catch (e) { /* storage full or disabled: the DOM still holds the ranks */ }
  }
  function dropDraft(it) {
    try { localStorage.removeItem(DRAFT + it); } catch (e) { /* ignore */ }
  }
  function loadDraft() {
    let d = null;
    try { d = JSON.parse(localStorage.getItem(DRAFT + itemId()) || "null"); } catch (e) { d = null; }
    if (!d) return false;
    let n = 0;
    cards().forEach((c) => {
      const rid = c.dataset.rid;
      if (d.ranks && d.ranks[rid]) { c.dataset.rank = String(d.ranks[rid]); n++; }
      if (d.marks && d.marks[rid]) { c.dataset.mark = d.marks[rid]; n++; }
    });
    // the comment and flag go back into Gradio's own fields. The server's values for this prompt may land in
    // those fields just after the ranker's HTML, so they are applied now and again shortly after (until the
    // user edits a field himself)
    S.fields = {};
    if (typeof d.comment === "string") { S.fields.comment = d.comment; n++; }
    if (typeof d.flag === "boolean") { S.fields.flag = d.flag; n++; }
    if (Object.keys(S.fields).length) {
      const it = itemId();
      S.fieldsTouched = false;
      [0, 250, 750, 1500, 3000].forEach((ms) => setTimeout(() => applyFields(it), ms));
    }
    return n > 0;
  }
  function applyFields(it) {  // an input / click event, so that Gradio takes the value
    if (S.item !== it || itemId() !== it || S.fieldsTouched || !S.fields) return;
    const cb = commentBox(), fb = flagBox();
    S.applying = true;
    try {
      if (typeof S.fields.comment === "string" && cb && cb.value !== S.fields.comment) {
        cb.value = S.fields.comment;
        cb.dispatchEvent(new Event("input", { bubbles: true }));
      }
      if (typeof S.fields.flag === "boolean" && fb && fb.checked !== S.fields.flag) fb.click();
    } finally {
      S.applying = false;
    }
  }

  function sync() {
    const it = itemId();
    let restored = false;
    if (it !== S.item) {
      if (S.pendingDrop && S.pendingDrop !== it) dropDraft(S.pendingDrop);
      S.pendingDrop = null;
      S.item = it;
      S.acceptArmed = null;
      S.fields = {};
      S.undo = [];
      S.sel = null;
      if (it && cards().length) {
        pushUndo();  // U goes back to what the server sent
        restored = loadDraft();
        if (!restored) S.undo = [];
      }
    }
    paint(restored ? "Unsaved draft restored (not submitted yet; U undoes its ranks and marks)." : undefined);
  }

  function state() {
    const ranks = {}, marks = {};
    cards().forEach((c) => {
      if (c.dataset.rank) ranks[c.dataset.rid] = parseInt(c.dataset.rank, 10);
      if (c.dataset.mark) marks[c.dataset.rid] = c.dataset.mark;
    });
    return { item: itemId(), ranks: ranks, marks: marks };
  }

  function send(cmd, extra) {
    if (!root() || !itemId()) return;
    S.sel = null;
    paint();
    const payload = Object.assign({ cmd: cmd }, state(), extra || {});
    // the draft goes once the server has moved on to another prompt (a refused submit keeps it)
    S.pendingDrop = (cmd === "submit" || cmd === "skip") ? itemId() : null;
    trigger("click", payload);
  }

  function setRank(g) {
    if (S.sel === null) return;
    const c = cards()[S.sel];
    if (!c) return;
    pushUndo();
    c.dataset.rank = String(g);
    S.sel = null;
    paint();
  }
  function setMark(m) {
    if (S.sel === null) { paint("Select a response first (1-9), then P / N / 0."); return; }
    const c = cards()[S.sel];
    pushUndo();
    c.dataset.mark = c.dataset.mark === m ? "" : m;
    paint();
  }
  function undo() {
    if (!S.undo.length) { paint("Nothing to undo."); return; }
    restore(S.undo.pop());
    S.sel = null;
    paint("Undone.");
  }
  const CONFIRM_MS = 10000;
  function acceptSuggestion() {
    const r = root();
    if (!r || !r.dataset.suggest) { paint("No AI suggestion for this prompt."); return; }
    if (r.dataset.suggestConfirm === "1") {  // a weak scorer: the first A only asks
      const armed = S.acceptArmed === itemId() && Date.now() - (S.acceptArmedAt || 0) < CONFIRM_MS;
      if (!armed) {
        S.acceptArmed = itemId();
        S.acceptArmedAt = Date.now();
        paint("The scorer behind this suggestion is weak evidence (see the note above). Press A again to accept " +
              "it anyway, or rank yourself.");
        return;
      }
    }
    S.acceptArmed = null;
    let groups;
    try { groups = JSON.parse(r.dataset.suggest); } catch (e) { return; }
    pushUndo();
    const pos = {};
    groups.forEach((g, gi) => g.forEach((rid) => { pos[rid] = gi + 1; }));
    cards().forEach((c) => { c.dataset.rank = pos[c.dataset.rid] ? String(pos[c.dataset.rid]) : ""; });
    S.sel = null;
    paint("AI suggestion applied (U to undo).");
  }
  function toggleOrigins() {
    localStorage.setItem(ORIGIN_KEY, localStorage.getItem(ORIGIN_KEY) === "1" ? "0" : "1");
    paint();
  }
  function clickIn(sel) {
    const el = document.querySelector(sel);
    if (el) el.click();
  }

  function onKey(e) {
    if (!element.isConnected || element.offsetParent === null || !root()) return;  // tab hidden
    const t = e.target;
    if (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT" || t.isContentEditable)) {
      if (e.key === "Escape" && t.blur) t.blur();
      return;
    }
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    // Enter / Space on a focused button or link elsewhere on the page (Next in queue, Open, a tab ...) belongs to
    // that control: it must not submit the ranking
    if (t && t !== document.body && !element.contains(t) && (e.key === "Enter" || e.key === " ")
        && t.closest && t.closest("button, a, [role='button'], [role='tab'], summary, label")) return;
    const k = e.key;
    if (k !== "a" && k !== "A" && k !== "Shift") S.acceptArmed = null;  // a second A must follow the first
    let handled = true;
    if (/^[1-9]$/.test(k)) {
      const n = parseInt(k, 10);
      if (S.sel === null) {
        if (n <= cards().length) { S.sel = n - 1; paint(); } else { paint("There is no response #" + n + "."); }
      } else {
        setRank(n);
      }
    } else if (k === "Escape") { S.sel = null; paint(); }
    else if (k === "Enter") { send("submit"); }
    else if (k === "s" || k === "S") { send("skip"); }
    else if (k === "u" || k === "U") { undo(); }
    else if (k === "a" || k === "A") { acceptSuggestion(); }
    else if (k === "h" || k === "H") { toggleOrigins(); }
    else if (k === "p" || k === "P") { setMark("pos"); }
    else if (k === "n" || k === "N") { setMark("neg"); }
    else if (k === "0") { setMark("neutral"); }
    else if (k === "b" || k === "B") { send("prev"); }
    else if (k === "e" || k === "E") {
      if (S.sel === null) { paint("Select a response first (1-9), then E to edit it."); }
      else { send("edit", { rid: cards()[S.sel].dataset.rid }); }
    }
    else if (k === "f" || k === "F") { clickIn("#ann-flag input"); }
    else if (k === "c" || k === "C") {
      const ta = document.querySelector("#ann-comment textarea");
      if (ta) ta.focus();
    }
    else if (k === "?") { const h = element.querySelector(".neat-rk-keys"); if (h) h.open = !h.open; }
    else { handled = false; }
    if (handled) e.preventDefault();
  }

  function onClick(e) {
    const b = e.target.closest("[data-cmd]");
    if (b && element.contains(b)) {
      const cmd = b.dataset.cmd;
      if (cmd !== "accept") S.acceptArmed = null;
      if (cmd === "rank") setRank(parseInt(b.dataset.g, 10));
      else if (cmd === "mark") setMark(b.dataset.m);
      else if (cmd === "undo") undo();
      else if (cmd === "accept") acceptSuggestion();
      else if (cmd === "origins") toggleOrigins();
      else if (cmd === "clear") { pushUndo(); cards().forEach((c) => { c.dataset.rank = ""; }); paint(); }
      else if (cmd === "edit") send("edit", { rid: b.dataset.rid });
      else send(cmd);
      e.preventDefault();
      return;
    }
    const c = e.target.closest(".neat-card");
    if (c && element.contains(c)) {
      const i = cards().indexOf(c);
      S.sel = S.sel === i ? null : i;
      paint();
    }
  }

  // typing a comment or ticking the flag updates the draft too (document-level: Gradio may re-create the fields)
  function onField(e) {
    const t = e.target;
    if (!t || !t.closest || !(t.closest("#ann-comment") || t.closest("#ann-flag"))) return;
    if (!root() || itemId() !== S.item || S.applying) return;
    S.fieldsTouched = true;  // the user's own edit: restoring a draft no longer overrides the fields
    S.fields = fieldsDraft();
    saveDraft();
  }
  if (W.__neatFieldHandler) {
    document.removeEventListener("input", W.__neatFieldHandler);
    document.removeEventListener("change", W.__neatFieldHandler);
  }
  W.__neatFieldHandler = onField;
  document.addEventListener("input", onField);
  document.addEventListener("change", onField);
  if (W.__neatKeyHandler) document.removeEventListener("keydown", W.__neatKeyHandler);
  W.__neatKeyHandler = onKey;
  document.addEventListener("keydown", onKey);
  element.addEventListener("click", onClick);
  // a server render (next prompt, edit saved, reload) starts a fresh selection and undo history
  if (typeof watch === "function") watch("value", () => { S.item = null; sync(); });
  // the value can also change without a watch callback (first render): poll the item id cheaply
  const mo = new MutationObserver(() => { if (itemId() !== S.item) sync(); });
  mo.observe(element, { childList: true, subtree: true });
  sync();
})();
