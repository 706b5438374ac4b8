// The interview: patient first, then one opening question (what the problem is and where: the
// complaints and pain sites, each a finding), then the questions ask_next ranks highest (up to
// three at a time: the red-flag screen of what was ticked first, then urgency, then the rest),
// with the answer so far beside them. A finding of a question group (rules/presentations.yaml)
// is asked with the rest of its group as one question, where its best-ranked item stands: one
// checkbox per item, "None of these" and "Don't know" (as service/web/interview.py next_asks).
// Uses el(), evaluate(), render() and TIER_WORDS from ui.js. Every value from the service is
// written as text.
"use strict";

const SHOWN_AT_ONCE = 3;
const ASK_NEXT_LIMIT = 200; // all of them: the stop rules need to know whether any could raise the tier
const TIER_ORDER = ["routine", "soon", "urgent", "emergency"];

const iv = {
  answers: new Map(), // code -> {present: true|false|null, value?}, in the order answered
  questions: new Map(), // code -> the ask_next item it was asked with (for the answered list)
  groups: new Map(), // finding code -> its question group {id, label, items: [{code, display, question}]}
  pending: [], // keys shown in "Ask next", unanswered: a finding code, or "group:" + a group's id
  pendingCodes: new Set(), // the findings those questions ask (a group's items shown with it)
  version: 0, // bumped on every change of the answers
  inFlight: false, // one request at a time; the latest answers win
  last: null, // the latest answer rendered
};

function ivRequest() {
  const body = { patient: {}, findings: [], ask_next_limit: ASK_NEXT_LIMIT };
  const age = document.getElementById("iv-age").value;
  if (age !== "") body.patient.age = Number(age);
  const sex = document.getElementById("iv-sex").value;
  if (sex) body.patient.sex = sex;
  for (const box of document.querySelectorAll("#iv-opening input[data-code]:checked")) {
    if (!iv.answers.has(box.dataset.code)) body.findings.push({ code: box.dataset.code, present: true });
  }
  for (const [code, a] of iv.answers) body.findings.push({ code, ...a });
  return body;
}

function ivStarted() {
  return document.getElementById("iv-age").value !== "" || document.getElementById("iv-sex").value !== ""
    || iv.answers.size > 0 || document.querySelector("#iv-opening input[data-code]:checked") !== null;
}

// Any change: ask again. A change while a request is out is sent when it returns (not in
// parallel), and an answer to older answers is never shown.
async function refresh() {
  iv.version += 1;
  if (iv.inFlight || !ivStarted()) return;
  iv.inFlight = true;
  document.getElementById("live").setAttribute("aria-busy", "true");
  try {
    for (;;) {
      const version = iv.version;
      const answer = await evaluate(ivRequest());
      if (version !== iv.version) continue; // answers changed meanwhile: ask again with the latest
      if (answer) showLive(answer);
      break;
    }
  } finally {
    iv.inFlight = false;
    document.getElementById("live").setAttribute("aria-busy", "false");
  }
}

function answerText(q, a) {
  if (a.present === null) return "Don't know";
  if (a.present === false) return "No";
  if (a.value === undefined) return "Yes";
  return q.type === "choice" ? String(a.value).replace(/_/g, " ") : `${a.value}${q.unit && q.unit !== "1" ? " " + q.unit : ""}`;
}

