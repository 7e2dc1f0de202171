/* clipsonic listening test: the page that `clipsonic listen make` writes beside test.js.
 *
 * Static and offline (works from file:// and any static host; no server, no third-party code).
 * Flow: instructions and a listener id -> a practice trial -> K trials -> the answers downloaded
 * as one JSON file. Each listener's trials, their order, the order of the samples in a trial and
 * which trials carry the hidden attention checks are drawn from a seed made of the test id and
 * the listener id: different per listener, the same on every visit. Everything is kept in
 * localStorage as the listener goes, so a reload or a closed tab loses nothing.
 */
(function () {
  "use strict";

  const TEST = window.LISTEN_TEST;
  const app = document.getElementById("app");
  const QUESTIONS = [
    { key: "fidelity", title: "Fidelity", question: "How good is the sound quality, regardless of the prompt?",
      labels: ["Bad", "Poor", "Fair", "Good", "Excellent"] },
    { key: "relevance", title: "Relevance", question: "How well does the sound match the prompt, regardless of its quality?",
      labels: ["Not at all", "Slightly", "Somewhat", "Mostly", "Completely"] },
  ];
  const LISTENER_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

  // --- storage: one record per listener, plus which listener is taking the test now ---------------
  const PREFIX = "clipsonic-listen:" + (TEST ? TEST.test_id : "none") + ":";
  let storageWorks = true;
  function load(key) {
    try { const text = window.localStorage.getItem(PREFIX + key); return text === null ? null : JSON.parse(text); }
    catch (error) { storageWorks = false; return null; }
  }
  function store(key, value) {
    try {
      if (value === null) window.localStorage.removeItem(PREFIX + key);
      else window.localStorage.setItem(PREFIX + key, JSON.stringify(value));
    } catch (error) { storageWorks = false; }
  }

  // --- seeded draws: cyrb53-style string hash -> mulberry32 generator -------------------------------
  function hash32(text) {
    let h1 = 0xdeadbeef, h2 = 0x41c6ce57;
    for (let i = 0; i < text.length; i++) {
      const c = text.charCodeAt(i);
      h1 = Math.imul(h1 ^ c, 2654435761);
      h2 = Math.imul(h2 ^ c, 1597334677);
    }
    h1 = Math.imul(h1 ^ (h1 >>> 16), 2246822507) ^ Math.imul(h2 ^ (h2 >>> 13), 3266489909);
    return h1 >>> 0;
  }
  function mulberry32(seed) {
    let a = seed >>> 0;
    return function () {
      a = (a + 0x6d2b79f5) >>> 0;
      let t = Math.imul(a ^ (a >>> 15), 1 | a);
      t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
  }
  function shuffled(values, random) {
    const copy = values.slice();
    for (let i = copy.length - 1; i > 0; i--) {
      const j = Math.floor(random() * (i + 1));
      [copy[i], copy[j]] = [copy[j], copy[i]];
    }
    return copy;
  }
  function range(n) { return Array.from({ length: n }, (_, i) => i); }

  function samplesOf(prompt) {
    return TEST.systems.map((system) => ({ kind: "sample", system: system, file: prompt.audio[system] }));
  }

  /* The listener's trials: K prompts, each with every system's sample; `checks` of the trials get
   * the degraded anchor as one more sample, `checks` (drawn separately) the check source's sample
   * a second time. Sample order is shuffled within each trial. */
  function makePlan(listener) {
    const seed = hash32(TEST.test_id + ":" + listener);
    const random = mulberry32(seed);
    const prompts = shuffled(range(TEST.prompts.length), random).slice(0, TEST.per_listener);
    const anchors = new Set(shuffled(range(prompts.length), random).slice(0, TEST.checks));
    const repeats = new Set(shuffled(range(prompts.length), random).slice(0, TEST.checks));
    const trials = prompts.map((index, t) => {
      const prompt = TEST.prompts[index];
      const items = samplesOf(prompt);
      if (anchors.has(t)) items.push({ kind: "anchor", system: TEST.anchor_name, file: prompt.anchor });
      if (repeats.has(t)) items.push({ kind: "repeat", system: TEST.check_source, file: prompt.audio[TEST.check_source] });
      return { prompt: index, items: shuffled(items, random) };
    });
    const practice = TEST.prompts[TEST.training];
    const examples = samplesOf(practice);
    if (practice.anchor) examples.push({ kind: "anchor", system: TEST.anchor_name, file: practice.anchor });
    return { seed: seed, trials: trials, training: { prompt: TEST.training, items: shuffled(examples, random) } };
  }

  function newSession(listener) {
    const plan = makePlan(listener);
    return {
      listener: listener, plan: plan, page: "training", started: now(), finished: null, downloaded: false,
      answers: plan.trials.map((trial) => trial.items.map(() => ({ fidelity: null, relevance: null, answered: null, plays: 0, ended: false }))),
      trial_started: plan.trials.map(() => null), trial_finished: plan.trials.map(() => null),
    };
  }

  let state = null;
  function save() { if (state) store("session:" + state.listener, state); }
  function now() { return new Date().toISOString(); }
  function letter(i) { return i < 26 ? String.fromCharCode(65 + i) : "A" + String.fromCharCode(65 + i - 26); }

  // --- building blocks ------------------------------------------------------------------------------
  function element(tag, attributes, children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes || {})) {
      if (name === "text") node.textContent = value;
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else if (value !== null && value !== undefined && value !== false) node.setAttribute(name, value === true ? "" : value);
    }
    for (const child of children || []) if (child) node.appendChild(child);
    return node;
  }
  function show(nodes, title) {
    app.replaceChildren(...nodes.filter(Boolean));
    document.title = (title ? title + " · " : "") + TEST.title;
    const heading = app.querySelector("h1");
    if (heading) { heading.setAttribute("tabindex", "-1"); heading.focus(); }
    window.scrollTo(0, 0);
  }
  function promptBlock(prompt) {
    const content = prompt.image
      ? element("img", { src: prompt.image, alt: prompt.text ? "Picture: " + prompt.text : "A picture" })
      : element("p", { class: "prompt-text", text: "\u201c" + prompt.text + "\u201d" });
    return element("section", { class: "prompt", "aria-label": "Prompt" },
      [element("h2", { text: prompt.image ? "The prompt (a picture)" : "The prompt (a text)" }), content]);
  }
  function audioPlayer(file, answer, onchange) {
    const audio = element("audio", { controls: true, preload: "auto", src: file });
    audio.addEventListener("play", () => {
      for (const other of app.querySelectorAll("audio")) if (other !== audio) other.pause();
      if (answer) { answer.plays += 1; onchange(); }
    });
    audio.addEventListener("ended", () => { if (answer) { answer.ended = true; onchange(); } });
    return audio;
  }
  function scale(name, question, value, onpick) {
    const options = question.labels.map((word, k) => {
      const input = element("input", { type: "radio", name: name, value: String(k + 1), id: name + "-" + (k + 1),
        checked: value === k + 1 });
      input.addEventListener("change", () => onpick(k + 1));
      return element("label", { for: name + "-" + (k + 1) },
        [input, element("span", { text: String(k + 1) }), element("span", { class: "word", text: word })]);
    });
    return element("fieldset", {}, [
      element("legend", {}, [element("strong", { text: question.title + ":" }), document.createTextNode(question.question)]),
      element("div", { class: "scale" }, options)]);
  }
  function sampleBlock(id, label, file, answer, onchange) {
    const played = element("span", { class: "not-played", text: answer && answer.plays === 0 ? "not played yet" : "" });
    const update = () => { played.textContent = answer.plays === 0 ? "not played yet" : ""; onchange(); };
    const questions = QUESTIONS.map((question) => scale(id + "-" + question.key, question, answer ? answer[question.key] : null,
      (value) => { if (answer) { answer[question.key] = value; answer.answered = now(); onchange(); } }));
    return element("section", { class: "sample", "aria-labelledby": id + "-h" },
      [element("h3", { id: id + "-h" }, [document.createTextNode(label), answer ? played : null]),
        audioPlayer(file, answer, answer ? update : null), ...questions]);
  }

  // --- pages ----------------------------------------------------------------------------------------
  function introPage() {
    const preset = new URLSearchParams(window.location.search).get("listener") || "";
    const input = element("input", { type: "text", id: "listener", name: "listener", value: preset, autocomplete: "off",
      spellcheck: "false", "aria-describedby": "listener-hint" });
    const message = element("p", { class: "message", id: "intro-message", role: "alert" });
    const start = () => {
      const listener = input.value.trim();
      if (!LISTENER_PATTERN.test(listener)) {
        message.textContent = "Enter a listener id: letters, digits, '-', '_' or '.', up to 64 characters (or press Make an id).";
        input.focus();
        return;
      }
      state = load("session:" + listener) || newSession(listener);
      store("current", listener);
      save();
      route();
    };
    input.addEventListener("keydown", (event) => { if (event.key === "Enter") start(); });
    const points = [
      element("li", { text: "You will hear short sounds made for a prompt: a text, or a picture. Each trial shows one prompt and several sounds for it, in a random order." }),
      element("li", {}, [element("strong", { text: "Fidelity: " }), document.createTextNode("rate the sound quality (clean, natural, free of glitches) from 1 (bad) to 5 (excellent), whatever the prompt.")]),
      element("li", {}, [element("strong", { text: "Relevance: " }), document.createTextNode("rate how well the sound matches the prompt from 1 (not at all) to 5 (completely), whatever its quality.")]),
      element("li", { text: "Play every sound at least once; replay as often as you like. Use headphones in a quiet room and keep the volume the same throughout." }),
      element("li", { text: "Your answers are kept in this browser as you go: you can close the page and come back with the same listener id. At the end a file with your answers is downloaded: send it to whoever runs the test." }),
    ];
    show([
      element("h1", { text: TEST.title }),
      element("p", { text: TEST.per_listener + " trials, about " + Math.max(1, Math.round(TEST.per_listener * (TEST.systems.length + 1) * 0.5)) + " minutes." }),
      element("ul", {}, points),
      element("div", { class: "field" }, [element("label", { for: "listener", text: "Your listener id" }),
        element("p", { class: "hint", id: "listener-hint", text: "Use the id you were given, or make one and keep it." })]),
      element("div", { class: "actions" }, [input,
        element("button", { type: "button", class: "secondary", id: "make-id", text: "Make an id", onclick: () => {
          const bytes = new Uint8Array(4);
          window.crypto.getRandomValues(bytes);
          input.value = "L-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
          input.focus();
        } })]),
      message,
      storageWorks ? null : element("p", { class: "message", text: "This browser does not let the page keep answers: do not reload it before the end." }),
      element("div", { class: "actions" }, [element("button", { type: "button", id: "start", text: "Start", onclick: start })]),
    ], "Instructions");
  }

  function trainingPage() {
    const training = state.plan.training;
    const prompt = TEST.prompts[training.prompt];
    show([
      element("h1", { text: "Practice" }),
      element("p", { text: "These sounds show the range you will hear, from poor to good. Listen to them and try the questions: these answers are not recorded." }),
      promptBlock(prompt),
      ...training.items.map((item, i) => sampleBlock("practice-" + i, "Example " + (i + 1), item.file, null, null)),
      element("div", { class: "actions" }, [element("button", { type: "button", id: "next", text: "Start the test", onclick: () => {
        state.page = 0;
        save();
        route();
      } })]),
    ], "Practice");
  }

  function missingIn(t) {
    const missing = [];
    state.answers[t].forEach((answer, i) => {
      const lacks = [];
      if (answer.plays === 0) lacks.push("not played");
      for (const question of QUESTIONS) if (answer[question.key] === null) lacks.push(question.key);
      if (lacks.length) missing.push("Sample " + letter(i) + " (" + lacks.join(", ") + ")");
    });
    return missing;
  }

  function trialPage(t) {
    const trial = state.plan.trials[t];
    const total = state.plan.trials.length;
    if (!state.trial_started[t]) { state.trial_started[t] = now(); save(); }
    const message = element("p", { class: "message", id: "trial-message", role: "alert" });
    const changed = () => { save(); if (message.textContent && missingIn(t).length === 0) message.textContent = ""; };
    const next = () => {
      const missing = missingIn(t);
      if (missing.length) { message.textContent = "Please play and rate every sample: " + missing.join("; ") + "."; return; }
      state.trial_finished[t] = now();
      if (t + 1 < total) state.page = t + 1;
      else { state.page = "done"; state.finished = now(); }
      save();
      route();
    };
    show([
      element("div", { class: "progress" }, [element("span", { text: "Trial " + (t + 1) + " of " + total }),
        element("progress", { max: String(total), value: String(t), "aria-label": t + " of " + total + " trials done" })]),
      element("h1", { text: "Trial " + (t + 1) }),
      promptBlock(TEST.prompts[trial.prompt]),
      ...trial.items.map((item, i) => sampleBlock("t" + t + "-s" + i, "Sample " + letter(i), item.file, state.answers[t][i], changed)),
      message,
      element("div", { class: "actions" }, [element("button", { type: "button", id: "next",
        text: t + 1 < total ? "Next trial" : "Finish", onclick: next })]),
    ], "Trial " + (t + 1) + " of " + total);
  }

  function donePage() {
    const name = fileName();
    if (!state.downloaded) { download(); state.downloaded = true; save(); }
    show([
      element("h1", { text: "Thank you" }),
      element("p", {}, [document.createTextNode("Your answers were downloaded as "), element("code", { text: name }),
        document.createTextNode(". Send that file to whoever runs the test. If no file appeared, download it again:")]),
      element("div", { class: "actions" }, [
        element("button", { type: "button", id: "download", text: "Download my answers", onclick: download }),
        element("button", { type: "button", class: "secondary", id: "new-listener", text: "Start for another listener", onclick: () => {
          store("current", null);
          state = null;
          route();
        } })]),
    ], "Done");
  }

  // --- the answers ----------------------------------------------------------------------------------
  function checkOutcomes(trials) {
    const rules = TEST.rules;
    const outcomes = [];
    trials.forEach((trial) => {
      const base = trial.items.find((item) => item.kind === "sample" && item.system === TEST.check_source);
      for (const item of trial.items) {
        if (item.kind !== "anchor" && item.kind !== "repeat") continue;
        const mine = item.fidelity, theirs = base ? base.fidelity : null;
        let passed = mine !== null && theirs !== null;
        if (passed && item.kind === "anchor") passed = mine <= theirs + rules.anchor_margin;
        if (passed && item.kind === "repeat") passed = Math.abs(mine - theirs) <= rules.repeat_max_difference;
        outcomes.push({ kind: item.kind, trial: trial.index, prompt: trial.prompt, fidelity: mine, reference_fidelity: theirs, passed: passed });
      }
    });
    return outcomes;
  }

  function results() {
    const trials = state.plan.trials.map((trial, t) => {
      const prompt = TEST.prompts[trial.prompt];
      return {
        index: t, prompt: prompt.id, text: prompt.text, image: prompt.image,
        started: state.trial_started[t], finished: state.trial_finished[t],
        items: trial.items.map((item, i) => Object.assign({ label: letter(i), kind: item.kind, system: item.system, file: item.file },
          state.answers[t][i])),
      };
    });
    const checks = checkOutcomes(trials);
    return {
      format: TEST.results_format, version: TEST.version, test_id: TEST.test_id, title: TEST.title,
      listener: state.listener, seed: state.plan.seed, user_agent: navigator.userAgent,
      started: state.started, finished: state.finished, complete: state.page === "done",
      per_listener: TEST.per_listener, systems: TEST.systems, reference: TEST.reference,
      check_source: TEST.check_source, anchor_recipe: TEST.anchor_recipe, rules: TEST.rules,
      checks: checks, failed_checks: checks.filter((check) => !check.passed).length, trials: trials,
    };
  }
  function fileName() { return "listen-" + TEST.test_id.slice(0, 8) + "-" + state.listener + ".json"; }
  function download() {
    const blob = new Blob([JSON.stringify(results(), null, 1) + "\n"], { type: "application/json" });
    const url = URL.createObjectURL(blob);
    const link = element("a", { href: url, download: fileName() });
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  }

  function route() {
    if (state === null) {
      const current = load("current");
      state = current ? load("session:" + current) : null;
    }
    if (state === null) introPage();
    else if (state.page === "training") trainingPage();
    else if (state.page === "done") donePage();
    else trialPage(state.page);
  }

  if (!TEST) {
    app.replaceChildren(element("p", { class: "message", text: "test.js is missing: write this page with `clipsonic listen make`." }));
    return;
  }
  window.clipsonicListen = { results: () => (state ? results() : null), plan: makePlan };  // for scripted checks
  route();
})();
