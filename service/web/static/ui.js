// The triage page's full form and the full answer: turns the answers into POST /v1/evaluations
// and renders the answer. The interview (interview.js) uses evaluate() and render() from here.
// Every value from the service is written with textContent, never as HTML.
"use strict";

const TIER_WORDS = {
  emergency: ["Emergency", "Send to the emergency department now. Do not let the patient wait or go home."],
  urgent: ["Urgent", "Same-day assessment by a clinician, within hours."],
  soon: ["Soon", "See a clinician within days (up to two weeks)."],
  routine: ["Routine", "Self-care as advised; a routine appointment if it persists or worsens."],
};
const PRIORITY_WORDS = { stat: "Immediately (stat)", asap: "As soon as possible", urgent: "Urgent", routine: "Routine" };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function collect(form) {
  const body = { patient: {}, findings: [] };
  const age = form.querySelector("#patient-age").value;
  if (age !== "") body.patient.age = Number(age);
  const sex = form.querySelector("#patient-sex").value;
  if (sex) body.patient.sex = sex;
  for (const q of form.querySelectorAll(".finding")) {
    const code = q.dataset.code;
    if (q.dataset.type === "boolean") {
      const picked = q.querySelector("input:checked");
      if (picked && picked.value === "yes") body.findings.push({ code, present: true });
      if (picked && picked.value === "no") body.findings.push({ code, present: false });
    } else if (q.dataset.type === "number") {
      const v = q.querySelector("input").value;
      if (v !== "") body.findings.push({ code, value: Number(v) });
    } else {
      const v = q.querySelector("select").value;
      if (v) body.findings.push({ code, value: v });
    }
  }
  return body;
}

function section(id, title, content) {
  const box = document.getElementById(id);
  box.replaceChildren();
  if (content) box.append(el("h3", {}, title), content);
}

function jumpTo(code) {
  const q = document.getElementById("q-" + code);
  if (!q) return;
  showForm();
  q.scrollIntoView({ block: "center" });
  const target = q.querySelector("input:not([type=radio]), select") || q.querySelector("input[type=radio]");
  if (target) target.focus();
  q.classList.add("asked");
}

// From the interview's answer, a question is asked in the full form, with the answers so far.
function showForm() {
  if (document.getElementById("questionnaire").hidden) toForm();
}

function jumpToPatient(attribute) {
  const input = document.getElementById("patient-" + attribute);
  if (!input) return;
  showForm();
  input.scrollIntoView({ block: "center" });
  input.focus();
}

function render(answer) {
  const [word, what] = TIER_WORDS[answer.urgency.tier];
  const banner = document.getElementById("banner");
  banner.className = "banner tier-" + answer.urgency.tier;
  banner.replaceChildren(el("strong", {}, word), what);

  const flags = answer.red_flags.map((f) => el("p", { class: "flag" }, f.display));
  section("red-flags", "Red flags", flags.length ? el("div", {}, ...flags) : null);

  if (answer.differential.length) {
    const rows = answer.differential.map((d) => el("tr", {},
      el("td", {}, String(d.rank)),
      el("td", {}, d.display, " ", d.must_not_miss ? el("span", { class: "badge badge-mnm" }, "must not miss") : ""),
      el("td", { class: "band" }, d.likelihood)));
    section("differential", "What it could be", el("table", {},
      el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "#"), el("th", { scope: "col" }, "Condition"),
        el("th", { scope: "col" }, "Likelihood"))), el("tbody", {}, ...rows)));
  } else {
    section("differential", "What it could be", el("p", {}, "No condition is supported by these answers."));
  }

  const tests = answer.recommended_tests.map((t) => el("tr", {},
    el("td", {}, t.display), el("td", {}, PRIORITY_WORDS[t.priority] || t.priority), el("td", {}, t.rationale)));
  section("tests", "Recommended tests", tests.length ? el("table", { id: "tests-table" },
    el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Test"), el("th", { scope: "col" }, "Priority"),
      el("th", { scope: "col" }, "Why"))), el("tbody", {}, ...tests)) : null);

  const ni = (answer.tests_not_indicated || []).map((t) => el("li", {}, t.display + ": " + t.reason));
  section("not-indicated", "Not indicated now", ni.length ? el("ul", {}, ...ni) : null);

  const asks = answer.ask_next.map((q) => {
    // A finding question jumps to its field; a patient item (age not given) to the patient's field.
    const attrs = q.finding ? { "data-code": q.finding } : { "data-patient": q.patient };
    const b = el("button", { type: "button", class: "link", ...attrs }, q.question);
    b.addEventListener("click", () => (q.finding ? jumpTo(q.finding) : jumpToPatient(q.patient)));
    return el("li", {}, b, el("span", { class: "hint" }, " " + q.why));
  });
  section("ask-next", "Ask next", asks.length ? el("ul", {}, ...asks) : null);

  const advice = answer.advice.map((a) => el("li", {}, a.text));
  section("advice", "Self-care advice", advice.length ? el("ul", {}, ...advice) : null);

  const prov = answer.provenance.map((p) => el("li", {},
    el("strong", {}, p.title), ` (rule ${p.rule} v${p.version}, evidence ${p.evidence}). Sources: `,
    p.sources.map((s) => s.title).join("; ")));
  document.getElementById("provenance-body").replaceChildren(el("ul", {}, ...prov),
    el("p", { class: "hint" }, `Rule set ${answer.ruleset.name} ${answer.ruleset.version}, evaluation ${answer.evaluation_id}`));
  document.getElementById("result-disclaimer").textContent = answer.disclaimer;

  const result = document.getElementById("result");
  result.hidden = false;
  document.getElementById("result-heading").focus();
}

function showError(text) {
  const box = document.getElementById("error");
  box.textContent = text;
  box.hidden = false;
  box.focus && box.setAttribute("tabindex", "-1");
  box.focus();
}

// POST /v1/evaluations: the answer, or null after showing what went wrong.
async function evaluate(request) {
  document.getElementById("error").hidden = true;
  const headers = { "Content-Type": "application/json", Accept: "application/json" };
  const key = document.getElementById("api-key").value;
  if (key) headers["X-API-Key"] = key;
  let resp;
  try {
    resp = await fetch("/v1/evaluations", { method: "POST", headers, body: JSON.stringify(request) });
  } catch (e) {
    showError("The service could not be reached. Check the connection and try again.");
    return null;
  }
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    const details = (body.errors || []).map((e) => e.detail).join(" ");
    showError(`${body.title || "Error " + resp.status}: ${body.detail || ""} ${details}`.trim());
    return null;
  }
  return body;
}

async function submit(event) {
  event.preventDefault();
  const answer = await evaluate(collect(event.target));
  if (answer) render(answer);
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("questionnaire").addEventListener("submit", submit);
  document.getElementById("print").addEventListener("click", () => window.print());
  document.getElementById("back").addEventListener("click", () => {
    // Back to where the questions were asked: the form's Evaluate button, or the interview.
    const form = document.getElementById("questionnaire");
    const target = form.hidden ? document.getElementById("iv-finish") : document.getElementById("evaluate");
    target.scrollIntoView({ block: "center" });
    target.focus();
  });
});
