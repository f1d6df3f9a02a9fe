// resforce play: draws the frames the server streams and sends what the player does.
// Server -> page: one JSON "hello" (frame size, actions, key map), then one binary message a
// frame: a little-endian header (episode u32, frame u32, action i32 (-1: reset), input seq u32,
// step ms f32) and H*W*3 RGB bytes. Page -> server: JSON {type: action|reset|pause, ...}.
"use strict";
(() => {
  const HEADER_BYTES = 20;
  const KEEP_FRAMES = 240;  // frames kept for inspection (window.resforcePlay): 190 kB, constant
  const $ = (id) => document.getElementById(id);
  const canvas = $("screen"), ctx = canvas.getContext("2d");
  const state = {
    hello: null, image: null, ws: null, seq: 0, sentAt: new Map(), seenSeq: 0,
    arrivals: [], received: [], count: 0, held: [], paused: false,
  };

  function setState(s, text) {
    document.body.dataset.state = s;
    $("overlay").textContent = text || "";
  }
  function message(text, isError) {
    $("message").textContent = text;
    $("message").className = "message" + (isError ? " error" : "");
  }
  function send(msg) {
    if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(msg));
  }

  // -- actions: the most recently pressed key or button still held wins; none: the default
  function currentAction() {
    const h = state.held;
    return h.length ? h[h.length - 1].action : state.hello.actions[state.hello.default];
  }
  function sendAction() {
    const seq = ++state.seq;
    state.sentAt.set(seq, performance.now());
    if (state.sentAt.size > 64) state.sentAt.delete(state.sentAt.keys().next().value);
    send({type: "action", action: currentAction(), seq});
    for (const b of document.querySelectorAll("#buttons button"))
      b.classList.toggle("held", state.held.some((h) => h.action === b.dataset.action));
  }
  function press(id, action) {
    if (state.held.some((h) => h.id === id)) return;
    state.held.push({id, action});
    sendAction();
  }
  function release(id) {
    const n = state.held.length;
    state.held = state.held.filter((h) => h.id !== id);
    if (state.held.length !== n) sendAction();
  }
  function keyAction(e) {
    const keys = state.hello && state.hello.keys;
    if (!keys) return null;
    return keys[e.key] || keys[e.key.toLowerCase()] || null;
  }
  window.addEventListener("keydown", (e) => {
    if (e.target instanceof HTMLInputElement) return;  // typing a seed
    const action = keyAction(e);
    if (!action) return;
    e.preventDefault();  // arrows would scroll the page
    if (!e.repeat) press("key:" + e.key.toLowerCase(), action);
  });
  window.addEventListener("keyup", (e) => {
    if (keyAction(e)) { e.preventDefault(); release("key:" + e.key.toLowerCase()); }
  });
  window.addEventListener("blur", () => { if (state.held.length) { state.held = []; sendAction(); } });

  // -- on-page buttons, held like keys (a d-pad when the moves are there)
  const PAD = ["", "up", "", "left", "noop", "right", "", "down", ""];
  function buildButtons(hello) {
    const box = $("buttons");
    box.textContent = "";
    const names = hello.actions;
    const isPad = ["noop", "left", "right", "up", "down"].every((n) => names.includes(n));
    const layout = isPad ? PAD.concat(names.filter((n) => !PAD.includes(n))) : names;
    box.classList.toggle("flat", !isPad);
    for (const name of layout) {
      const el = document.createElement(name ? "button" : "span");
      if (name) {
        el.type = "button";
        el.textContent = {left: "←", right: "→", up: "↑", down: "↓", noop: "·"}[name] || name;
        el.title = name;
        el.dataset.action = name;
        const id = "button:" + name;
        el.addEventListener("pointerdown", (e) => { e.preventDefault(); el.setPointerCapture(e.pointerId); press(id, name); });
        for (const ev of ["pointerup", "pointercancel", "lostpointercapture"]) el.addEventListener(ev, () => release(id));
      }
      box.appendChild(el);
    }
    const label = {ArrowLeft: "←", ArrowRight: "→", ArrowUp: "↑", ArrowDown: "↓", " ": "space"};
    const byAction = {};
    for (const [k, a] of Object.entries(hello.keys)) (byAction[a] = byAction[a] || []).push(label[k] || k);
    $("keys").textContent = "keys (focus the page): " +
      Object.entries(byAction).map(([a, ks]) => `${ks.join(" or ")} ${a}`).join(" · ");
  }

  $("reset-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const seed = Number($("seed").value);
    if (!Number.isInteger(seed) || seed < 0) { message("seed: a whole number >= 0", true); return; }
    send({type: "reset", seed});
    canvas.focus();
  });
  $("pause").addEventListener("click", () => {
    state.paused = !state.paused;
    $("pause").textContent = state.paused ? "Resume" : "Pause";
    send({type: "pause", paused: state.paused});
  });

  // -- frames
  function onHello(hello) {
    state.hello = hello;
    canvas.width = hello.width;
    canvas.height = hello.height;
    state.image = ctx.createImageData(hello.width, hello.height);
    state.image.data.fill(255);  // alpha
    $("source").textContent = hello.source;
    $("seed").value = hello.seed;
    buildButtons(hello);
    setState("playing");
    canvas.focus();
  }
  function onFrame(buf) {
    const head = new DataView(buf, 0, HEADER_BYTES);
    const f = {
      episode: head.getUint32(0, true), index: head.getUint32(4, true), action: head.getInt32(8, true),
      seq: head.getUint32(12, true), stepMs: head.getFloat32(16, true), t: performance.now(),
    };
    const rgb = new Uint8Array(buf, HEADER_BYTES);
    const px = state.image.data;
    for (let i = 0, j = 0; i < rgb.length; i += 3, j += 4) { px[j] = rgb[i]; px[j + 1] = rgb[i + 1]; px[j + 2] = rgb[i + 2]; }
    ctx.putImageData(state.image, 0, 0);
    f.rgb = rgb;
    state.received.push(f);
    if (state.received.length > KEEP_FRAMES) state.received.shift();
    state.count += 1;
    updateStats(f);
  }
  function updateStats(f) {
    const now = f.t;
    state.arrivals.push(now);
    while (state.arrivals.length > 2 && now - state.arrivals[0] > 1000) state.arrivals.shift();
    const span = now - state.arrivals[0];
    if (span > 0) $("fps").textContent = ((state.arrivals.length - 1) * 1000 / span).toFixed(1);
    $("step-ms").textContent = f.stepMs.toFixed(1) + " ms";
    if (f.seq > state.seenSeq) {  // the first frame made after this input
      state.seenSeq = f.seq;
      const t0 = state.sentAt.get(f.seq);
      if (t0 !== undefined) $("latency").textContent = (now - t0).toFixed(0) + " ms";
    }
    $("frame").textContent = `${f.episode}:${f.index}`;
    $("action").textContent = f.action < 0 ? "reset" : state.hello.actions[f.action];
  }

  function connect() {
    // the server's per-launch token, in the page it served: no other site can read it
    const token = document.querySelector('meta[name="resforce-token"]').content;
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}/ws?token=${encodeURIComponent(token)}`);
    ws.binaryType = "arraybuffer";
    state.ws = ws;
    ws.onmessage = (e) => {
      if (typeof e.data !== "string") return onFrame(e.data);
      const msg = JSON.parse(e.data);
      if (msg.type === "hello") onHello(msg);
      else if (msg.type === "error") message(msg.message, true);
      else if (msg.type === "closed") message(msg.message, false);
    };
    ws.onclose = (e) => {
      if (e.code === 1009) message("a message was too large for the server", true);
      setState("closed", ($("message").textContent || "disconnected") + " — reload to play");
    };
  }

  // for tests and debugging: the last frames this page received, RGB as base64
  window.resforcePlay = {
    state,
    get count() { return state.count; },
    get hello() { return state.hello; },
    frames(n) {
      return state.received.slice(-n).map((f) => ({
        episode: f.episode, index: f.index, action: f.action, seq: f.seq, stepMs: f.stepMs,
        rgb: btoa(String.fromCharCode.apply(null, f.rgb)),
      }));
    },
  };
  connect();
})();
