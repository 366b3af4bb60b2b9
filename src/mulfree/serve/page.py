"""The built-in web page served at `/`: a prompt box, streaming output, live tokens/s and
estimated energy per token. One self-contained HTML document (no external assets), kept as a
string so it ships inside the Python package."""

PAGE_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>mulfree serve</title>
<style>
  body { font-family: system-ui, sans-serif; max-width: 52rem; margin: 2rem auto; padding: 0 1rem;
         color: #1d232a; background: #fafbfc; }
  h1 { font-size: 1.4rem; margin-bottom: .2rem; }
  .sub { color: #5b6570; margin-top: 0; }
  textarea { width: 100%; min-height: 6rem; font: inherit; padding: .5rem; box-sizing: border-box; }
  .row { display: flex; gap: 1rem; flex-wrap: wrap; align-items: center; margin: .6rem 0; }
  label { font-size: .9rem; color: #3a434c; }
  input { width: 5rem; }
  input#key { width: 12rem; }
  button { font: inherit; padding: .4rem 1.2rem; cursor: pointer; }
  pre#out { white-space: pre-wrap; background: #fff; border: 1px solid #d8dee4; min-height: 8rem;
            padding: .7rem; border-radius: 4px; }
  .stats { display: grid; grid-template-columns: repeat(4, 1fr); gap: .5rem; }
  .stat { background: #fff; border: 1px solid #d8dee4; border-radius: 4px; padding: .4rem .6rem; }
  .stat b { display: block; font-size: 1.2rem; }
  .stat span { font-size: .75rem; color: #5b6570; }
  #status { color: #5b6570; font-size: .85rem; }
  .err { color: #b42318; }
</style>
</head>
<body>
<h1>mulfree serve</h1>
<p class="sub">Model <code id="model"></code> &middot; OpenAI-compatible API at <code>/v1</code>
&middot; <a href="/metrics">metrics</a></p>
<textarea id="prompt" placeholder="Type a prompt">Once upon a time</textarea>
<div class="row">
  <label>max tokens <input id="max_tokens" type="number" value="{{MAX_TOKENS}}" min="1"></label>
  <label>temperature <input id="temperature" type="number" value="{{TEMPERATURE}}" step="0.1" min="0" max="2"></label>
  <label>top p <input id="top_p" type="number" value="{{TOP_P}}" step="0.05" min="0.05" max="1"></label>
  <label>seed <input id="seed" type="number" placeholder="random"></label>
  <label>API key <input id="key" type="password" placeholder="if the server needs one"></label>
  <button id="go">Generate</button>
</div>
<div class="stats">
  <div class="stat"><b id="tps">-</b><span>tokens/s (this request)</span></div>
  <div class="stat"><b id="ntok">0</b><span>tokens generated</span></div>
  <div class="stat"><b id="server_tps">-</b><span>tokens/s (server, 10 s)</span></div>
  <div class="stat"><b id="energy">-</b><span>est. energy / token</span></div>
</div>
<pre id="out"></pre>
<div id="status">idle</div>
<script>
const MODEL = {{MODEL_ID}};
const $ = (id) => document.getElementById(id);
$("model").textContent = MODEL;

function fmtEnergy(pj) {
  if (!isFinite(pj)) return "-";
  if (pj >= 1e6) return (pj / 1e6).toFixed(2) + " \\u00b5J";
  if (pj >= 1e3) return (pj / 1e3).toFixed(2) + " nJ";
  return pj.toFixed(1) + " pJ";
}

function metricValue(text, name) {
  for (const line of text.split("\\n")) {
    if (line.startsWith(name + "{") || line.startsWith(name + " ")) {
      return parseFloat(line.slice(line.lastIndexOf(" ") + 1));
    }
  }
  return NaN;
}

async function pollMetrics() {
  try {
    const r = await fetch("/metrics");
    const t = await r.text();
    const tps = metricValue(t, "mulfree_tokens_per_second");
    if (isFinite(tps)) $("server_tps").textContent = tps.toFixed(1);
    const e = metricValue(t, "mulfree_energy_per_token_picojoules");
    if (isFinite(e)) $("energy").textContent = fmtEnergy(e);
  } catch (e) { /* the next poll tries again */ }
}
setInterval(pollMetrics, 1000);
pollMetrics();

async function generate() {
  const out = $("out");
  out.textContent = "";
  $("status").className = "";
  $("status").textContent = "waiting for the first token...";
  $("go").disabled = true;
  const body = {
    model: MODEL, prompt: $("prompt").value, stream: true,
    stream_options: {include_usage: true},
    max_tokens: parseInt($("max_tokens").value, 10),
    temperature: parseFloat($("temperature").value),
    top_p: parseFloat($("top_p").value),
  };
  if ($("seed").value !== "") body.seed = parseInt($("seed").value, 10);
  const headers = {"Content-Type": "application/json"};
  if ($("key").value) headers["Authorization"] = "Bearer " + $("key").value;
  const t0 = performance.now();
  let first = null, n = 0;
  try {
    const r = await fetch("/v1/completions", {method: "POST", headers, body: JSON.stringify(body)});
    if (!r.ok) {
      const err = await r.json().catch(() => ({error: {message: r.statusText}}));
      throw new Error(r.status + ": " + err.error.message);
    }
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    let buf = "", done = false;
    while (!done) {
      const {value, done: end} = await reader.read();
      if (end) break;
      buf += dec.decode(value, {stream: true});
      let i;
      while ((i = buf.indexOf("\\n\\n")) >= 0) {
        const event = buf.slice(0, i); buf = buf.slice(i + 2);
        if (!event.startsWith("data: ")) continue;
        const data = event.slice(6);
        if (data === "[DONE]") { done = true; break; }
        const msg = JSON.parse(data);
        if (msg.error) throw new Error(msg.error.message);
        if (msg.usage) n = msg.usage.completion_tokens;
        if (msg.choices && msg.choices.length) {
          const piece = msg.choices[0].text;
          if (piece) {
            if (first === null) first = performance.now();
            out.textContent += piece;
            if (!msg.usage) n += 1;
          }
          if (msg.choices[0].finish_reason) $("status").textContent = "finished: " + msg.choices[0].finish_reason;
        }
        const secs = (performance.now() - t0) / 1000;
        $("ntok").textContent = n;
        if (secs > 0) $("tps").textContent = (n / secs).toFixed(1);
      }
    }
    const ttft = first === null ? NaN : (first - t0);
    $("status").textContent += " \\u00b7 first token after " + (isFinite(ttft) ? ttft.toFixed(0) + " ms" : "-");
    $("ntok").textContent = n;
    $("tps").textContent = (n / ((performance.now() - t0) / 1000)).toFixed(1);
    pollMetrics();
    document.body.dataset.state = "done";
  } catch (e) {
    $("status").className = "err";
    $("status").textContent = "error: " + e.message;
    document.body.dataset.state = "error";
  } finally {
    $("go").disabled = false;
  }
}
$("go").addEventListener("click", generate);
</script>
</body>
</html>
"""