// One question as a control group; `a` is the current answer (undefined: not answered yet).
function questionBox(q, a) {
  const code = q.finding;
  const box = el("fieldset", { class: "iv-q", "data-code": code, id: "iv-q-" + code });
  const tag = q.aim === "urgency" ? "Red-flag screen" : "Tells the causes apart";
  box.append(el("legend", {}, q.question), el("span", { class: "iv-aim iv-aim-" + q.aim }, tag));
  const answers = el("div", { class: "answers" });
  const pick = (value) => setAnswer(q, value);
  if (q.type === "boolean") {
    for (const [label, value] of [["Yes", true], ["No", false], ["Don't know", null]]) {
      const id = `iv-${code}-${value === null ? "unknown" : value ? "yes" : "no"}`;
      const input = el("input", { type: "radio", name: "iv-" + code, id });
      if (a && a.present === value) input.checked = true;
      input.addEventListener("change", () => pick({ present: value }));
      answers.append(input, el("label", { for: id }, label));
    }
  } else if (q.type === "number") {
    const id = `iv-${code}-value`;
    const input = el("input", { type: "number", step: "any", id });
    if (a && a.value !== undefined) input.value = a.value;
    const unit = q.unit && q.unit !== "1" ? " (" + q.unit + ")" : "";
    input.addEventListener("change", () => {
      if (input.value !== "") pick({ present: true, value: Number(input.value) });
    });
    const unknown = el("button", { type: "button", class: "secondary", id: `iv-${code}-unknown` }, "Don't know");
    unknown.addEventListener("click", () => { input.value = ""; pick({ present: null }); });
    answers.append(el("label", { for: id }, "Value" + unit), input, unknown);
  } else {
    const id = `iv-${code}-value`;
    const select = el("select", { id }, el("option", { value: "" }, "Choose"),
      ...(q.choices || []).map((c) => el("option", { value: c }, c.replace(/_/g, " "))),
      el("option", { value: "?" }, "Don't know"));
    if (a) select.value = a.present === null ? "?" : a.value || "";
    select.addEventListener("change", () => {
      if (select.value) pick(select.value === "?" ? { present: null } : { present: true, value: select.value });
    });
    answers.append(el("label", { for: id }, "Answer"), select);
  }
  box.append(answers);
  return box;
}

// A group as one question: the label read aloud, a checkbox per item not answered when it was
// first shown (ticked: present, sent at once), then "None of these" (every item not ticked is
// denied) or "Don't know" (every item not ticked is asked and not known).
function groupBox(group, codes, first) {
  const box = el("fieldset", { class: "iv-q iv-group", "data-group": group.id, id: "iv-g-" + group.id });
  const tag = first.aim === "urgency" ? "Red-flag screen" : "Tells the causes apart";
  box.append(el("legend", {}, group.label), el("span", { class: "iv-aim iv-aim-" + first.aim }, tag),
    el("p", { class: "hint" }, "One question: tick what the patient says yes to."));
  const items = el("div", { class: "sites iv-items" });
  const byCode = new Map(group.items.map((i) => [i.code, i]));
  for (const code of codes) {
    const item = byCode.get(code);
    const id = `iv-g-${group.id}-${code}`;
    const input = el("input", { type: "checkbox", id, "data-code": code });
    iv.questions.set(code, iv.questions.get(code) || { finding: code, display: item.display, question: item.question,
      type: "boolean", aim: first.aim });
    input.addEventListener("change", () => {
      if (input.checked) iv.answers.set(code, { present: true });
      else iv.answers.delete(code);
      labelGroupButtons(box);
      refresh();
    });
    items.append(el("span", { class: "site" }, input, el("label", { for: id }, item.display)));
  }
  const none = el("button", { type: "button", class: "secondary", id: `iv-g-${group.id}-none` }, "None of these");
  const unknown = el("button", { type: "button", class: "secondary", id: `iv-g-${group.id}-unknown` }, "Don't know");
  const rest = (present) => {
    for (const input of box.querySelectorAll("input[data-code]")) {
      if (!input.checked) iv.answers.set(input.dataset.code, { present });
    }
    box.classList.add("iv-answered");
    document.getElementById("iv-done-empty").hidden = true;
    refresh();
  };
  none.addEventListener("click", () => rest(false));
  unknown.addEventListener("click", () => rest(null));
  box.append(items, el("div", { class: "actions group-actions" }, none, unknown));
  return box;
}

// With an item ticked, the buttons answer for the others.
function labelGroupButtons(box) {
  const some = box.querySelector("input[data-code]:checked") !== null;
  const id = box.dataset.group;
  document.getElementById(`iv-g-${id}-none`).textContent = some ? "No to the others" : "None of these";
  document.getElementById(`iv-g-${id}-unknown`).textContent = some ? "Don't know the others" : "Don't know";
}

function setAnswer(q, a) {
  iv.answers.set(q.finding, a);
  iv.questions.set(q.finding, q);
  const box = document.getElementById("iv-q-" + q.finding);
  if (box && box.parentElement.id === "iv-questions") {
    // Stays where it is (focus and layout do not jump) until the next answer arrives.
    box.classList.add("iv-answered");
  }
  document.getElementById("iv-done-empty").hidden = true;
  refresh();
}

