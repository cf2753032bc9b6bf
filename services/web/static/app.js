// The search page: a query box, modality toggles and filters; ranked moments with their
// thumbnail, spans, badge, snippet and a timeline per video; a player that plays one moment.
//
// Plain browser JavaScript, no build step and no inline code (the gateway's CSP allows scripts
// from 'self' only). Everything comes from the gateway's JSON API (/api/info, /api/search);
// media from /media/<key> (HTTP Range, so seeking inside an hour-long file downloads little)
// and thumbnails from /thumbs/<segment_id>.jpg. Text from the server is only ever set as
// textContent, never parsed as HTML.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  };

  // How far past a moment's end playback may run before the page stops it. The check runs on
  // every timeupdate and on a short timer while playing (timeupdate alone fires only every
  // ~250 ms), so a moment stops within a frame or two of its end.
  const STOP_CHECK_MS = 40;
  const DEFAULT_K = 20;
  const STOPWORDS = new Set(("a an and are as at be by for from has he her his in is it its of on or " +
    "she that the their them they this to was were when where which who with").split(" "));

  const state = {
    query: "",
    off: new Set(),       // modalities switched off (sent as w_<modality>=0)
    weights: {},          // w_<modality>=x from the URL (e.g. w_visual=1 brings in a random-weights
                          // modality the server leaves out), passed through as they are
    videos: [],           // video-key filter
    meta: [],             // "key=value" filters
    k: DEFAULT_K,
    moments: [],          // every moment shown so far, all pages
    hasMore: false,
    selected: -1,
    info: null,
    request: 0,           // the latest search; answers to older ones are dropped
  };

  const player = {
    video: null,
    moment: null,
    keep: false,          // "keep playing": do not stop at the moment's end
    ours: false,          // the next seek is the page's own, not the person's
    timer: 0,
  };

  // --- formatting ---------------------------------------------------------------------------

  function hms(seconds) {
    const s = Math.max(0, Math.round(seconds));
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    const sec = s % 60;
    return `${h}:${String(m).padStart(2, "0")}:${String(sec).padStart(2, "0")}`;
  }

  function span(start, end) {
    return `${hms(start)}–${hms(end)}`;
  }

  function queryWords(query) {
    const words = (query.toLowerCase().match(/[\p{L}\p{N}']+/gu) || [])
      .map((w) => w.replace(/^'+|'+$/g, ""))
      .filter((w) => w.length >= 2 && !STOPWORDS.has(w));
    return [...new Set(words)];
  }

  // The snippet as text nodes with the query's words in <mark> (whole words, any case).
  function highlighted(snippet, words) {
    const out = document.createDocumentFragment();
    if (!words.length) {
      out.append(snippet);
      return out;
    }
    const escaped = words.map((w) => w.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"));
    const pattern = new RegExp(`(?<![\\p{L}\\p{N}])(${escaped.join("|")})(?![\\p{L}\\p{N}])`, "giu");
    let last = 0;
    for (const match of snippet.matchAll(pattern)) {
      out.append(snippet.slice(last, match.index));
      out.append(el("mark", "", match[0]));
      last = match.index + match[0].length;
    }
    out.append(snippet.slice(last));
    return out;
  }

  // --- the URL carries the search -------------------------------------------------------------

  function readUrl() {
    const params = new URLSearchParams(location.search);
    state.query = params.get("q") || "";
    state.videos = params.getAll("video").filter(Boolean);
    state.meta = params.getAll("meta").filter(Boolean);
    state.off = new Set((params.get("off") || "").split(",").filter(Boolean));
    state.weights = {};
    for (const [name, value] of params) {
      if (/^w_[a-z]+$/.test(name) && value !== "" && Number.isFinite(Number(value))) state.weights[name] = value;
    }
    const k = parseInt(params.get("k") || "", 10);
    state.k = k >= 1 && k <= 100 ? k : DEFAULT_K;
    $("query").value = state.query;
    $("filter-video").value = state.videos.join(", ");
    $("filter-meta").value = state.meta.join(", ");
    const kSelect = $("filter-k");
    if (![...kSelect.options].some((o) => o.value === String(state.k))) kSelect.append(el("option", "", String(state.k)));
    kSelect.value = String(state.k);
    for (const box of document.querySelectorAll("input.modality")) box.checked = !state.off.has(box.value);
    if (state.videos.length || state.meta.length) $("filters").open = true;
  }

  function readForm() {
    state.query = $("query").value.trim();
    state.videos = splitList($("filter-video").value);
    state.meta = splitList($("filter-meta").value);
    state.k = parseInt($("filter-k").value, 10) || DEFAULT_K;
    state.off = new Set([...document.querySelectorAll("input.modality")].filter((b) => !b.checked).map((b) => b.value));
  }

  function splitList(text) {
    return text.split(",").map((s) => s.trim()).filter(Boolean);
  }

  function pageUrl() {
    const params = new URLSearchParams();
    if (state.query) params.set("q", state.query);
    for (const v of state.videos) params.append("video", v);
    for (const m of state.meta) params.append("meta", m);
    if (state.off.size) params.set("off", [...state.off].sort().join(","));
    for (const [name, value] of Object.entries(state.weights)) params.set(name, value);
    if (state.k !== DEFAULT_K) params.set("k", String(state.k));
    const query = params.toString();
    return query ? `/?${query}` : "/";
  }

  function apiUrl(offset) {
    const params = new URLSearchParams({ q: state.query, k: String(state.k), offset: String(offset) });
    for (const v of state.videos) params.append("video", v);
    for (const m of state.meta) params.append("meta", m);
    for (const [name, value] of Object.entries(state.weights)) params.set(name, value);
    for (const m of state.off) params.set(`w_${m}`, "0");
    return `/api/search?${params}`;
  }

  // --- talking to the gateway ------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function getJson(url) {
    let response;
    try {
      response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    } catch (err) {
      throw new ApiError(0, "The search gateway cannot be reached. Check that `spr web` is running.");
    }
    if (response.status === 401) {
      location.assign(`/login?next=${encodeURIComponent(location.pathname + location.search)}`);
      throw new ApiError(401, "A token is required: log in.");
    }
    let body = null;
    try {
      body = await response.json();
    } catch (err) {
      body = null;
    }
    if (!response.ok) {
      const message = body && body.error && body.error.message ? body.error.message : `HTTP ${response.status}`;
      throw new ApiError(response.status, message);
    }
    return body;
  }

  async function loadInfo() {
    try {
      state.info = await getJson("/api/info");
    } catch (err) {
      if (err.status !== 401) showError(`Could not read what can be searched: ${err.message}`);
      return;
    }
    const box = $("modalities");
    box.replaceChildren();
    for (const modality of state.info.modalities) {
      const label = el("label", "toggle");
      const input = el("input", "modality");
      input.type = "checkbox";
      input.value = modality;
      input.name = "modality";
      input.checked = !state.off.has(modality);
      input.addEventListener("change", () => {
        if ($("query").value.trim()) submit();
      });
      label.append(input, ` ${modality}`);
      box.append(label);
    }
  }

  // --- searching ---------------------------------------------------------------------------------

  function showOnly(which) {
    for (const id of ["state-loading", "state-empty", "state-error"]) $(id).hidden = id !== which;
  }

  function showError(message) {
    $("state-error").textContent = message;
    showOnly("state-error");
  }

  function submit() {
    readForm();
    if (!state.query) {
      $("query").focus();
      return;
    }
    const url = pageUrl();
    if (url !== location.pathname + location.search) history.pushState(null, "", url);
    search(false);
  }

  async function search(append) {
    const request = ++state.request;
    if (!append) {
      state.moments = [];
      state.selected = -1;
      $("results").replaceChildren();
      $("timelines").hidden = true;
      $("summary").hidden = true;
      $("more").hidden = true;
      $("banner-degraded").hidden = true;
      $("banner-random").hidden = true;
    }
    if (!state.query) {
      showOnly(null);
      return;
    }
    document.title = `${state.query} - Video moment search`;
    showOnly("state-loading");
    $("more").disabled = true;
    let answer;
    try {
      answer = await getJson(apiUrl(state.moments.length));
    } catch (err) {
      if (request === state.request && err.status !== 401) showError(err.message);
      return;
    } finally {
      $("more").disabled = false;
    }
    if (request !== state.request) return; // a newer search has started
    state.moments.push(...answer.moments);
    state.hasMore = answer.has_more;
    showOnly(state.moments.length ? null : "state-empty");
    renderBanners(answer);
    renderSummary(answer);
    renderResults(answer.moments);
    renderTimelines();
    rememberVideoKeys(answer.moments);
    $("more").hidden = !state.hasMore;
    if (!append && state.moments.length) select(0, false);
  }

  function renderBanners(answer) {
    // Random weights: results from such a modality are noise, and a modality left out because
    // of them changes what a search can find; either way the person must be told.
    const searched = answer.modalities.filter((m) => m.searched && m.random_weights).map((m) => m.modality);
    const leftOut = answer.modalities.filter((m) => !m.searched && m.random_weights).map((m) => m.modality);
    const randomBanner = $("banner-random");
    const parts = [];
    if (searched.length || (answer.random_weights && !leftOut.length)) {
      parts.push(`Random weights: the ${searched.join(", ") || "model"} encoder here has no trained weights, so ` +
        "its scores are not meaningful. Install real checkpoints for results that mean something.");
    }
    if (leftOut.length) {
      parts.push(`The ${leftOut.join(", ")} encoder has random weights here, so that modality is left out ` +
        "of these results.");
    }
    randomBanner.textContent = parts.join(" ");
    randomBanner.hidden = parts.length === 0;
    const degraded = $("banner-degraded");
    if (answer.degraded) {
      degraded.textContent = `Degraded results: ${answer.degraded_reason || "the refiner did not answer"}. ` +
        "These are the coarse moments, not refined.";
      degraded.hidden = false;
    } else {
      degraded.hidden = true;
    }
  }

  function renderSummary(answer) {
    const total = answer.timings_ms.total;
    const parts = [
      `${state.moments.length} moment${state.moments.length === 1 ? "" : "s"}${state.hasMore ? "+" : ""}`,
      answer.refined ? "refined" : "coarse",
      `collection ${answer.collection}`,
    ];
    if (total !== undefined) parts.push(`${Math.round(total)} ms`);
    const notes = answer.modalities.filter((m) => m.note).map((m) => `${m.modality}: ${m.note}`);
    if (answer.refine_note) notes.push(answer.refine_note);
    $("summary").textContent = parts.join(" · ") + (notes.length ? ` (${notes.join("; ")})` : "");
    $("summary").hidden = false;
  }

  function renderResults(moments) {
    const list = $("results");
    const words = queryWords(state.query);
    for (const m of moments) list.append(resultItem(m, words));
  }

  function resultItem(m, words) {
    const li = el("li", "result");
    li.tabIndex = 0;
    li.dataset.rank = String(m.rank);
    li.dataset.videoKey = m.video_key;
    li.dataset.start = String(m.start_s);
    li.dataset.end = String(m.end_s);
    li.dataset.segmentId = String(m.segment_id);

    const thumb = el("img", "thumb");
    thumb.src = m.thumbnail_url;
    thumb.alt = `${m.video_key} at ${hms(m.start_s)}`;
    thumb.width = 160;
    thumb.height = 90;
    thumb.loading = "lazy";
    thumb.decoding = "async";

    const body = el("div", "body");
    const head = el("div", "head");
    head.append(el("span", "rank", `${m.rank}.`), el("span", "video", m.video_key));
    const badge = el("span", `badge ${m.refined ? "refined" : "coarse"}`, m.refined ? "refined" : "coarse");
    badge.title = m.refined ? "boundaries sharpened by the refiner" : "segment-level (coarse) boundaries";
    head.append(badge);

    const times = el("div", "times");
    const main = el("span", "span", span(m.start_s, m.end_s));
    main.title = `${m.start_s.toFixed(2)} s – ${m.end_s.toFixed(2)} s`;
    times.append(main, el("span", "duration", `${m.duration_s.toFixed(1)} s`),
      el("span", "score", `score ${m.score.toFixed(3)}`));
    body.append(head, times);
    if (m.refined) {
      const coarse = el("div", "coarse-span", `coarse ${span(m.coarse_start_s, m.coarse_end_s)}`);
      coarse.title = "the span before refinement";
      body.append(coarse);
    }
    if (m.snippet) {
      const snippet = el("p", "snippet");
      if (m.snippet_track) snippet.append(el("span", "track", `${m.snippet_track}: `));
      snippet.append(highlighted(m.snippet, words));
      body.append(snippet);
    }
    body.append(timeline(m.video_key, m));
    const only = el("a", "only-video", "only this video");
    only.href = onlyVideoUrl(m.video_key);
    only.addEventListener("click", (event) => {
      event.preventDefault();
      event.stopPropagation();
      $("filter-video").value = m.video_key;
      submit();
    });
    body.append(only);
    li.append(thumb, body);
    li.addEventListener("click", () => {
      select(state.moments.indexOf(m), true);
    });
    return li;
  }

  function onlyVideoUrl(key) {
    const params = new URLSearchParams({ q: state.query, video: key });
    return `/?${params}`;
  }

  // A strip over the whole video: every hit of the video in the list so far, and (when given)
  // the current moment's refined and coarse spans.
  function timeline(key, current) {
    const strip = el("div", "timeline");
    strip.dataset.videoKey = key;
    const hits = state.moments.filter((m) => m.video_key === key);
    const duration = Math.max(...hits.map((m) => m.video_duration_s || m.end_s), 1);
    const place = (node, start, end) => {
      node.style.left = `${(100 * Math.max(0, start)) / duration}%`;
      node.style.width = `${Math.max(0.6, (100 * Math.max(0, end - start)) / duration)}%`;
    };
    if (current && current.refined) {
      const coarse = el("span", "coarse");
      place(coarse, current.coarse_start_s, current.coarse_end_s);
      strip.append(coarse);
    }
    for (const m of hits) {
      const hit = el("button", m === current ? "hit current" : "hit");
      hit.type = "button";
      hit.title = `#${m.rank} ${span(m.start_s, m.end_s)}`;
      hit.setAttribute("aria-label", `play hit ${m.rank} at ${hms(m.start_s)}`);
      place(hit, m.start_s, m.end_s);
      hit.addEventListener("click", (event) => {
        event.stopPropagation();
        select(state.moments.indexOf(m), true);
      });
      strip.append(hit);
    }
    return strip;
  }

  function renderTimelines() {
    const box = $("timelines");
    box.replaceChildren();
    const keys = [...new Set(state.moments.map((m) => m.video_key))];
    for (const key of keys) {
      const row = el("div", "timeline-row");
      row.append(el("span", "timeline-label", key), timeline(key, null));
      box.append(row);
    }
    box.hidden = keys.length === 0;
    // The per-result strips show the hits known when they were drawn; redraw them with all.
    for (const li of document.querySelectorAll("#results li.result")) {
      const m = state.moments[Number(li.dataset.rank) - 1];
      const old = li.querySelector(".timeline");
      if (m && old) old.replaceWith(timeline(m.video_key, m));
    }
  }

  function rememberVideoKeys(moments) {
    const list = $("video-keys");
    const known = new Set([...list.options].map((o) => o.value));
    for (const m of moments) {
      if (!known.has(m.video_key)) {
        const option = el("option");
        option.value = m.video_key;
        list.append(option);
        known.add(m.video_key);
      }
    }
  }

  // --- selecting and playing -----------------------------------------------------------------------

  function items() {
    return [...document.querySelectorAll("#results li.result")];
  }

  function select(index, play) {
    const all = items();
    if (index < 0 || index >= all.length) return;
    all.forEach((li, i) => li.classList.toggle("selected", i === index));
    state.selected = index;
    const li = all[index];
    li.scrollIntoView({ block: "nearest" });
    if (play) {
      li.focus({ preventScroll: true });
      playMoment(state.moments[index]);
    }
  }

  function playMoment(m) {
    const video = player.video;
    player.moment = m;
    player.keep = false;
    video.dataset.start = String(m.start_s);
    video.dataset.end = String(m.end_s);
    video.dataset.videoKey = m.video_key;
    $("player-hint").hidden = true;
    $("now-playing").hidden = false;
    $("now-title").textContent = `#${m.rank} ${m.video_key}`;
    $("now-spans").textContent = m.refined
      ? `refined ${span(m.start_s, m.end_s)} · coarse ${span(m.coarse_start_s, m.coarse_end_s)}`
      : `coarse ${span(m.start_s, m.end_s)}`;
    $("now-timeline").replaceWith(nowTimeline(m));
    $("keep-playing").disabled = false;
    $("replay").disabled = false;
    const start = () => {
      seekTo(m.start_s);
      const played = video.play();
      if (played && played.catch) played.catch(() => { /* autoplay refused: the controls remain */ });
    };
    const source = new URL(m.media_url, location.href).href;
    if (video.currentSrc !== source && video.src !== source) {
      video.src = m.media_url;
      video.addEventListener("loadedmetadata", start, { once: true });
      video.load();
    } else if (video.readyState >= 1) {
      start();
    } else {
      video.addEventListener("loadedmetadata", start, { once: true });
    }
  }

  function nowTimeline(m) {
    const strip = timeline(m.video_key, m);
    strip.id = "now-timeline";
    strip.classList.add("big");
    return strip;
  }

  function seekTo(seconds) {
    player.ours = true;
    player.video.currentTime = seconds;
  }

  function checkStop() {
    const video = player.video;
    const m = player.moment;
    if (!m || player.keep || video.paused) return;
    if (video.currentTime >= m.end_s) {
      video.pause();
    }
  }

  function setUpPlayer() {
    const video = $("player");
    player.video = video;
    video.addEventListener("timeupdate", checkStop);
    video.addEventListener("playing", () => {
      clearInterval(player.timer);
      player.timer = setInterval(checkStop, STOP_CHECK_MS);
    });
    video.addEventListener("pause", () => clearInterval(player.timer));
    video.addEventListener("ended", () => clearInterval(player.timer));
    video.addEventListener("seeking", () => {
      if (player.ours) {
        player.ours = false;
        return;
      }
      // The person moved the playhead outside the moment: let them watch from there.
      const m = player.moment;
      if (m && (video.currentTime < m.start_s - 0.5 || video.currentTime > m.end_s)) player.keep = true;
    });
    video.addEventListener("error", () => {
      const code = video.error ? video.error.code : 0;
      showError(code === 4
        ? "This browser cannot play the video's format (try a browser with H.264, or ingest VP9/WebM)."
        : "The video could not be loaded.");
    });
    $("keep-playing").addEventListener("click", () => {
      player.keep = true;
      const played = video.play();
      if (played && played.catch) played.catch(() => {});
    });
    $("replay").addEventListener("click", () => {
      if (player.moment) playMoment(player.moment);
    });
  }

  // --- keyboard ------------------------------------------------------------------------------------

  function onKey(event) {
    if (event.altKey || event.ctrlKey || event.metaKey) return;
    const target = event.target;
    const typing = target instanceof HTMLInputElement || target instanceof HTMLTextAreaElement ||
      target instanceof HTMLSelectElement;
    if (typing) {
      if (event.key === "Escape") target.blur();
      return;
    }
    if (event.key === "/") {
      event.preventDefault();
      $("query").focus();
      $("query").select();
    } else if (event.key === "j" || event.key === "ArrowDown") {
      event.preventDefault();
      select(Math.min(state.selected + 1, items().length - 1), false);
      focusSelected();
    } else if (event.key === "k" || event.key === "ArrowUp") {
      event.preventDefault();
      select(Math.max(state.selected - 1, 0), false);
      focusSelected();
    } else if (event.key === "Enter" && (target === document.body || (target.classList && target.classList.contains("result")))) {
      event.preventDefault();
      if (state.selected >= 0) select(state.selected, true);
    }
  }

  function focusSelected() {
    const li = items()[state.selected];
    if (li) li.focus({ preventScroll: true });
  }

  // --- start ------------------------------------------------------------------------------------

  async function start() {
    setUpPlayer();
    $("search-form").addEventListener("submit", (event) => {
      event.preventDefault();
      submit();
    });
    $("filter-k").addEventListener("change", () => {
      if ($("query").value.trim()) submit();
    });
    $("more").addEventListener("click", () => search(true));
    document.addEventListener("keydown", onKey);
    window.addEventListener("popstate", () => {
      readUrl();
      search(false);
    });
    readUrl();
    await loadInfo();
    readUrl(); // the toggles exist now
    if (state.query) search(false);
    else $("query").focus();
    document.body.dataset.ready = "1";
  }

  start();
})();
