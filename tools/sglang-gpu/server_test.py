#!/usr/bin/env python3
# ruff: noqa: SIM105, SIM115  (harness script: files and processes live for the whole run)
"""Start real SGLang servers (dummy weights) one after another, one per *variant* (stock triton, the mmi backend with
several head configs), send the same OpenAI chat requests carrying a video to each, and compare.

Usage (on the GPU machine, after device_run.sh has installed the wheels and set PYTHONPATH):
  server_test.py --ckpt DIR --out DIR --video PATH --head-configs DIR [--variants stock,mmi_mixed] [--video-long PATH]
                 [--budget-s 500] [-- EXTRA SERVER ARGS]
Per request: TTFT, prompt tokens, GPU busy span, the first generated token's top-20 logprobs. Per mmi variant: the
backend's own log lines (`mmi timing:` = LLM prefill attention measured inside the backend with CUDA events, and the
sparse/dense request counts with fallback reasons). Everything goes to OUT/results.json and OUT/server_<variant>.log;
every server is killed before the next starts and before exit.
"""

import argparse
import base64
import json
import os
import re
import signal
import subprocess
import sys
import time

import requests

ap = argparse.ArgumentParser()
ap.add_argument("--ckpt", required=True)
ap.add_argument("--out", required=True)
ap.add_argument("--video", required=True, help="mp4 for the main requests")
ap.add_argument("--video-long", default=None, help="optional longer mp4, sent last if time is left")
ap.add_argument(
    "--head-configs", required=True, help="dir with dense.json, grid.json, mixed.json (make_head_configs.py)"
)
ap.add_argument(
    "--variants",
    default="stock,mmi_mixed",
    help="comma list, run in order: stock, mmi_off, mmi_dense, mmi_grid, mmi_mixed, mmi_default, hybrid_mixed",
)
ap.add_argument("--port", type=int, default=30000)
ap.add_argument("--mm-attention-backend", default="triton_attn")
ap.add_argument("--budget-s", type=float, default=500.0, help="hard wall budget for the whole script")
ap.add_argument("--startup-timeout-s", type=float, default=330.0)
ap.add_argument("--max-tokens", type=int, default=8)
ap.add_argument("--plan", default="file_url", help="which requests to send per variant, in order (labels below)")
ap.add_argument("--gpu-sample-ms", type=int, default=250, help="nvidia-smi utilization sampling period (0: off)")
ap.add_argument("extra", nargs=argparse.REMAINDER)
a = ap.parse_args()
T0 = time.time()
left = lambda: a.budget_s - (time.time() - T0)
os.makedirs(a.out, exist_ok=True)
res = {"argv": sys.argv, "variants": {}}

# the thresholds of the 2026-11-22 runs (then the defaults): every long extend goes sparse, so the backend is measured
MMI_ENV = {"MMI_TIMING": "1", "MMI_LOG_INTERVAL_S": "0", "MMI_MIN_SEQ_LEN": "8192", "MMI_MIN_CHUNK_TOKENS": "64"}
hc = lambda name: {"MMI_HEAD_CONFIGS": os.path.join(a.head_configs, name)}
VARIANTS = {  # label -> (attention flags, extra environment)
    "stock": (["--attention-backend", "triton"], {}),
    "mmi_off": (["--attention-backend", "mmi"], {**MMI_ENV, **hc("dense.json"), "MMI_ENABLED": "0"}),
    "mmi_dense": (["--attention-backend", "mmi"], {**MMI_ENV, **hc("dense.json")}),
    "mmi_grid": (["--attention-backend", "mmi"], {**MMI_ENV, **hc("grid.json")}),
    "mmi_mixed": (["--attention-backend", "mmi"], {**MMI_ENV, **hc("mixed.json")}),
    "mmi_default": (["--attention-backend", "mmi"], MMI_ENV),  # mmi-models' family default head configs
    "hybrid_mixed": (
        ["--prefill-attention-backend", "mmi", "--decode-attention-backend", "triton"],
        {**MMI_ENV, **hc("mixed.json")},
    ),
}


def save():
    res["elapsed_s"] = round(time.time() - T0, 1)
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(res, f, indent=1)


gpu_csv = os.path.join(a.out, "gpu_util.csv")
smi = None
if a.gpu_sample_ms > 0:  # timestamped GPU utilization, to split TTFT into CPU preprocessing and GPU busy time
    smi = subprocess.Popen(
        [
            "nvidia-smi",
            "--query-gpu=timestamp,utilization.gpu,memory.used",
            "--format=csv,noheader,nounits",
            f"-lms={a.gpu_sample_ms}",
        ],
        stdout=open(gpu_csv, "w"),
        stderr=subprocess.DEVNULL,
    )