// The answered list: every answer in the order given, each still changeable.
function showAnswered() {
  const list = document.getElementById("iv-answered");
  const focused = document.activeElement;
  for (const [code, a] of iv.answers) {
    if (iv.pendingCodes.has(code)) continue; // still in the question that asks it
    let box = document.getElementById("iv-q-" + code);
    if (box && box.parentElement === list) continue;
    if (box && box.contains(focused)) continue; // moved on the next refresh, not under the nurse's hands
    if (box) box.remove();
    box = questionBox(iv.questions.get(code), a);
    box.classList.add("iv-answered");
    list.append(box);
  }
}

// ask_next's ranked list as the page's next `n` questions (the mirror of service/web/interview.py
// next_asks; tests/test_interview_mirror.py runs both on the same inputs): what is not a finding
// or is answered is skipped, and a grouped finding brings up its group where its best-ranked item
// stands. A group already shown stays as it is (its items ticked so far included) until it is
// answered: the one difference, page state that next_asks has no counterpart of.
function nextAsks(asks, n) {
  const out = [];
  const seen = new Set();
  // Answered: in the answers, or ticked in the opening (a group never asks those again).
  const ticked = document.querySelectorAll("#iv-opening input[data-code]:checked");
  const opened = new Set([...ticked].map((b) => b.dataset.code));
  const answered = (c) => iv.answers.has(c) || opened.has(c);
  for (const q of asks) {
    if (!q.finding || answered(q.finding)) continue;
    const group = iv.groups.get(q.finding);
    const key = group ? "group:" + group.id : q.finding;
    if (seen.has(key)) continue;
    seen.add(key);
    const shown = group && document.getElementById("iv-g-" + group.id);
    const codes = !group ? [q.finding]
      : shown && shown.parentElement.id === "iv-questions" && !shown.classList.contains("iv-answered")
        ? [...shown.querySelectorAll("input[data-code]")].map((i) => i.dataset.code)
        : group.items.map((i) => i.code).filter((c) => !answered(c));
    out.push({ key, group, codes, first: q });
    if (out.length === n) break;
  }
  return out;
}

function boxOf(ask) {
  return document.getElementById(ask.group ? "iv-g-" + ask.group.id : "iv-q-" + ask.first.finding);
}

function showQuestions(asks) {
  const holder = document.getElementById("iv-questions");
  const findings = asks.filter((q) => q.finding && !iv.answers.has(q.finding));
  const next = nextAsks(asks, SHOWN_AT_ONCE);
  for (const a of next) if (!a.group) iv.questions.set(a.first.finding, a.first);
  iv.pending = next.map((a) => a.key);
  iv.pendingCodes = new Set(next.flatMap((a) => a.codes));
  // Keyed update: a question still shown keeps its element (no flicker, focus kept).
  for (const box of [...holder.children]) {
    const key = box.dataset.group ? "group:" + box.dataset.group : box.dataset.code;
    if (!iv.pending.includes(key) && !box.contains(document.activeElement)) box.remove();
    else if (box.dataset.group && box.contains(document.activeElement)) {
      for (const i of box.querySelectorAll("input[data-code]")) iv.pendingCodes.add(i.dataset.code);
    }
  }
  next.forEach((a, i) => {
    let box = boxOf(a);
    if (box && box.dataset.group && box.classList.contains("iv-answered") && !box.contains(document.activeElement)) {
      box.remove(); // answered before, and asked again for the items still open
      box = null;
    }
    box = box || (a.group ? groupBox(a.group, a.codes, a.first) : questionBox(a.first, undefined));
    // Moved only when out of place: moving the element under the nurse's hands would drop focus.
    const at = holder.children[i];
    if (at !== box) holder.insertBefore(box, at || null);
  });
  showAnswered();
  const patient = asks.filter((q) => q.patient).map((q) => q.display.toLowerCase());
  const stage = document.getElementById("iv-stage");
  if (patient.length) stage.textContent = `Give the patient's ${patient.join(" and ")} (step 1): rules depend on it.`;
  else if (!next.length) stage.textContent = "No more questions: nothing left to ask would change the answer.";
  else if (next[0].first.aim === "urgency") stage.textContent = "Red-flag screen: questions that could raise the urgency.";
  else if (findings.some((q) => q.aim === "urgency")) {
    // The ticked problem's own questions come first; the screen for other causes follows them.
    stage.textContent = "These questions tell the causes of this problem apart; red-flag questions for other causes follow.";
  } else stage.textContent = "Red-flag screen complete. These questions only refine what it could be.";
}

