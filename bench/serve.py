"""`llmpipe serve` under load: starts the server on 127.0.0.1 with the pipeline's model, checks it with
the official `openai` client (a chat completion, a streamed one, a completion), then runs --clients
concurrent clients for --seconds, counting ok answers, 429s (the queue is full: expected under this
load) and any other error, the generated tokens per second, and the server's peak resident memory.

    python bench/serve.py [--clients 50] [--seconds 30] [--max-queue 16] [--max-tokens 64]

The model is data/model (with data/tokenizer/tokenizer.json): run the pipeline first (`dvc repro
pretrain`, or the demo). --model-dir and --tokenizer name other files.

Then it exports the same model to GGUF and compares llama.cpp's 32 greedy tokens with llmpipe's on 3
prompts (bench/gguf.py; needs the dev extra's llama-cpp-python).

The server runs with an API key. Before the load phase: auth_refused_ok is 1 when a request without the
key and one with a wrong key both get 401 and the key gets an answer; disconnect_stops_ok is 1 when a
client that leaves a generation of --disconnect-tokens tokens (not streamed, then streamed) stops it,
that is, the server's token counter moves by less than half of them. Then the streamed latency: a client
streams --latency-requests chat replies alone, then again while another client sends 1 MB prompts back
to back (from a process of its own), then while that client sends them to a second server process (the
baseline: what the same traffic costs through the shared cores alone); stream_p99_ms, stream_p99_ms_1mb
and stream_p99_ms_1mb_elsewhere are the 99th percentiles of the inter-token time (between consecutive
streamed chunks that carry text; the wait for the first token is printed apart) in each phase,
p99_ratio_1mb = 1mb / alone (target: at most 2) and p99_ratio_1mb_vs_elsewhere = 1mb / elsewhere (near 1
when the server's event loop and GIL take nothing from the stream beyond what the cores do).

Last line: RESULT served_ok=<0|1> non_429_errors=<n> peak_rss_mb=<x> tokens_per_s=<x> auth_refused_ok=<0|1>
disconnect_stops_ok=<0|1> stream_p99_ms=<x> stream_p99_ms_1mb=<x> stream_p99_ms_1mb_elsewhere=<x> p99_ratio_1mb=<x>
p99_ratio_1mb_vs_elsewhere=<x> gguf_greedy_match=<0|1>,
where served_ok is 1 when the three checks passed and the load phase had ok answers, non_429_errors
counts failures other than 429 in the load phase (0 expected), tokens_per_s is completion tokens of ok
answers per second of the load phase. The line is built from a dict, so other scripts' fields can join it.
"""

from __future__ import annotations

import _root  # first: takes bench/ off the import path (see bench/_root.py)

import argparse
import importlib.util
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent

from llmpipe.model.weights import load_model  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


KEY = "bench-key"
MB_PROMPT = "Romeo, Romeo, wherefore art thou Romeo? " * 25_000  # 1 MB (its length is what the sender uses)


def start_server(model_dir: Path, tokenizer: Path, port: int, max_queue: int, log: Path,
                 max_tokens_limit: int = 512) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "llmpipe.cli", "serve", "--port", str(port), "--model-dir", str(model_dir),
           "--tokenizer", str(tokenizer), "--max-queue", str(max_queue), "--max-tokens-limit", str(max_tokens_limit),
           "--api-key", KEY, "--max-body-bytes", "2000000"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    proc.kill()
    sys.exit(f"the server did not start:\n{log.read_text()[-3000:]}")