def gpu_busy(t0, t1):
    """First and last sample with utilization > 0 inside [t0, t1] (epoch s), and their span."""
    import datetime

    busy = []
    try:
        for line in open(gpu_csv):
            ts, util, mem = [x.strip() for x in line.split(",")]
            t = datetime.datetime.strptime(ts, "%Y/%m/%d %H:%M:%S.%f").timestamp()
            if t0 <= t <= t1 and float(util) > 0:
                busy.append((t, float(mem)))
    except Exception as e:
        return {"error": str(e)}
    if not busy:
        return {"busy_samples": 0}
    return {
        "first_busy_after_s": round(busy[0][0] - t0, 2),
        "last_busy_after_s": round(busy[-1][0] - t0, 2),
        "busy_span_s": round(busy[-1][0] - busy[0][0], 2),
        "busy_samples": len(busy),
        "peak_mem_used_mib": max(m for _, m in busy),
    }


def chat(base, video_ref, label, max_tokens):
    body = {
        "model": "default",
        "temperature": 0,
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        "logprobs": True,
        "top_logprobs": 20,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "video_url", "video_url": {"url": video_ref}},
                    {"type": "text", "text": "Describe the video."},
                ],
            }
        ],
    }
    r = {"label": label, "ref": video_ref[:80]}
    t = time.time()
    r["t_start_epoch"] = t
    try:
        with requests.post(
            base + "/v1/chat/completions", json=body, stream=True, timeout=(10, max(30.0, left() - 25))
        ) as resp:
            r["http_status"] = resp.status_code
            if resp.status_code != 200:
                r["error"] = resp.text[:2000]
                return r
            text = ""
            for line in resp.iter_lines():
                if not line or not line.startswith(b"data: "):
                    continue
                data = line[6:]
                if data == b"[DONE]":
                    break
                ev = json.loads(data)
                if ev.get("usage"):
                    r["usage"] = ev["usage"]
                for ch in ev.get("choices", []):
                    delta = ch.get("delta", {}).get("content")
                    if delta is not None and "ttft_s" not in r:
                        r["ttft_s"] = round(time.time() - t, 3)
                        r["t_first_epoch"] = time.time()
                    lp = (ch.get("logprobs") or {}).get("content") or []
                    if lp and "first_token" not in r:
                        r["first_token"] = {
                            "token": lp[0].get("token"),
                            "logprob": lp[0].get("logprob"),
                            "top": {x["token"]: x["logprob"] for x in lp[0].get("top_logprobs", [])},
                        }
                    text += delta or ""
            r["total_s"] = round(time.time() - t, 3)
            r["text"] = text[:200]
            if "t_first_epoch" in r:
                time.sleep(0.6)  # let the sampler catch up
                r["gpu_until_first_token"] = gpu_busy(t, r["t_first_epoch"] + 0.3)
    except Exception as e:
        r["error"] = f"{type(e).__name__}: {e}"
        r["total_s"] = round(time.time() - t, 3)
    return r


def mmi_lines(log_path):
    """The mmi backend's own log lines: settings, routing counts, per-batch timing (parsed into numbers)."""
    out = {"lines": [], "timing": []}
    try:
        for line in open(log_path, errors="replace"):
            if "mmi" not in line:
                continue
            if "mmi timing:" in line:
                out["timing"].append(dict(re.findall(r"(\w+)=(\S+)", line.split("mmi timing:", 1)[1])))
            elif re.search(r"mmi[: ]", line) and len(out["lines"]) < 200:
                out["lines"].append(line.strip()[-400:])
    except OSError as e:
        out["error"] = str(e)
    return out


