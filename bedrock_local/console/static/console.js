// bedrock-local web console: reads everything through the Bedrock API's own restJson1 routes (the
// ones boto3 calls), signed in by the console's session cookie, in the region the picker names
// (sent as a header). A customization job's step metrics come from /console/api/training-metrics.
// No framework, no build step; pages re-render every POLL_MS without a reload.
"use strict";

const POLL_MS = 1500;
const REGION_KEY = "bedrock-local-console-region";
const BATCH_FINAL = ["Completed", "PartiallyCompleted", "Failed", "Stopped", "Expired"];
const CUSTOMIZATION_FINAL = ["Completed", "Failed", "Stopped"];
const COPY_FINAL = ["Completed", "Failed"];
const DEPLOYMENT_FINAL = ["Active", "Failed"];

const state = {session: null, region: null, generation: 0, timer: null, foundation: {}, finalJobs: {}};

// ---- small DOM helpers ---------------------------------------------------------------------------
function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    // through the CSSOM: the Content-Security-Policy (style-src 'self') refuses style attributes
    else if (name === "style") node.style.cssText = String(value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const SVG = "http://www.w3.org/2000/svg";
function s(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
  return append(node, children);
}

// ---- the API -------------------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

const AUTH_ERRORS = ["UnrecognizedClientException", "MissingAuthenticationTokenException", "InvalidSignatureException",
                     "IncompleteSignatureException"];

async function call(method, path, query, body) {
  const url = new URL(path, location.origin);
  for (const [name, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null) url.searchParams.set(name, value);
  }
  const headers = {"x-bedrock-local-region": state.region || (state.session && state.session.defaultRegion) || "us-east-1"};
  if (body !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(url, {method, headers, credentials: "same-origin", cache: "no-store",
                                     body: body === undefined ? undefined : JSON.stringify(body)});
  const text = await response.text();
  let data = {};
  try { data = text ? JSON.parse(text) : {}; } catch (e) { data = {message: text}; }
  if (!response.ok) {
    const code = response.headers.get("x-amzn-ErrorType") || `HTTP ${response.status}`;
    const error = new ApiError(response.status, code.split(":")[0], data.message || data.Message || text);
    if (AUTH_ERRORS.includes(error.code)) signedOut();
    throw error;
  }
  return data;
}

const get = (path, query) => call("GET", path, query);
const enc = encodeURIComponent;

// every operation the console uses, by the requestUri botocore's bedrock model gives it
const bedrock = {
  listInvocationJobs: () => get("/model-invocation-jobs", {maxResults: 100, sortOrder: "Descending"}),
  getInvocationJob: (arn) => get(`/model-invocation-job/${enc(arn)}`),
  listCustomizationJobs: () => get("/model-customization-jobs", {maxResults: 100, sortOrder: "Descending"}),
  getCustomizationJob: (arn) => get(`/model-customization-jobs/${enc(arn)}`),
  listCopyJobs: () => get("/model-copy-jobs", {maxResults: 100, sortOrder: "Descending"}),
  getCopyJob: (arn) => get(`/model-copy-jobs/${enc(arn)}`),
  listCustomModels: () => get("/custom-models", {maxResults: 100, sortOrder: "Descending"}),
  getCustomModel: (arn) => get(`/custom-models/${enc(arn)}`),
  listFoundationModels: () => get("/foundation-models"),
  getFoundationModel: (id) => get(`/foundation-models/${enc(id)}`),
  listDeployments: () => get("/model-customization/custom-model-deployments", {maxResults: 100, sortOrder: "Descending"}),
  getDeployment: (arn) => get(`/model-customization/custom-model-deployments/${enc(arn)}`),
  listImportJobs: () => get("/model-import-jobs", {maxResults: 100, sortOrder: "Descending"}),
  getImportJob: (arn) => get(`/model-import-jobs/${enc(arn)}`),
  listImportedModels: () => get("/imported-models", {maxResults: 100, sortOrder: "Descending"}),
  getImportedModel: (arn) => get(`/imported-models/${enc(arn)}`),
  listProvisioned: () => get("/provisioned-model-throughputs", {maxResults: 100, sortOrder: "Descending"}),
  getProvisioned: (arn) => get(`/provisioned-model-throughput/${enc(arn)}`),
  listEvaluationJobs: () => get("/evaluation-jobs", {maxResults: 100, sortOrder: "Descending"}),
  getEvaluationJob: (arn) => get(`/evaluation-jobs/${enc(arn)}`),
};
const trainingMetrics = (arn, points) => get("/console/api/training-metrics", {job: arn, points: points ? "1" : "0"});
const evaluationScores = (arn) => get("/console/api/evaluation-scores", {job: arn});

// ---- formatting ----------------------------------------------------------------------------------
function when(value) {
  if (!value) return "";
  const date = new Date(value);
  if (isNaN(date)) return String(value);
  return date.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

function duration(start, end) {
  if (!start) return "";
  const seconds = Math.max(0, ((end ? new Date(end) : new Date()) - new Date(start)) / 1000);
  if (seconds < 90) return `${seconds.toFixed(0)} s`;
  if (seconds < 5400) return `${(seconds / 60).toFixed(1)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

const jobId = (arn) => String(arn || "").split("/").pop();
const short = (arn) => String(arn || "").replace(/^arn:aws:bedrock:[^:]*:[^:]*:/, "");

function badge(status) {
  return h("span", {class: `badge status-${String(status || "unknown").toLowerCase()}`, "data-status": status}, status || "—");
}

function bar(done, total, label, attrs) {
  const fraction = total > 0 ? Math.min(1, Math.max(0, done / total)) : 0;
  return h("div", Object.assign({class: "progress", title: label}, attrs || {}),
           h("div", {class: "fill", style: `width:${(fraction * 100).toFixed(1)}%`}),
           h("span", {class: "label"}, label));
}

function batchProgress(job) {
  const total = job.totalRecordCount, done = job.processedRecordCount || 0;
  const attrs = {"data-processed": done, "data-total": total === undefined ? "" : total};
  if (total === undefined) return h("span", Object.assign({class: "muted progress-text"}, attrs), "records not counted yet");
  const errors = job.errorRecordCount ? `, ${job.errorRecordCount} errors` : "";
  return bar(done, total, `${done} / ${total} records${errors}`, attrs);
}

function trainingProgress(job, metrics) {
  const progress = metrics && metrics.progress;
  if (!progress) {
    return h("span", {class: "muted progress-text", "data-step": 0},
             CUSTOMIZATION_FINAL.includes(job.status) ? "" : "no step yet");
  }
  const epochs = metrics.epochCount || 1;
  const loss = progress.trainingLoss === undefined ? "" : `, loss ${Number(progress.trainingLoss).toFixed(4)}`;
  return bar(progress.epoch, epochs, `step ${progress.step}, epoch ${Number(progress.epoch).toFixed(2)} / ${epochs}${loss}`,
             {"data-step": progress.step, "data-epoch": progress.epoch});
}

function link(route, text, attrs) {
  return h("a", Object.assign({href: `#/${route}`}, attrs || {}), text);
}

// a link to the console page of an ARN (custom or foundation model, deployment, job); `full` shows the whole ARN
function modelLink(arn, full) {
  if (!arn) return "";
  const text = full ? arn : short(arn);
  const pages = [[":custom-model/", "custom-model"], [":custom-model-deployment/", "deployment"],
                 [":model-customization-job/", "customization"], [":model-invocation-job/", "batch"],
                 [":model-copy-job/", "copy"], [":model-import-job/", "import"], [":imported-model/", "imported-model"],
                 [":provisioned-model/", "provisioned"], [":evaluation-job/", "evaluation"]];
  if (arn.includes(":foundation-model/")) return link(`foundation-model/${enc(arn.split("foundation-model/")[1])}`, text);
  for (const [marker, page] of pages) if (arn.includes(marker)) return link(`${page}/${enc(arn)}`, text);
  return text;
}

function value(member, v) {
  if (v === null || v === undefined) return "";
  if (typeof v === "string") {
    if (/Time$|At$/.test(member)) return when(v);
    if (/^arn:aws:bedrock:/.test(v)) return modelLink(v, true);
    return v;
  }
  if (typeof v === "number" || typeof v === "boolean") return String(v);
  return h("pre", {class: "json"}, JSON.stringify(v, null, 2));
}

function membersTable(data, id) {
  return h("table", {class: "members", id},
           h("tbody", {}, Object.keys(data).sort().map((name) =>
             h("tr", {"data-member": name}, h("th", {}, name), h("td", {}, value(name, data[name]))))));
}

function table(id, columns, rows, empty) {
  if (!rows.length) return h("p", {class: "muted empty", id}, empty);
  return h("table", {class: "list", id},
           h("thead", {}, h("tr", {}, columns.map((c) => h("th", {}, c[0])))),
           h("tbody", {}, rows.map((row) => h("tr", row.attrs, columns.map((c) => h("td", {class: c[2] || ""}, c[1](row.item)))))));
}

function section(title, id, ...content) {
  return h("section", {id}, h("h2", {}, title), content);
}

function failure(message) {
  return message ? h("span", {class: "failure"}, message) : "";
}

// ---- loss curves (inline SVG) --------------------------------------------------------------------
function lossChart(series, latest) {
  const width = 720, height = 300, left = 64, right = 16, top = 16, bottom = 44;
  const points = series.flatMap((one) => one.points).concat(latest ? [latest] : []);
  const chart = s("svg", {class: "loss-chart", viewBox: `0 0 ${width} ${height}`, width, height,
                          role: "img", "aria-label": "training and validation loss by step"});
  if (!points.length) {
    chart.appendChild(s("text", {x: width / 2, y: height / 2, "text-anchor": "middle", class: "muted"},
                        "no step metrics written yet"));
    return chart;
  }
  let minStep = Math.min(...points.map((p) => p.step)), maxStep = Math.max(...points.map((p) => p.step));
  let minLoss = Math.min(...points.map((p) => p.loss)), maxLoss = Math.max(...points.map((p) => p.loss));
  if (minStep === maxStep) { minStep -= 1; maxStep += 1; }
  if (minLoss === maxLoss) { minLoss -= 0.5; maxLoss += 0.5; }
  const pad = (maxLoss - minLoss) * 0.05;
  minLoss = Math.max(0, minLoss - pad); maxLoss += pad;
  const x = (step) => left + (step - minStep) / (maxStep - minStep) * (width - left - right);
  const y = (loss) => top + (maxLoss - loss) / (maxLoss - minLoss) * (height - top - bottom);
  const axes = s("g", {class: "axes"},
                 s("line", {x1: left, y1: height - bottom, x2: width - right, y2: height - bottom}),
                 s("line", {x1: left, y1: top, x2: left, y2: height - bottom}),
                 s("text", {x: (left + width - right) / 2, y: height - 8, "text-anchor": "middle"}, "step"),
                 s("text", {x: 14, y: (top + height - bottom) / 2, "text-anchor": "middle",
                            transform: `rotate(-90 14 ${(top + height - bottom) / 2})`}, "loss"));
  const stepTicks = new Set();
  for (let i = 0; i <= 4; i++) {
    const loss = minLoss + (maxLoss - minLoss) * i / 4;
    axes.appendChild(s("line", {class: "grid", x1: left, x2: width - right, y1: y(loss), y2: y(loss)}));
    axes.appendChild(s("text", {x: left - 6, y: y(loss) + 4, "text-anchor": "end"}, loss.toFixed(3)));
    stepTicks.add(Math.round(minStep + (maxStep - minStep) * i / 4));  // steps are whole numbers
  }
  for (const step of stepTicks) {
    if (step < minStep || step > maxStep) continue;
    axes.appendChild(s("text", {x: x(step), y: height - bottom + 16, "text-anchor": "middle"}, step));
  }
  chart.appendChild(axes);
  if (latest && !series[0].points.length) {
    chart.appendChild(s("g", {class: "series training", "data-series": "training-live"},
                        s("circle", {class: "live", cx: x(latest.step).toFixed(1), cy: y(latest.loss).toFixed(1), r: 4},
                          s("title", {}, `latest step ${latest.step} (epoch ${latest.epoch}): loss ${latest.loss}`))));
  }
  series.forEach((one, index) => {
    if (!one.points.length) return;
    const group = s("g", {class: `series ${one.name}`, "data-series": one.name, "data-points": one.points.length});
    group.appendChild(s("polyline", {points: one.points.map((p) => `${x(p.step).toFixed(1)},${y(p.loss).toFixed(1)}`).join(" ")}));
    for (const p of one.points) {
      group.appendChild(s("circle", {class: "pt", cx: x(p.step).toFixed(1), cy: y(p.loss).toFixed(1), r: 3},
                          s("title", {}, `${one.name} step ${p.step} (epoch ${p.epoch}): loss ${p.loss}`)));
    }
    chart.appendChild(group);
    if (one.name === "training" && latest) {  // not written to the metrics file yet: a hollow point
      const last = one.points[one.points.length - 1];
      group.appendChild(s("line", {class: "live", x1: x(last.step), y1: y(last.loss), x2: x(latest.step), y2: y(latest.loss)}));
      group.appendChild(s("circle", {class: "live", cx: x(latest.step).toFixed(1), cy: y(latest.loss).toFixed(1), r: 4},
                          s("title", {}, `latest step ${latest.step} (epoch ${latest.epoch}): loss ${latest.loss}`)));
    }
    chart.appendChild(s("g", {class: `legend ${one.name}`},
                        s("rect", {x: width - right - 150, y: top + index * 18, width: 12, height: 12}),
                        s("text", {x: width - right - 132, y: top + index * 18 + 11}, `${one.name} (${one.points.length})`)));
  });
  return chart;
}

// ---- pages ---------------------------------------------------------------------------------------
// the aggregate scores of an evaluation job, one "metric: value" per line
function scoresText(scores) {
  const rows = (scores && scores.metrics) || [];
  if (!rows.length) return h("span", {class: "muted"}, scores && scores.error ? scores.error : "no scores yet");
  return h("span", {class: "scores"}, rows.map((m) =>
    h("span", {class: "score", "data-metric": m.metricName, "data-value": m.value === null ? "" : m.value},
      `${m.metricName}: ${m.value === null || m.value === undefined ? "—" : Number(m.value).toFixed(3)}`)));
}

async function overview() {
  const [batch, customization, copies, models, deployments, imports, imported, provisioned, evaluations] =
    await Promise.all([
      bedrock.listInvocationJobs(), bedrock.listCustomizationJobs(), bedrock.listCopyJobs(),
      bedrock.listCustomModels(), bedrock.listDeployments(), bedrock.listImportJobs(), bedrock.listImportedModels(),
      bedrock.listProvisioned(), bedrock.listEvaluationJobs()]);
  if (!state.foundation[state.region]) state.foundation[state.region] = await bedrock.listFoundationModels();
  const foundation = state.foundation[state.region].modelSummaries || [];

  // a customization summary has neither the live step nor the failure message: ask for them
  const jobs = customization.modelCustomizationJobSummaries || [];
  const details = await Promise.all(jobs.map(async (job) => {
    if (job.status === "Failed") {
      const key = `get:${job.jobArn}`;
      if (!state.finalJobs[key]) state.finalJobs[key] = await bedrock.getCustomizationJob(job.jobArn);
      return {get: state.finalJobs[key]};
    }
    if (CUSTOMIZATION_FINAL.includes(job.status)) return {};
    return {metrics: await trainingMetrics(job.jobArn, false)};
  }));

  const evaluationJobs = evaluations.jobSummaries || [];
  const scores = await Promise.all(evaluationJobs.map(async (job) => {
    if (job.status !== "Completed") return null;
    const key = `scores:${job.jobArn}`;
    if (!state.finalJobs[key]) state.finalJobs[key] = await evaluationScores(job.jobArn);
    return state.finalJobs[key];
  }));

  const batchJobs = batch.invocationJobSummaries || [];
  return [
    section("Batch inference jobs", "batch-jobs", table("batch-table", [
      ["Name", (j) => link(`batch/${enc(j.jobArn)}`, j.jobName, {class: "job-link"})],
      ["Status", (j) => badge(j.status)],
      ["Model", (j) => short(j.modelId)],
      ["Progress", batchProgress, "wide"],
      ["Submitted", (j) => when(j.submitTime)],
      ["Ended", (j) => when(j.endTime)],
      ["Message", (j) => failure(j.message)],
    ], batchJobs.map((j) => ({item: j, attrs: {"data-arn": j.jobArn, "data-status": j.status}})),
    "No batch inference jobs in this region.")),
    section("Customization jobs", "customization-jobs", table("customization-table", [
      ["Name", (r) => link(`customization/${enc(r.job.jobArn)}`, r.job.jobName, {class: "job-link"})],
      ["Status", (r) => badge(r.job.status)],
      ["Base model", (r) => short(r.job.baseModelArn)],
      ["Type", (r) => r.job.customizationType],
      ["Progress", (r) => trainingProgress(r.job, r.metrics), "wide"],
      ["Created", (r) => when(r.job.creationTime)],
      ["Ended", (r) => when(r.job.endTime)],
      ["Failure", (r) => failure(r.get && r.get.failureMessage)],
    ], jobs.map((job, i) => ({item: {job, ...details[i]}, attrs: {"data-arn": job.jobArn, "data-status": job.status}})),
    "No customization jobs in this region.")),
    section("Model copy jobs", "copy-jobs", table("copy-table", [
      ["Job", (j) => link(`copy/${enc(j.jobArn)}`, jobId(j.jobArn), {class: "job-link"})],
      ["Status", (j) => badge(j.status)],
      ["Source", (j) => modelLink(j.sourceModelArn)],
      ["Target", (j) => j.targetModelArn ? modelLink(j.targetModelArn) : j.targetModelName],
      ["Created", (j) => when(j.creationTime)],
      ["Failure", (j) => failure(j.failureMessage)],
    ], (copies.modelCopyJobSummaries || []).map((j) => ({item: j, attrs: {"data-arn": j.jobArn, "data-status": j.status}})),
    "No model copy jobs in this region.")),
    section("Model import jobs", "import-jobs", table("import-table", [
      ["Name", (j) => link(`import/${enc(j.jobArn)}`, j.jobName, {class: "job-link"})],
      ["Status", (j) => badge(j.status)],
      ["Imported model", (j) => j.importedModelArn ? modelLink(j.importedModelArn) : j.importedModelName],
      ["Created", (j) => when(j.creationTime)],
      ["Ended", (j) => when(j.endTime)],
    ], (imports.modelImportJobSummaries || []).map((j) => ({item: j, attrs: {"data-arn": j.jobArn, "data-status": j.status}})),
    "No model import jobs in this region.")),
    section("Evaluation jobs", "evaluation-jobs", table("evaluation-table", [
      ["Name", (r) => link(`evaluation/${enc(r.job.jobArn)}`, r.job.jobName, {class: "job-link"})],
      ["Status", (r) => badge(r.job.status)],
      ["Model", (r) => (r.job.modelIdentifiers || []).map((m) => short(m)).join(", ")],
      ["Tasks", (r) => (r.job.evaluationTaskTypes || []).join(", ")],
      ["Scores", (r) => r.scores ? scoresText(r.scores) : "", "wide"],
      ["Created", (r) => when(r.job.creationTime)],
    ], evaluationJobs.map((job, i) => ({item: {job, scores: scores[i]}, attrs: {"data-arn": job.jobArn, "data-status": job.status}})),
    "No evaluation jobs in this region.")),
    section("Custom models", "custom-models", table("custom-model-table", [
      ["Name", (m) => link(`custom-model/${enc(m.modelArn)}`, m.modelName)],
      ["Status", (m) => badge(m.modelStatus)],
      ["Base model", (m) => modelLink(m.baseModelArn)],
      ["Type", (m) => m.customizationType],
      ["Created", (m) => when(m.creationTime)],
    ], (models.modelSummaries || []).map((m) => ({item: m, attrs: {"data-arn": m.modelArn, "data-status": m.modelStatus}})),
    "No custom models in this region.")),
    section("Imported models", "imported-models", table("imported-model-table", [
      ["Name", (m) => link(`imported-model/${enc(m.modelArn)}`, m.modelName)],
      ["Architecture", (m) => m.modelArchitecture],
      ["Instruct", (m) => m.instructSupported ? "yes" : "no"],
      ["Created", (m) => when(m.creationTime)],
    ], (imported.modelSummaries || []).map((m) => ({item: m, attrs: {"data-arn": m.modelArn}})),
    "No imported models in this region.")),
    section("Provisioned throughput", "provisioned", table("provisioned-table", [
      ["Name", (p) => link(`provisioned/${enc(p.provisionedModelArn)}`, p.provisionedModelName)],
      ["Status", (p) => badge(p.status)],
      ["Model", (p) => modelLink(p.modelArn)],
      ["Model units", (p) => p.desiredModelUnits !== undefined && p.desiredModelUnits !== p.modelUnits
        ? `${p.modelUnits} → ${p.desiredModelUnits}` : String(p.modelUnits)],
      ["Commitment", (p) => p.commitmentDuration || "none"],
      ["Created", (p) => when(p.creationTime)],
    ], (provisioned.provisionedModelSummaries || []).map((p) => ({item: p, attrs: {"data-arn": p.provisionedModelArn, "data-status": p.status}})),
    "No provisioned throughput in this region.")),
    section("Deployments", "deployments", table("deployment-table", [
      ["Name", (d) => link(`deployment/${enc(d.customModelDeploymentArn)}`, d.customModelDeploymentName)],
      ["Status", (d) => badge(d.status)],
      ["Model", (d) => modelLink(d.modelArn)],
      ["Created", (d) => when(d.createdAt)],
      ["Updated", (d) => when(d.lastUpdatedAt)],
      ["Failure", (d) => failure(d.failureMessage)],
    ], (deployments.modelDeploymentSummaries || []).map((d) => ({item: d, attrs: {"data-arn": d.customModelDeploymentArn, "data-status": d.status}})),
    "No custom model deployments in this region.")),
    section("Foundation models", "foundation-models", table("foundation-table", [
      ["Model id", (m) => link(`foundation-model/${enc(m.modelId)}`, m.modelId)],
      ["Name", (m) => m.modelName],
      ["Provider", (m) => m.providerName],
      ["Input → output", (m) => `${(m.inputModalities || []).join(", ")} → ${(m.outputModalities || []).join(", ")}`],
      ["Customizations", (m) => (m.customizationsSupported || []).join(", ")],
    ], foundation.map((m) => ({item: m, attrs: {"data-model-id": m.modelId}})), "No foundation models.")),
  ];
}

function outputs(rows) {
  return section("Output locations", "outputs", h("table", {class: "members"}, h("tbody", {},
    rows.filter((r) => r[1]).map(([name, uri]) => h("tr", {}, h("th", {}, name), h("td", {}, h("code", {class: "uri"}, uri)))))));
}

function jobHeader(title, job, name, extra) {
  return h("div", {class: "page-head", id: "job-head", "data-status": job.status},
           h("h1", {}, title, " ", h("span", {class: "name"}, name)), badge(job.status), extra || "");
}

const prefix = (uri) => (uri && !uri.endsWith("/") ? uri + "/" : uri || "");

async function batchPage(arn) {
  const job = await bedrock.getInvocationJob(arn);
  const out = job.outputDataConfig && job.outputDataConfig.s3OutputDataConfig;
  const root = out ? `${prefix(out.s3Uri)}${jobId(job.jobArn)}/` : "";
  return [
    jobHeader("Batch inference job", job, job.jobName),
    h("div", {class: "facts"},
      h("div", {id: "job-progress"}, batchProgress(job)),
      h("p", {}, `Submitted ${when(job.submitTime)}`, job.endTime ? ` · ended ${when(job.endTime)}` : "",
        ` · ${duration(job.submitTime, job.endTime)}`),
      job.message ? h("p", {class: "failure", id: "job-message"}, job.message) : ""),
    outputs([["Output folder", root], ["Manifest", root && `${root}manifest.json.out`],
             ["Input", job.inputDataConfig && job.inputDataConfig.s3InputDataConfig && job.inputDataConfig.s3InputDataConfig.s3Uri]]),
    section("GetModelInvocationJob", "request", membersTable(job, "job-members")),
  ];
}

async function customizationPage(arn) {
  const [job, metrics] = await Promise.all([bedrock.getCustomizationJob(arn), trainingMetrics(arn, true)]);
  const series = [{name: "training", points: metrics.training || []}, {name: "validation", points: metrics.validation || []}];
  // The metrics file is rewritten at each checkpoint; while the job trains, its latest step is drawn too.
  const live = metrics.progress, written = series[0].points;
  const latest = job.status === "InProgress" && live && live.trainingLoss !== undefined
    && (!written.length || live.step > written[written.length - 1].step)
    ? {step: live.step, epoch: live.epoch, loss: live.trainingLoss} : null;
  const phases = job.statusDetails || {};
  return [
    jobHeader("Customization job", job, job.jobName),
    h("div", {class: "facts"},
      h("div", {id: "job-progress"}, trainingProgress(job, metrics)),
      h("p", {}, `Created ${when(job.creationTime)}`, job.endTime ? ` · ended ${when(job.endTime)}` : "",
        ` · ${duration(job.creationTime, job.endTime)}`),
      h("p", {class: "phases"}, ["validationDetails", "dataProcessingDetails", "trainingDetails"].map((phase) =>
        phases[phase] ? h("span", {class: "phase"}, phase.replace("Details", ""), " ", badge(phases[phase].status)) : "")),
      job.failureMessage ? h("p", {class: "failure", id: "job-message"}, job.failureMessage) : "",
      job.outputModelArn ? h("p", {}, "Custom model: ", modelLink(job.outputModelArn)) : ""),
    section("Loss", "loss", lossChart(series, latest),
            [metrics.trainingError, metrics.validationError].filter(Boolean).map((e) => h("p", {class: "failure"}, e))),
    outputs([["Output folder", metrics.outputUri], ["Training metrics", (metrics.training || []).length ? metrics.trainingMetricsUri : ""],
             ["Validation metrics", (metrics.validation || []).length ? metrics.validationMetricsUri : ""],
             ["Output model", job.outputModelArn]]),
    section("GetModelCustomizationJob", "request", membersTable(job, "job-members")),
  ];
}

async function copyPage(arn) {
  const job = await bedrock.getCopyJob(arn);
  return [
    jobHeader("Model copy job", job, jobId(job.jobArn)),
    h("div", {class: "facts"}, h("p", {}, `Created ${when(job.creationTime)}`),
      job.failureMessage ? h("p", {class: "failure", id: "job-message"}, job.failureMessage) : ""),
    outputs([["Target model", job.targetModelArn]]),
    section("GetModelCopyJob", "request", membersTable(job, "job-members")),
  ];
}

async function customModelPage(arn) {
  const model = await bedrock.getCustomModel(arn);
  return [
    h("div", {class: "page-head", id: "model-head"}, h("h1", {}, "Custom model ", h("span", {class: "name"}, model.modelName)),
      badge(model.modelStatus)),
    model.jobArn && model.jobArn.includes(":model-customization-job/")
      ? h("p", {}, "Trained by ", link(`customization/${enc(model.jobArn)}`, model.jobName || jobId(model.jobArn))) : "",
    model.failureMessage ? h("p", {class: "failure"}, model.failureMessage) : "",
    section("GetCustomModel", "details", membersTable(model, "model-members")),
  ];
}

async function foundationModelPage(id) {
  const model = (await bedrock.getFoundationModel(id)).modelDetails || {};
  return [
    h("div", {class: "page-head", id: "model-head"}, h("h1", {}, "Foundation model ", h("span", {class: "name"}, model.modelId))),
    section("GetFoundationModel", "details", membersTable(model, "model-members")),
  ];
}

async function deploymentPage(arn) {
  const deployment = await bedrock.getDeployment(arn);
  return [
    jobHeader("Deployment", deployment, deployment.modelDeploymentName),
    deployment.failureMessage ? h("p", {class: "failure"}, deployment.failureMessage) : "",
    section("GetCustomModelDeployment", "details", membersTable(deployment, "deployment-members")),
  ];
}

async function importPage(arn) {
  const job = await bedrock.getImportJob(arn);
  return [
    jobHeader("Model import job", job, job.jobName),
    h("div", {class: "facts"}, h("p", {}, `Created ${when(job.creationTime)}`, job.endTime ? ` · ended ${when(job.endTime)}` : ""),
      job.failureMessage ? h("p", {class: "failure", id: "job-message"}, job.failureMessage) : ""),
    outputs([["Imported model", job.importedModelArn],
             ["Source", job.modelDataSource && job.modelDataSource.s3DataSource && job.modelDataSource.s3DataSource.s3Uri]]),
    section("GetModelImportJob", "request", membersTable(job, "job-members")),
  ];
}

async function importedModelPage(arn) {
  const model = await bedrock.getImportedModel(arn);
  return [
    h("div", {class: "page-head", id: "model-head"}, h("h1", {}, "Imported model ", h("span", {class: "name"}, model.modelName))),
    model.jobArn ? h("p", {}, "Imported by ", link(`import/${enc(model.jobArn)}`, model.jobName || jobId(model.jobArn))) : "",
    section("GetImportedModel", "details", membersTable(model, "model-members")),
  ];
}

async function provisionedPage(arn) {
  const throughput = await bedrock.getProvisioned(arn);
  return [
    jobHeader("Provisioned throughput", throughput, throughput.provisionedModelName),
    throughput.failureMessage ? h("p", {class: "failure"}, throughput.failureMessage) : "",
    section("GetProvisionedModelThroughput", "details", membersTable(throughput, "provisioned-members")),
  ];
}

async function evaluationPage(arn) {
  const job = await bedrock.getEvaluationJob(arn);
  const scores = job.status === "Completed" ? await evaluationScores(arn) : null;
  return [
    jobHeader("Evaluation job", job, job.jobName),
    h("div", {class: "facts"},
      h("p", {}, `Created ${when(job.creationTime)}`, job.lastModifiedTime ? ` · last modified ${when(job.lastModifiedTime)}` : ""),
      (job.failureMessages || []).map((m) => h("p", {class: "failure", id: "job-message"}, m))),
    scores ? section("Scores", "scores", table("scores-table", [
      ["Task type", (m) => m.taskType || ""],
      ["Dataset", (m) => m.datasetName || ""],
      ["Metric", (m) => m.metricName],
      ["Value", (m) => m.value === null || m.value === undefined ? "—" : Number(m.value).toFixed(4)],
    ], (scores.metrics || []).map((m) => ({item: m, attrs: {"data-metric": m.metricName}})),
    scores.error || "No scores were written.")) : "",
    outputs([["Results", scores && scores.resultsUri], ["Output folder", job.outputDataConfig && job.outputDataConfig.s3Uri]]),
    section("GetEvaluationJob", "request", membersTable(job, "job-members")),
  ];
}

const PAGES = {
  "": overview, batch: batchPage, customization: customizationPage, copy: copyPage,
  "custom-model": customModelPage, "foundation-model": foundationModelPage, deployment: deploymentPage,
  import: importPage, "imported-model": importedModelPage, provisioned: provisionedPage, evaluation: evaluationPage,
};

function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/");
  const page = PAGES[parts[0]] ? parts[0] : "";
  return {page, arg: parts.length > 1 ? decodeURIComponent(parts.slice(1).join("/")) : null};
}

// ---- sign-in, region, the poll loop --------------------------------------------------------------
function signedOut() {
  state.session = null;
  clearTimeout(state.timer);
  state.generation += 1;
  showLogin();
}

function showLogin(message) {
  document.getElementById("region-picker").hidden = true;
  document.getElementById("sign-out").hidden = true;
  document.getElementById("who").textContent = "";
  const form = h("form", {id: "login", class: "login",
    onsubmit: async (event) => {
      event.preventDefault();
      const data = new FormData(event.target);
      try {
        await call("POST", "/console/api/login", null, {accessKeyId: data.get("accessKeyId"),
          secretAccessKey: data.get("secretAccessKey"), sessionToken: data.get("sessionToken") || undefined});
        await start();
      } catch (error) {
        showLogin(error.message);
      }
    }},
    h("h1", {}, "Sign in"),
    h("p", {class: "muted"}, "With an access key pair of this server's credentials file."),
    h("label", {}, "Access key id", h("input", {name: "accessKeyId", id: "access-key-id", autocomplete: "username", required: true})),
    h("label", {}, "Secret access key", h("input", {name: "secretAccessKey", id: "secret-access-key", type: "password",
                                                   autocomplete: "current-password", required: true})),
    h("label", {}, "Session token (if the key has one)", h("input", {name: "sessionToken", id: "session-token", type: "password"})),
    message ? h("p", {class: "failure", id: "login-error"}, message) : "",
    h("button", {type: "submit", id: "sign-in"}, "Sign in"));
  const main = document.getElementById("main");
  main.replaceChildren(form);
  main.removeAttribute("data-route");
  main.removeAttribute("data-page");
}

function showChrome() {
  const session = state.session;
  const picker = document.getElementById("region");
  const saved = localStorage.getItem(REGION_KEY);
  state.region = state.region || (session.regions.includes(saved) ? saved : session.defaultRegion);
  picker.replaceChildren(...session.regions.map((r) => h("option", {value: r, selected: r === state.region}, r)));
  document.getElementById("region-picker").hidden = false;
  document.getElementById("sign-out").hidden = session.openMode;
  document.getElementById("who").textContent =
    `account ${session.account}` + (session.accessKeyId ? ` (${session.accessKeyId})` : session.openMode ? " (open mode)" : "");
}

async function render() {
  const generation = ++state.generation;
  clearTimeout(state.timer);
  const {page, arg} = route();
  const main = document.getElementById("main");
  const arnRegion = /^arn:aws:bedrock:([a-z0-9-]+):/.exec(arg || "");
  if (arnRegion && arnRegion[1] !== state.region && state.session.regions.includes(arnRegion[1])) {
    state.region = arnRegion[1];  // a resource's page reads it in its own region
    document.getElementById("region").value = state.region;
  }
  if (main.getAttribute("data-route") !== location.hash) {  // another page: not the last one's content meanwhile
    main.replaceChildren(h("p", {class: "muted"}, "Loading…"));
    main.setAttribute("data-route", location.hash);
    main.removeAttribute("data-page");
  }
  const line = document.getElementById("status-line");
  try {
    const content = await PAGES[page](arg);
    if (generation !== state.generation) return;  // the route, region or session changed meanwhile
    main.replaceChildren(...content.flat());
    main.setAttribute("data-page", page || "overview");
    line.textContent = `${state.region} · updated ${new Date().toLocaleTimeString()}`;
    line.setAttribute("data-updated", String(Date.now()));
  } catch (error) {
    if (generation !== state.generation) return;
    if (AUTH_ERRORS.includes(error.code)) return;  // signedOut() showed the form
    main.replaceChildren(h("p", {class: "failure", id: "page-error"}, `${error.code || "Error"}: ${error.message}`),
                         h("p", {}, link("", "Back to the overview")));
  }
  state.timer = setTimeout(() => { if (generation === state.generation) render(); }, POLL_MS);
}

async function start() {
  state.session = await call("GET", "/console/api/session");
  if (!state.session.signedIn) return showLogin();
  showChrome();
  await render();
}

document.getElementById("region").addEventListener("change", (event) => {
  state.region = event.target.value;
  localStorage.setItem(REGION_KEY, state.region);
  if (route().page) location.hash = "#/";  // a resource's page belongs to its region: back to the lists
  else render();
});
document.getElementById("sign-out").addEventListener("click", async () => {
  await call("POST", "/console/api/logout");
  state.region = null;
  signedOut();
});
window.addEventListener("hashchange", render);
start().catch((error) => {
  document.getElementById("main").replaceChildren(h("p", {class: "failure", id: "page-error"}, error.message));
});