function stopRules(answer) {
  const asks = answer.ask_next;
  const raisers = asks.filter((q) => q.tier_steps > 0);
  const urgency = asks.filter((q) => q.aim === "urgency");
  const stops = [];
  if (!raisers.length) stops.push("The urgency can no longer go up: every question that could raise it has been answered.");
  else stops.push(`${raisers.length} open question(s) could still raise the urgency (up to ${TIER_WORDS[raisers.map((q) => q.raises_tier_to).sort((x, y) => TIER_ORDER.indexOf(y) - TIER_ORDER.indexOf(x))[0]][0].toLowerCase()}).`);
  if (!urgency.length && asks.length) stops.push("More questions would only refine the differential.");
  if (!asks.length) stops.push("No more questions would change the answer.");
  const screen = urgency.length ? `Red-flag screen: not complete (${urgency.length} open)` : "Red-flag screen: complete";
  return { stops, screen, complete: !urgency.length };
}

function showLive(answer) {
  iv.last = answer;
  const tier = answer.urgency.tier;
  const [word, what] = TIER_WORDS[tier];
  const banner = document.getElementById("live-banner");
  banner.className = "banner tier-" + tier;
  banner.dataset.tier = tier;
  banner.replaceChildren(el("strong", {}, word), what);
  const { stops, screen, complete } = stopRules(answer);
  const screenBox = document.getElementById("live-screen");
  screenBox.textContent = screen;
  screenBox.className = "screen " + (complete ? "screen-done" : "screen-open");
  document.getElementById("live-stops").replaceChildren(...stops.map((t) => el("li", {}, t)));
  const flags = answer.red_flags.map((f) => el("p", { class: "flag" }, f.display));
  document.getElementById("live-flags").replaceChildren(...flags);
  const top = answer.differential.slice(0, 3).map((d) => el("li", {}, `${d.display} (${d.likelihood})`,
    d.must_not_miss ? el("span", { class: "badge badge-mnm" }, "must not miss") : ""));
  document.getElementById("live-conditions").replaceChildren(...(top.length ? top : [el("li", {}, "None supported yet")]));
  const tests = answer.recommended_tests.map((t) => el("li", {}, `${t.display} (${PRIORITY_WORDS[t.priority] || t.priority})`));
  document.getElementById("live-tests").replaceChildren(...(tests.length ? tests : [el("li", {}, "None yet")]));
  document.getElementById("note").value = noteText(answer);
  document.getElementById("live-empty").hidden = true;
  document.getElementById("live-body").hidden = false;
  document.getElementById("live").dataset.answers = String(iv.answers.size);
  showQuestions(answer.ask_next);
}

function displayOf(code) {
  const q = document.getElementById("q-" + code);
  return (q && q.dataset.display) || code;
}