def run_variant(idx, name):
    flags, env_extra = VARIANTS[name]
    port = a.port + idx
    base = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable,
        "-m",
        "sglang.launch_server",
        "--model-path",
        a.ckpt,
        "--load-format",
        "dummy",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *flags,
        "--mm-attention-backend",
        a.mm_attention_backend,
        "--sampling-backend",
        "pytorch",
        "--disable-cuda-graph",
        "--chunked-prefill-size",
        "-1",
        "--mem-fraction-static",
        "0.6",
        "--context-length",
        "300000",
        "--disable-radix-cache",
        "--skip-server-warmup",
        "--log-level",
        "info",
    ] + [x for x in a.extra if x != "--"]
    env = dict(os.environ, SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN="1", PYTHONUNBUFFERED="1", **env_extra)
    v = {"server_cmd": " ".join(cmd), "env": env_extra, "requests": []}
    res["variants"][name] = v
    print(f"[{name}] starting:", v["server_cmd"], env_extra, flush=True)
    log_path = os.path.join(a.out, f"server_{name}.log")
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    t0 = time.time()
    try:
        ok = False
        while time.time() - t0 < a.startup_timeout_s and left() > 60:
            if proc.poll() is not None:
                v["startup_error"] = f"server exited with {proc.returncode}"
                break
            try:
                if requests.get(base + "/health", timeout=5).status_code == 200:
                    ok = True
                    break
            except Exception:
                pass
            time.sleep(2)
        v["server_ready"], v["startup_s"] = ok, round(time.time() - t0, 1)
        print(f"[{name}] server ready={ok} after {v['startup_s']} s", flush=True)
        save()
        if ok:
            with open(a.video, "rb") as f:
                b64 = base64.b64encode(f.read()).decode()
            allp = [
                ("file_url", "file://" + os.path.abspath(a.video), a.max_tokens),
                ("plain_path", os.path.abspath(a.video), a.max_tokens),
                ("data_url_base64", "data:video/mp4;base64," + b64, a.max_tokens),
            ]
            if a.video_long:
                allp.append(("long_file_url", "file://" + os.path.abspath(a.video_long), 2))
            byl = {p[0]: p for p in allp}
            for label, ref, mt in [byl[x] for x in a.plan.split(",") if x in byl]:
                if left() < 60:
                    v["requests"].append({"label": label, "skipped": f"only {left():.0f} s left"})
                    continue
                r = chat(base, ref, label, mt)
                print(f"[{name}]", json.dumps({k: x for k, x in r.items() if k != "first_token"}), flush=True)
                v["requests"].append(r)
                save()
                if proc.poll() is not None:
                    v["crash"] = f"server exited with {proc.returncode} after {label}"
                    break
            if proc.poll() is None and "--enable-metrics" in cmd:
                try:
                    text = requests.get(base + "/metrics", timeout=10).text
                    with open(os.path.join(a.out, f"metrics_{name}.txt"), "w") as f:
                        f.write(text)
                    v["mmi_metrics"] = [x for x in text.splitlines() if x.startswith("mmi_")]
                except Exception as e:
                    v["metrics_error"] = str(e)
    finally:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=20)
            except Exception:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except Exception:
                    pass
        v["server_exit_code"] = proc.poll()
        log.close()
        v["mmi_log"] = mmi_lines(log_path)
        save()


def compare():
    """First-token logprobs of every variant vs the first variant, per request label."""
    names = list(res["variants"])
    if len(names) < 2:
        return
    ref = {r["label"]: r for r in res["variants"][names[0]]["requests"] if "first_token" in r}
    out = {}
    for n in names[1:]:
        for r in res["variants"][n]["requests"]:
            b = ref.get(r["label"])
            if b is None or "first_token" not in r:
                continue
            ta, tb = r["first_token"]["top"], b["first_token"]["top"]
            common = set(ta) & set(tb)
            out[f"{n} vs {names[0]} / {r['label']}"] = {
                "same_first_token": r["first_token"]["token"] == b["first_token"]["token"],
                "common_top20": len(common),
                "max_abs_logprob_diff": max((abs(ta[t] - tb[t]) for t in common), default=None),
                "ttft_s": (r.get("ttft_s"), b.get("ttft_s")),
            }
    res["comparison"] = out


try:
    for i, name in enumerate(a.variants.split(",")):
        if name not in VARIANTS:
            res["variants"][name] = {"error": f"unknown variant; known: {sorted(VARIANTS)}"}
            continue
        if left() < 120:
            res["variants"][name] = {"skipped": f"only {left():.0f} s left"}
            continue
        run_variant(i, name)
    compare()
finally:
    if smi is not None:
        smi.terminate()
    save()
    print(json.dumps({k: x for k, x in res.items() if k != "variants"}, indent=1))
    for n, v in res["variants"].items():
        print(
            n,
            json.dumps({k: x for k, x in v.items() if k in ("server_ready", "startup_s", "startup_error", "crash")}),
            json.dumps(v.get("mmi_log", {}).get("timing", [])[-3:]),
        )
