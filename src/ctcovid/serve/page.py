"""The upload page served at ``/``: pick a scan, see the probabilities and the heatmap montage.

One self-contained HTML document (no external scripts, fonts or styles: the server may run
offline). It posts the file to ``/v1/explain`` and shows the JSON answer.
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ctcovid: chest CT analysis</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 1.5rem auto; max-width: 980px; color: #1d2330; }
  h1 { font-size: 1.35rem; margin-bottom: .2rem; }
  .muted { color: #5b6475; font-size: .9rem; }
  form { display: flex; flex-wrap: wrap; gap: .8rem; align-items: end; padding: 1rem;
         border: 1px solid #d5dae3; border-radius: 8px; background: #f7f9fc; }
  label { display: flex; flex-direction: column; font-size: .85rem; gap: .25rem; }
  button { padding: .5rem 1.2rem; font-size: 1rem; border-radius: 6px; border: 0;
           background: #1f5fbf; color: white; cursor: pointer; }
  button:disabled { background: #8aa5cf; }
  #status { margin: .8rem 0; min-height: 1.4rem; }
  #status[data-state="error"] { color: #b3261e; font-weight: 600; }
  #label { font-size: 1.25rem; font-weight: 700; }
  table { border-collapse: collapse; margin: .6rem 0; }
  td { padding: .25rem .6rem; }
  .bar { background: #1f5fbf; height: .8rem; border-radius: 3px; }
  #montage { max-width: 100%; border: 1px solid #d5dae3; margin-top: .6rem; }
  .warn { color: #8a5300; font-size: .85rem; }
  footer { margin-top: 1.5rem; font-size: .8rem; color: #5b6475; }
</style>
</head>
<body>
<h1>ctcovid: COVID-19 from chest CT</h1>
<div class="muted" id="model">model: loading...</div>
<p class="muted">Upload a NIfTI scan (.nii, .nii.gz) or a .zip of one DICOM series. The answer is a
research model's output, not a diagnosis: check the heatmap against the images.</p>
<form id="form">
  <label>Scan <input type="file" id="file" name="file" accept=".nii,.gz,.zip" required></label>
  <label>Explanation
    <select id="method">
      <option value="ig" selected>Integrated gradients</option>
      <option value="gradxinput">Gradient x input (fast)</option>
      <option value="gradcam">Grad-CAM</option>
      <option value="gradcam++">Grad-CAM++</option>
    </select>
  </label>
  <label>API token (if the server needs one) <input type="password" id="token" autocomplete="off"></label>
  <button type="submit" id="go">Analyse</button>
</form>
<div id="status" data-state="idle"></div>
<section id="result" hidden>
  <div>Predicted: <span id="label"></span> <span class="muted" id="task"></span></div>
  <div id="refer" hidden></div>
  <table id="probs"></table>
  <div id="trust" class="muted"></div>
  <div id="warnings"></div>
  <img id="montage" alt="Heatmap montage: the most activated axial slices with the heatmap over the CT">
</section>
<footer>API: <a href="docs">docs</a> &middot; <a href="v1/model">v1/model</a> &middot; <a href="v1/health">v1/health</a></footer>
<script>
const $ = (id) => document.getElementById(id);
function headers() {
  const t = $("token").value.trim();
  return t ? { "Authorization": "Bearer " + t } : {};
}
function setStatus(state, text) { $("status").dataset.state = state; $("status").textContent = text; }
async function loadModel() {
  try {
    const r = await fetch("v1/model", { headers: headers() });
    if (!r.ok) { $("model").textContent = "model: (token needed to show it)"; return; }
    const m = await r.json();
    $("model").textContent = `model: ${m.name} (${m.task}; classes ${m.labels.join(", ")})`;
  } catch (e) { $("model").textContent = "model: unavailable"; }
}
function row(name, p, best) {
  const tr = document.createElement("tr");
  const pct = (100 * p).toFixed(1);
  tr.innerHTML = `<td>${best ? "<b>" : ""}${name}${best ? "</b>" : ""}</td><td>${pct}%</td>` +
                 `<td style="width:260px"><div class="bar" style="width:${pct}%"></div></td>`;
  return tr;
}
$("form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const file = $("file").files[0];
  if (!file) { setStatus("error", "choose a scan first"); return; }
  const body = new FormData();
  body.append("file", file);
  $("go").disabled = true;
  $("result").hidden = true;
  setStatus("busy", "uploading and analysing...");
  try {
    const r = await fetch("v1/explain?method=" + encodeURIComponent($("method").value),
                          { method: "POST", body, headers: headers() });
    const data = await r.json().catch(() => ({ detail: r.statusText }));
    if (!r.ok) {
      const d = typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail);
      setStatus("error", `error ${r.status}: ${d}`);
      return;
    }
    const p = data.prediction;
    const assessable = p.label !== null;
    $("label").textContent = assessable ? p.label : "not assessable";
    $("task").textContent = assessable
      ? `(${p.task}; heatmap for ${data.target}, ${data.method} on ${data.layer})` : `(${p.task})`;
    $("refer").hidden = !p.refer;
    $("refer").className = "warn";
    $("refer").textContent = p.refer ? "Refer to a radiologist: " + p.refer_reasons.join("; ") : "";
    const tbl = $("probs");
    tbl.replaceChildren(...Object.entries(p.probs).map(([k, v]) => row(k, v, k === p.label)));
    const num = (v) => (v === null || v === undefined) ? "n/a" : v.toFixed(2);
    $("trust").textContent = assessable
      ? `out-of-distribution score ${num(p.ood_score)} (above 1: unlike the training scans); ` +
        `uncertainty ${num(p.uncertainty)} (0 certain, 1 uniform)` : "";
    const notes = [...((p.quality && p.quality.problems) || []).map((w) => "quality: " + w),
                   ...p.warnings.filter((w) => !(p.quality && p.quality.problems.includes(w)))
                                .map((w) => "warning: " + w)];
    $("warnings").replaceChildren(...notes.map((w) => {
      const d = document.createElement("div"); d.className = "warn"; d.textContent = w; return d;
    }));
    if (data.montage_png) {
      $("montage").hidden = false;
      $("montage").onload = () => setStatus("done", `done in ${data.seconds.toFixed(1)} s`);
      $("montage").src = "data:image/png;base64," + data.montage_png;
    } else {
      $("montage").hidden = true;
      setStatus("done", `not assessable (${data.seconds.toFixed(1)} s)`);
    }
    $("result").hidden = false;
  } catch (e) {
    setStatus("error", "request failed: " + e);
  } finally {
    $("go").disabled = false;
  }
});
$("token").addEventListener("change", loadModel);
loadModel();
</script>
</body>
</html>
"""