def smoke(client) -> bool:
    """The three kinds of request, each checked for a well-formed answer."""
    msgs = [{"role": "system", "content": "You speak like a player."}, {"role": "user", "content": "Good morrow."}]
    chat = client.chat.completions.create(model="llmpipe", messages=msgs, max_tokens=40, seed=1)
    text = chat.choices[0].message.content
    chunks = list(client.chat.completions.create(model="llmpipe", messages=msgs, max_tokens=40, seed=1,
                                                 stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    comp = client.completions.create(model="llmpipe", prompt="ROMEO.\n", max_tokens=40, temperature=0)
    print(f"chat: {text!r}\nstreamed ({len(chunks)} chunks): {streamed!r}\ncompletion: {comp.choices[0].text!r}",
          flush=True)
    return streamed == text and chat.usage.completion_tokens > 0 and comp.usage.completion_tokens > 0


def auth_refused(base: str, client) -> bool:
    """No key and a wrong key: 401 in OpenAI's shape; the key: an answer."""
    codes = [httpx.get(f"{base}/v1/models", headers=h, timeout=10) for h in ({}, {"Authorization": "Bearer nope"})]
    ok = all(r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key" for r in codes)
    return ok and bool(client.models.list().data)


def disconnect_stops(base: str, model: str, max_tokens: int) -> bool:
    """A client that leaves (not streamed, then streamed) once generation started: the server's token counter
    must stop well short of max_tokens."""
    host, port = base.removeprefix("http://").split(":")

    def health():
        return httpx.get(f"{base}/health", timeout=10).json()

    ok = True
    for stream in (False, True):
        before = health()
        body = json.dumps({"model": model, "prompt": "ROMEO.\n", "max_tokens": max_tokens, "temperature": 0,
                           "stream": stream}).encode()
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                         b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            deadline = time.time() + 60
            while health()["generated_tokens"] == before["generated_tokens"] and time.time() < deadline:
                time.sleep(0.01)
        while (now := health())["running"] and time.time() < deadline:
            time.sleep(0.02)
        spent = now["generated_tokens"] - before["generated_tokens"]
        print(f"disconnect ({'streamed' if stream else 'not streamed'}): {spent} of {max_tokens} tokens generated",
              flush=True)
        ok = ok and spent < max_tokens // 2 and now["abandoned"] == before["abandoned"] + 1
    return ok


def stream_gaps(client, requests: int, max_tokens: int) -> tuple[list[float], list[float]]:
    """(inter-token times, times to the first token) in seconds, of streamed chat replies one after another.
    The inter-token times are those between consecutive chunks that carry text."""
    gaps, firsts = [], []
    for i in range(requests):
        start = last = time.perf_counter()
        for chunk in client.chat.completions.create(model="llmpipe", max_tokens=max_tokens, temperature=0.8,
                                                    messages=[{"role": "user", "content": f"Line {i}"}], stream=True):
            if not (chunk.choices and chunk.choices[0].delta.content):
                continue
            now = time.perf_counter()
            (gaps if last > start else firsts).append(now - last)
            last = now
    return gaps, firsts


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else float("nan")


BIG_SENDER = """
import sys, httpx
url, key, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
prompt = ("Romeo, Romeo, wherefore art thou Romeo? " * (size // 40 + 1))[:size]
body = httpx.Request("POST", url, json={"model": "llmpipe", "prompt": prompt, "max_tokens": 1}).content
with httpx.Client(headers={"Authorization": "Bearer " + key, "Content-Type": "application/json"}, timeout=120) as http:
    while True:
        http.post(url, content=body)  # 400: longer than the context; read and parsed all the same
        print(flush=True)
"""


def latency_under_big_prompts(client, base: str, control: str, requests: int, max_tokens: int) -> dict:
    """p99 inter-token time of one streaming client: alone; while another client (a process of its own, so
    that its JSON work holds no GIL of ours) sends 1 MB prompts back to back to the same server; and, the
    baseline for what the machine's cores alone cost, while it sends them to a second server process."""

    def beside_big_prompts(target: str) -> tuple[list[float], list[float], int]:
        sender = subprocess.Popen([sys.executable, "-c", BIG_SENDER, f"{target}/v1/completions", KEY,
                                   str(len(MB_PROMPT))], stdout=subprocess.PIPE, text=True)
        time.sleep(2)  # it imports httpx and sends its first ones
        gaps, firsts = stream_gaps(client, requests, max_tokens)
        sender.terminate()
        return gaps, firsts, sender.communicate(timeout=60)[0].count("\n")

    alone, alone_first = stream_gaps(client, requests, max_tokens)
    loaded, loaded_first, sent = beside_big_prompts(base)
    elsewhere, _, sent_elsewhere = beside_big_prompts(control)
    out = {"stream_p99_ms": 1000 * p99(alone), "stream_p99_ms_1mb": 1000 * p99(loaded),
           "stream_p99_ms_1mb_elsewhere": 1000 * p99(elsewhere)}
    out["p99_ratio_1mb"] = out["stream_p99_ms_1mb"] / out["stream_p99_ms"]
    out["p99_ratio_1mb_vs_elsewhere"] = out["stream_p99_ms_1mb"] / out["stream_p99_ms_1mb_elsewhere"]
    print(f"streamed inter-token p99: {out['stream_p99_ms']:.1f} ms alone ({len(alone)} gaps); "
          f"{out['stream_p99_ms_1mb']:.1f} ms beside 1 MB prompts to the same server ({len(loaded)} gaps, {sent} "
          f"prompts answered); {out['stream_p99_ms_1mb_elsewhere']:.1f} ms beside 1 MB prompts to another server "
          f"process ({len(elsewhere)} gaps, {sent_elsewhere} prompts); time to first token, worst of {requests}: "
          f"{1000 * max(alone_first):.0f} ms alone, {1000 * max(loaded_first):.0f} ms beside them", flush=True)
    return out


def load(client, clients: int, seconds: float, max_tokens: int) -> dict:
    import openai

    counts = {"ok": 0, "429": 0, "other": 0, "tokens": 0}
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.time() + seconds

    def one(i: int) -> None:
        n = 0
        while time.time() < stop_at:
            n += 1
            try:
                r = client.chat.completions.create(
                    model="llmpipe", messages=[{"role": "user", "content": f"Client {i} asks, for the {n}th time."}],
                    max_tokens=max_tokens, temperature=0.8)
                with lock:
                    counts["ok"] += 1
                    counts["tokens"] += r.usage.completion_tokens
            except openai.RateLimitError as err:
                with lock:
                    counts["429"] += 1
                # a client waits as the server's Retry-After says before it tries again, as real ones do
                time.sleep(float(err.response.headers.get("retry-after", 1)))
            except Exception as err:  # noqa: BLE001 - counted and shown
                with lock:
                    counts["other"] += 1
                    errors.append(repr(err)[:200])

    t0 = time.time()
    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(1.0, stop_at + 120 - time.time()))  # bounded: a request's timeout is 60 s
    counts["seconds"] = time.time() - t0
    for e in errors[:5]:
        print("error:", e)
    return counts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--max-queue", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--model-dir", type=Path, default=None)
    ap.add_argument("--tokenizer", type=Path, default=None)
    ap.add_argument("--disconnect-tokens", type=int, default=2000,
                    help="max_tokens of the generations whose client leaves (default 2000)")
    ap.add_argument("--latency-requests", type=int, default=20,
                    help="streamed replies per latency phase (default 20)")
    args = ap.parse_args()
    from openai import OpenAI

    work = Path(_root.scratch_dir("bench-serve-"))  # removed when the run succeeds
    model_dir, tokenizer = args.model_dir or ROOT / "data/model", args.tokenizer or ROOT / "data/tokenizer/tokenizer.json"
    if not (model_dir / "model.safetensors").exists() or not tokenizer.exists():
        sys.exit(f"no model at {model_dir} or no tokenizer at {tokenizer}: run the pipeline first "
                 "(`dvc repro pretrain`, or bash scripts/demo.sh), or pass --model-dir and --tokenizer")
    port = free_port()
    server = start_server(model_dir, tokenizer, port, args.max_queue, work / "server.log",
                          max_tokens_limit=max(512, args.disconnect_tokens))
    peak = [0]
    sampling = threading.Event()

    def sample_rss() -> None:
        proc = psutil.Process(server.pid)
        while not sampling.is_set():
            try:
                peak[0] = max(peak[0], proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(True)))
            except psutil.Error:
                return
            time.sleep(0.1)

    threading.Thread(target=sample_rss, daemon=True).start()
    result = {"served_ok": 0, "non_429_errors": -1, "peak_rss_mb": 0.0, "tokens_per_s": 0.0, "auth_refused_ok": 0,
              "disconnect_stops_ok": 0}
    base = f"http://127.0.0.1:{port}"
    try:
        client = OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0, timeout=60)
        ok = smoke(client)
        result["auth_refused_ok"] = int(auth_refused(base, client))
        result["disconnect_stops_ok"] = int(disconnect_stops(base, "llmpipe", args.disconnect_tokens))
        control_port = free_port()
        control = start_server(model_dir, tokenizer, control_port, args.max_queue, work / "control.log")
        try:
            result.update(latency_under_big_prompts(client, base, f"http://127.0.0.1:{control_port}",
                                                    args.latency_requests, args.max_tokens))
        finally:
            control.terminate()
            control.wait(30)
        c = load(client, args.clients, args.seconds, args.max_tokens)
        alive = server.poll() is None and httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 200
        print(f"load: {args.clients} clients for {c['seconds']:.1f} s: {c['ok']} ok, {c['429']} refused (429), "
              f"{c['other']} other errors, {c['tokens']} tokens; server healthy after: {alive}", flush=True)
        result.update(served_ok=int(ok and alive and c["ok"] > 0), non_429_errors=c["other"],
                      tokens_per_s=c["tokens"] / c["seconds"])
    finally:
        sampling.set()
        result["peak_rss_mb"] = peak[0] / 2**20
        server.terminate()
        server.wait(30)
    print(f"model {model_dir}")
    # the same model through llama.cpp: its GGUF export's greedy tokens against llmpipe's (bench/gguf.py)
    spec = importlib.util.spec_from_file_location("bench_gguf", Path(__file__).with_name("gguf.py"))
    bench_gguf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_gguf)
    result["gguf_greedy_match"] = bench_gguf.parity(load_model(model_dir), tokenizer)["gguf_greedy_match"]
    failed = [k for k in ("served_ok", "auth_refused_ok", "disconnect_stops_ok", "gguf_greedy_match") if result[k] != 1]
    if failed or result["non_429_errors"]:  # the server's logs stay for a look (bench/_root.py)
        _root.keep_scratch(f"failed: {', '.join(failed + ['non_429_errors'] * bool(result['non_429_errors']))}; "
                           "server.log and control.log are the servers' logs")
    print("RESULT " + " ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
    _root.run_main(main)