// The plain-text note for the chart: what was given and denied, the tier and why, the tests.
function noteText(answer) {
  const req = ivRequest();
  const lines = ["Leg pain triage (decision support, not a diagnosis)"];
  const p = req.patient;
  lines.push(`Patient: ${p.age !== undefined ? "age " + p.age : "age not given"}, ${p.sex ? "sex " + p.sex : "sex not given"}`);
  const given = [];
  const denied = [];
  const unknown = [];
  for (const f of req.findings) {
    const q = iv.questions.get(f.code) || { type: f.value === undefined ? "boolean" : "number" };
    if (f.present === null) unknown.push(displayOf(f.code));
    else if (f.present === false) denied.push(displayOf(f.code));
    else given.push(displayOf(f.code) + (f.value !== undefined ? ": " + answerText(q, f) : ""));
  }
  const list = (title, items) => lines.push(`${title}:${items.length ? "" : " none"}`, ...items.map((i) => "  - " + i));
  list("Findings present", given);
  list("Findings denied", denied);
  list("Asked, not known", unknown);
  const [word, what] = TIER_WORDS[answer.urgency.tier];
  lines.push(`Urgency: ${word.toUpperCase()}. ${what}`);
  list("Reasons", answer.urgency.reasons.map((r) => `${r.text} (${r.tier}, rule ${r.rule})`));
  list("Red flags", answer.red_flags.map((f) => f.display));
  list("Consider", answer.differential.slice(0, 5).map((d) => `${d.display} (${d.likelihood})`));
  list("Tests", answer.recommended_tests.map((t) => `${t.display} (${PRIORITY_WORDS[t.priority] || t.priority})`));
  lines.push(`Rule set: ${answer.ruleset.name} ${answer.ruleset.version}; evaluation ${answer.evaluation_id}`);
  return lines.join("\n");
}

async function copyNote() {
  const note = document.getElementById("note");
  const status = document.getElementById("copy-status");
  try {
    await navigator.clipboard.writeText(note.value);
  } catch (e) {
    // No clipboard permission: select the text so that Ctrl+C copies it.
    note.focus();
    note.select();
    status.textContent = "Selected: press Ctrl+C to copy.";
    return;
  }
  status.textContent = "Copied.";
}

// Switching mode carries the interview's answers into the full form.
function toForm() {
  const form = document.getElementById("questionnaire");
  document.getElementById("patient-age").value = document.getElementById("iv-age").value;
  document.getElementById("patient-sex").value = document.getElementById("iv-sex").value;
  for (const f of ivRequest().findings) {
    const q = document.getElementById("q-" + f.code);
    if (!q) continue;
    if (q.dataset.type === "boolean") {
      const which = f.present === null ? "unknown" : f.present ? "yes" : "no";
      document.getElementById(`${f.code}-${which}`).checked = true;
    } else if (f.present === true) {
      q.querySelector("input, select").value = f.value;
    }
  }
  setMode(form, true);
}

function setMode(form, full) {
  form.hidden = !full;
  document.getElementById("interview").hidden = full;
  document.getElementById("live").hidden = full;
  document.getElementById("layout").classList.toggle("full-form", full);
  document.getElementById("mode-form").setAttribute("aria-pressed", String(full));
  document.getElementById("mode-interview").setAttribute("aria-pressed", String(!full));
  document.getElementById("mode-form").classList.toggle("secondary", !full);
  document.getElementById("mode-interview").classList.toggle("secondary", full);
}

function restart() {
  iv.answers.clear();
  iv.questions.clear();
  iv.pending = [];
  iv.pendingCodes = new Set();
  iv.last = null;
  iv.version += 1;
  document.getElementById("iv-age").value = "";
  document.getElementById("iv-sex").value = "";
  for (const box of document.querySelectorAll("#iv-opening input[data-code]")) box.checked = false;
  document.getElementById("iv-questions").replaceChildren();
  document.getElementById("iv-answered").replaceChildren();
  document.getElementById("iv-done-empty").hidden = false;
  document.getElementById("iv-stage").textContent = "";
  document.getElementById("live-body").hidden = true;
  document.getElementById("live-empty").hidden = false;
  document.getElementById("result").hidden = true;
  document.getElementById("iv-age").focus();
}

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("questionnaire");
  for (const group of JSON.parse(document.getElementById("iv-questions").dataset.groups || "[]")) {
    for (const item of group.items) iv.groups.set(item.code, group);
  }
  document.getElementById("iv-age").addEventListener("change", refresh);
  document.getElementById("iv-sex").addEventListener("change", refresh);
  for (const box of document.querySelectorAll("#iv-opening input[data-code]")) box.addEventListener("change", refresh);
  document.getElementById("copy-note").addEventListener("click", copyNote);
  document.getElementById("iv-restart").addEventListener("click", restart);
  document.getElementById("iv-finish").addEventListener("click", () => {
    if (iv.last) render(iv.last);
  });
  document.getElementById("mode-form").addEventListener("click", toForm);
  document.getElementById("mode-interview").addEventListener("click", () => setMode(form, false));
});
