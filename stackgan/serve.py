"""A small local web page: type a caption, get Stage-I and Stage-II birds side by side.

:func:`build_app` returns a FastAPI app (FastAPI and uvicorn come with MLflow):

* ``GET /``: the page (a caption box, the number of samples and a seed);
* ``POST /api/generate`` with JSON ``{"caption": str, "samples": int, "seed": int}``:
  ``{"caption", "samples", "seed", "encoder", "network", "stage1": [PNG base64...],
  "final": [...]}``; the same request always gives the same images;
* ``GET /health``.

Bad requests get a 4xx with a JSON ``{"error": ...}``: a body that is not UTF-8 JSON, a
missing or empty caption, one over the encoder's limit, samples or seed out of range, a
body over 16 KiB. ``stackgan serve`` binds it to 127.0.0.1 by default.
"""

from __future__ import annotations

import base64
import io
import json
import threading
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image

from stackgan.grids import to_uint8
from stackgan.sampling import Sampler
from stackgan.text.encoder import MAX_CAPTION_CHARS, TextEncoder, encoder_metadata

MAX_BODY_BYTES = 16 * 1024
MAX_SAMPLES = 8
MAX_SEED = 2**31 - 1


class BadRequest(ValueError):
    """A request the server refuses, with its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_request(body: bytes) -> tuple[str, int, int]:
    """``(caption, samples, seed)`` from a request body; :class:`BadRequest` otherwise."""
    if len(body) > MAX_BODY_BYTES:
        raise BadRequest(413, f"request body over {MAX_BODY_BYTES} bytes")
    try:
        data = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise BadRequest(400, f"the body is not UTF-8 (byte {err.start})") from err
    except json.JSONDecodeError as err:
        raise BadRequest(400, f"the body is not JSON: {err.msg} at character {err.pos}") from err
    if not isinstance(data, dict):
        raise BadRequest(400, "the body must be a JSON object")
    caption = data.get("caption")
    if not isinstance(caption, str) or not caption.strip():
        raise BadRequest(422, "caption: expected a non-empty string")
    if len(caption) > MAX_CAPTION_CHARS:
        raise BadRequest(422, f"caption: {len(caption)} characters, at most {MAX_CAPTION_CHARS}")
    samples, seed = data.get("samples", 4), data.get("seed", 0)
    if not isinstance(samples, int) or isinstance(samples, bool) or not 1 <= samples <= MAX_SAMPLES:
        raise BadRequest(422, f"samples: expected an integer from 1 to {MAX_SAMPLES}")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise BadRequest(422, f"seed: expected an integer from 0 to {MAX_SEED}")
    return caption.strip(), samples, seed


def _png_base64(images: torch.Tensor) -> list[str]:
    out = []
    for tile in to_uint8(images.float().cpu()):
        buf = io.BytesIO()
        Image.fromarray(tile).save(buf, format="PNG")
        out.append(base64.b64encode(buf.getvalue()).decode("ascii"))
    return out


def generate_images(
    sampler: Sampler, encoder: TextEncoder, caption: str, samples: int, seed: int
) -> dict[str, Any]:
    """The response of ``/api/generate``: both stages' images as base64 PNGs."""
    emb = torch.from_numpy(encoder.encode([caption])).repeat(samples, 1)  # [samples, D]
    with torch.no_grad():
        out = sampler.sample_chunk(emb, 0, seed)
    return {
        "caption": caption,
        "samples": samples,
        "seed": seed,
        "encoder": encoder_metadata(encoder),
        "network": {k: sampler.meta.get(k) for k in ("stage", "sha256", "step")},
        "stage1": _png_base64(out.stage1),
        "final": _png_base64(out.final) if sampler.stage == 2 else [],
    }


def build_app(sampler: Sampler, encoder: TextEncoder) -> FastAPI:
    """The FastAPI app serving the page and the JSON endpoint."""
    app = FastAPI(title="StackGAN", docs_url=None, redoc_url=None, openapi_url=None)
    lock = threading.Lock()  # one generation at a time

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.replace("__MAX_CHARS__", str(MAX_CAPTION_CHARS)).replace(
            "__MAX_SAMPLES__", str(MAX_SAMPLES)
        )

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/api/generate")
    async def api_generate(request: Request) -> JSONResponse:
        try:
            caption, samples, seed = parse_request(await request.body())
        except BadRequest as err:
            return JSONResponse({"error": str(err)}, status_code=err.status)
        with lock:
            result = generate_images(sampler, encoder, caption, samples, seed)
        return JSONResponse(result)

    return app


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>StackGAN: birds from your sentences</title>
<style>
body{font-family:system-ui,sans-serif;max-width:1000px;margin:1.5em auto;padding:0 1em}
textarea{width:100%;font-size:1em}label{margin-right:1em}
.row{display:flex;gap:12px;margin:8px 0}.row img{width:192px;height:192px;
image-rendering:auto;border:1px solid #ccc}.err{color:#a00}.hint{color:#666}
</style></head><body>
<h1>Birds from your sentences</h1>
<form id="f">
<textarea id="caption" rows="2" maxlength="__MAX_CHARS__"
 placeholder="a small bird with red wings and a blue belly."></textarea>
<p><label>samples <input id="samples" type="number" min="1" max="__MAX_SAMPLES__" value="4">
</label><label>seed <input id="seed" type="number" min="0" value="0"></label>
<button id="go" type="submit">Generate</button></p></form>
<p class="hint">Each row: the Stage-I image (64 px, shown enlarged) and, for a Stage-II
network, the Stage-II image (256 px). The same caption, samples and seed always give the
same birds.</p>
<p id="status"></p><div id="out"></div>
<script>
document.getElementById("f").addEventListener("submit", async (e) => {
  e.preventDefault();
  const status = document.getElementById("status"), out = document.getElementById("out");
  status.className = ""; status.textContent = "generating...";
  const body = {caption: document.getElementById("caption").value,
                samples: parseInt(document.getElementById("samples").value, 10),
                seed: parseInt(document.getElementById("seed").value, 10)};
  const r = await fetch("api/generate", {method: "POST",
      headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
  const data = await r.json();
  if (!r.ok) { status.className = "err"; status.textContent = data.error; return; }
  status.textContent = `"${data.caption}", seed ${data.seed}`;
  out.innerHTML = "";
  data.stage1.forEach((png1, i) => {
    const row = document.createElement("div"); row.className = "row";
    const pairs = [[png1, "stage1"]];
    if (data.final.length) pairs.push([data.final[i], "stage2"]);
    for (const [src, name] of pairs) {
      const img = document.createElement("img");
      img.src = "data:image/png;base64," + src; img.className = name;
      img.alt = name + " sample " + i; row.appendChild(img);
    }
    out.appendChild(row);
  });
});
</script></body></html>
"""
