"""Serving benchmark: the running chat app against a bare `model.generate` loop.

Both sides use the same model directory, prompts (system prompt + one user message, through
the same chat template), greedy decoding and token budget, measured in one run because these
machines are noisy. Prints time to first token and tokens per second (medians) as ratios,
then runs N concurrent chat sessions for a while and prints errors and p50/p95 TTFT.

    .venv/bin/python -m bench.serve                      # embedded SmolLM2
    .venv/bin/python -m bench.serve --model PATH --requests 5 --concurrent 8 --seconds 120
    .venv/bin/python -m bench.serve --fine-polling       # without gradio_client's 50 ms ticks
    .venv/bin/python -m bench.serve --api only --seconds 120   # the OpenAI API section alone

The API section streams through the official `openai` client: single-stream tokens/s
against the same bare loop, then N concurrent streaming clients for `--seconds` on the
batched engine and again on the one-generate-loop-per-reply engine (TUNELOOP_MAX_BATCH=0).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import ssl
import statistics
import tempfile
import threading
import time
from pathlib import Path

from bench.record import write_result

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

PROMPTS = [
    "My router lights are red. What should I do?",
    "I was charged twice this month. Can I get a refund?",
    "We are moving house in three weeks. Can you move our line?",
    "How do I cancel my contract?",
    "My speed is much lower than my plan. What now?",
    "Is there an outage in my area today?",
]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


class BareLoop:
    """`model.generate` with a streamer, one request at a time: the baseline."""

    def __init__(self, model_dir: Path, system: str, max_new: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.system, self.max_new = system, max_new

    def request(self, prompt: str) -> dict:
        import torch
        from transformers import TextIteratorStreamer

        messages = [{"role": "system", "content": self.system}] if self.system else []
        messages.append({"role": "user", "content": prompt})
        ids = self.tok.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        streamer = TextIteratorStreamer(self.tok, skip_prompt=True, skip_special_tokens=True)
        result: dict = {}

        def run() -> None:
            with torch.inference_mode():
                result["out"] = self.model.generate(
                    **ids, max_new_tokens=self.max_new, do_sample=False, streamer=streamer
                )

        start = time.perf_counter()
        thread = threading.Thread(target=run)
        thread.start()
        ttft = None
        for piece in streamer:
            if ttft is None and piece.strip():
                ttft = time.perf_counter() - start
        thread.join()
        total = time.perf_counter() - start
        new = int(result["out"].shape[1] - ids["input_ids"].shape[1])
        return {"ttft": ttft or total, "total": total, "tokens": new}


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` and its threads so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stored_new_tokens(home: Path) -> int:
    """Tokens the server generated for its newest reply, as it recorded them (eos included).

    The server's own count, as the bare loop counts `generate`'s output, rather than the
    streamed text re-tokenized: that text is HTML-escaped for display, and a reply's tokens
    need not re-tokenize to the same count.
    """
    with sqlite3.connect(f"file:{home / 'tuneloop.db'}?mode=ro", uri=True) as db:
        row = db.execute("SELECT new_tokens FROM responses ORDER BY id DESC LIMIT 1").fetchone()
    return int(row[0])


_SSL = ssl.create_default_context()  # one for every gradio_client call (see bench_client)


def bench_client(url: str):
    """A gradio_client logged in as the bench user, light on the CPU it shares with the app.

    gradio_client opens a fresh httpx client for every call, and each one loads the CA
    bundle into a new SSL context (~20 ms of CPU) even for plain http. On a 2-core machine
    that CPU is taken from the server being measured, right at the start of each reply. One
    context, built once, is passed instead: the same verification, none of the reloading.
    """
    from gradio_client import Client

    return Client(url, auth=("bench", "bench-pw"), verbose=False, ssl_verify=_SSL)


def finer_client_polling(interval: float = 0.005) -> None:
    """Have gradio_client pass on streamed messages within `interval` instead of 50 ms.

    gradio_client's reader thread takes each server-sent event as it arrives, but the thread
    that turns events into job outputs sleeps 50 ms whenever it finds none waiting, so every
    time read off a job is rounded up to the next 50 ms tick after the submit (app TTFTs come
    out as 208, 258 or 308 ms, nothing between). A browser's EventSource has no such tick.
    This caps the sleeps in gradio_client.utils (that thread's and its cancel watcher's) at
    `interval`. It costs the client more CPU, which a shared 2-core machine takes from the
    app, so the correction errs against the app. Only with `--fine-polling`: by default the
    bench measures through gradio_client exactly as it ships.
    """
    import gradio_client.utils as gc_utils

    class _Time:
        def __getattr__(self, name: str):
            return getattr(time, name)

        @staticmethod
        def sleep(seconds: float) -> None:
            time.sleep(min(seconds, interval))

    gc_utils.time = _Time()


def app_request(client, tok, prompt: str) -> dict:
    """One chat turn in a fresh conversation through the app, streaming."""
    client.predict(api_name="/new_chat")
    start = time.perf_counter()
    job = client.submit(prompt, api_name="/chat")
    ttft = None
    # Poll every 5 ms rather than iterate the job: the client's own iterator spins on a 1 ms
    # sleep and would take CPU from the server it is measuring on a 2-core machine.
    while True:
        done = job.done()
        outputs = job.outputs()
        if ttft is None and outputs:
            chat = outputs[-1][0] if isinstance(outputs[-1], (list, tuple)) else None
            if chat and chat[-1].get("role") == "assistant" and chat[-1]["content"]:
                ttft = time.perf_counter() - start
        if done:
            break
        time.sleep(0.005)
    total = time.perf_counter() - start
    content = job.outputs()[-1][0][-1]["content"]  # Gradio 6: a list of parts
    parts = content if isinstance(content, list) else [content]
    final = "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in parts)
    tokens = len(tok(final, add_special_tokens=False)["input_ids"]) + 1  # + the eos/stop token
    return {"ttft": ttft or total, "total": total, "tokens": tokens}


def api_request(client, prompt: str, max_new: int) -> dict:
    """One streamed completion through the OpenAI-compatible API (the official client)."""
    start = time.perf_counter()
    stream = client.chat.completions.create(
        model="tuneloop",
        messages=[{"role": "user", "content": prompt}],
        temperature=0,
        max_tokens=max_new,
        stream=True,
        stream_options={"include_usage": True},
    )
    ttft, tokens = None, 0
    for chunk in stream:
        if ttft is None and chunk.choices and chunk.choices[0].delta.content:
            ttft = time.perf_counter() - start
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    total = time.perf_counter() - start
    return {"ttft": ttft or total, "total": total, "tokens": tokens}


def api_concurrent(url: str, key: str, n: int, seconds: float, max_new: int) -> dict:
    """`n` clients streaming completions back to back for `seconds`: aggregate tokens/s,
    TTFT percentiles, errors. A reply still streaming at the end counts in full."""
    from openai import OpenAI

    results: list[dict] = []
    errors: list[str] = []
    lock = threading.Lock()
    begin = time.monotonic()
    stop_at = begin + seconds

    def client_loop(i: int) -> None:
        client = OpenAI(base_url=url + "v1", api_key=key, max_retries=0, timeout=600)
        k = i
        while time.monotonic() < stop_at:
            try:
                r = api_request(client, PROMPTS[k % len(PROMPTS)], max_new)
                with lock:
                    results.append(r)
            except Exception as err:
                with lock:
                    errors.append(repr(err))
            k += 1

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - begin
    ttfts = [r["ttft"] for r in results]
    return {
        "clients": n,
        "seconds": elapsed,
        "replies": len(results),
        "errors": len(errors),
        "tokens_per_s": sum(r["tokens"] for r in results) / elapsed,
        "ttft_p50_ms": pct(ttfts, 0.5) * 1e3 if ttfts else None,
        "ttft_p95_ms": pct(ttfts, 0.95) * 1e3 if ttfts else None,
        "first_errors": errors[:3],
    }


def api_bench(args: argparse.Namespace, model_dir: Path, loop: BareLoop, prompts: list) -> dict:
    """The API: single-stream tok/s vs the bare loop; N concurrent streaming clients on the
    batched engine and on the one-generate-loop-per-reply engine (TUNELOOP_MAX_BATCH=0)."""
    from openai import OpenAI

    from tests.server import add_user, issue_key, serve

    out: dict = {}
    for engine, max_batch in (("batched", str(args.max_batch)), ("one_at_a_time", "0")):
        home = Path(tempfile.mkdtemp(prefix=f"tuneloop-bench-api-{engine}-"))
        add_user(home, "bench", "expert", "bench-pw")
        key = issue_key(home, "bench")
        env = {
            "TUNELOOP_TEMPERATURE": "0",
            "TUNELOOP_MAX_NEW_TOKENS": str(args.max_new_tokens),
            "TUNELOOP_MAX_BATCH": max_batch,
            "TUNELOOP_API_MAX_ACTIVE": str(max(16, args.concurrent)),
        }
        with serve(home, model=str(model_dir), **env) as (url, _):
            client = OpenAI(base_url=url + "v1", api_key=key, max_retries=0, timeout=600)
            api_request(client, "warm-up", args.max_new_tokens)
            side: dict = {}
            if engine == "batched":
                bare, single = [], []
                for p in prompts:  # interleaved, as above
                    bare.append(loop.request(p))
                    single.append(api_request(client, p, args.max_new_tokens))
                tps = [r["tokens"] / r["total"] for r in single]
                side["single_stream"] = {
                    "tokens_per_s": statistics.median(tps),
                    "ttft_ms": statistics.median(r["ttft"] for r in single) * 1e3,
                    "bare_tokens_per_s": statistics.median(r["tokens"] / r["total"] for r in bare),
                }
            side["concurrent"] = api_concurrent(
                url, key, args.concurrent, args.seconds, args.max_new_tokens
            )
            out[engine] = side
    single = out["batched"]["single_stream"]
    out["ratios"] = {
        "api_single_vs_bare": single["tokens_per_s"] / single["bare_tokens_per_s"],
        "batched_aggregate_vs_single": out["batched"]["concurrent"]["tokens_per_s"]
        / single["tokens_per_s"],
        "batched_vs_one_at_a_time_aggregate": out["batched"]["concurrent"]["tokens_per_s"]
        / max(1e-9, out["one_at_a_time"]["concurrent"]["tokens_per_s"]),
    }
    return out


def print_api(report: dict) -> None:
    s, r = report["batched"]["single_stream"], report["ratios"]
    print(
        f"API single stream: {s['tokens_per_s']:.1f} tok/s vs bare {s['bare_tokens_per_s']:.1f} "
        f"= {r['api_single_vs_bare']:.2f}x (goal >= 0.90); TTFT {s['ttft_ms']:.0f} ms"
    )
    for engine in ("batched", "one_at_a_time"):
        c = report[engine]["concurrent"]
        print(
            f"API {c['clients']} streaming clients, {engine}, {c['seconds']:.0f} s: "
            f"{c['tokens_per_s']:.1f} tok/s aggregate, {c['replies']} replies, "
            f"{c['errors']} errors, TTFT p50 {c['ttft_p50_ms'] or 0:.0f} ms, "
            f"p95 {c['ttft_p95_ms'] or 0:.0f} ms"
        )
    print(
        f"batched aggregate = {r['batched_aggregate_vs_single']:.2f}x single stream (goal >= 2.5), "
        f"{r['batched_vs_one_at_a_time_aggregate']:.2f}x the one-at-a-time engine; "
        "goals also: p95 TTFT <= 1000 ms, 0 errors"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="local HF model dir (default: embedded)")
    parser.add_argument("--requests", type=int, default=12, help="sequential requests per side")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--concurrent", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument(
        "--fine-polling",
        action="store_true",
        help="cap gradio_client's 50 ms message polling at 5 ms (see finer_client_polling)",
    )
    parser.add_argument(
        "--api",
        choices=["also", "only", "no"],
        default="also",
        help="the OpenAI-compatible API section: after the app's (also), alone (only), or not",
    )
    parser.add_argument("--max-batch", type=int, default=8, help="TUNELOOP_MAX_BATCH for the API")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from app.config import Settings
    from app.serving.modelfiles import resolve_model_dir
    from tests.server import add_user, serve

    if args.fine_polling:
        finer_client_polling()
    settings = Settings()
    home = Path(tempfile.mkdtemp(prefix="tuneloop-bench-"))
    # share the converted embedded model with the normal home so it is converted once
    model_dir = resolve_model_dir(args.model, settings.models_dir, progress=True)
    system = settings.system_prompt()
    prompts = (PROMPTS * ((args.requests // len(PROMPTS)) + 1))[: args.requests]
    tok = AutoTokenizer.from_pretrained(model_dir)

    loop = BareLoop(model_dir, system, args.max_new_tokens)
    if args.api == "only":
        loop.request("warm-up")
        api_report = api_bench(args, model_dir, loop, prompts)
        write_result("bench.serve", api_report, settings=vars(args), name="serve-api")
        if args.json:
            print(json.dumps(api_report, indent=2))
        else:
            print_api(api_report)
        return
    add_user(home, "bench", "expert", "bench-pw")
    env = {"TUNELOOP_TEMPERATURE": "0", "TUNELOOP_MAX_NEW_TOKENS": str(args.max_new_tokens)}
    with serve(home, model=str(model_dir), **env) as (url, server):
        client = bench_client(url)
        loop.request("warm-up")
        app_request(client, tok, "warm-up")
        # Interleaved, one side at a time, so background load on a noisy machine hits both alike.
        # CPU seconds per generated token too: wall time on a loaded machine swings with the
        # neighbours, the CPU work each side does per token much less.
        bare, via_app = [], []
        retokenized: list[float] = []  # streamed text re-tokenized / tokens generated
        bare_cpu = app_cpu = 0.0
        for p in prompts:
            t0 = time.process_time()
            bare.append(loop.request(p))
            bare_cpu += time.process_time() - t0
            c0 = proc_cpu_seconds(server.pid)
            via_app.append(app_request(client, tok, p))
            app_cpu += proc_cpu_seconds(server.pid) - c0
            estimated = via_app[-1]["tokens"]
            via_app[-1]["tokens"] = stored_new_tokens(home)
            retokenized.append(estimated / via_app[-1]["tokens"])

        # N concurrent sessions for a fixed time
        ttfts: list[float] = []
        errors: list[str] = []
        lock = threading.Lock()
        stop_at = time.monotonic() + args.seconds

        def session(i: int) -> None:
            try:
                c = bench_client(url)
            except Exception as err:  # count a failed login as an error
                with lock:
                    errors.append(repr(err))
                return
            n = i
            while time.monotonic() < stop_at:
                try:
                    r = app_request(c, tok, PROMPTS[n % len(PROMPTS)])
                    with lock:
                        ttfts.append(r["ttft"])
                except Exception as err:
                    with lock:
                        errors.append(repr(err))
                n += 1

        threads = [threading.Thread(target=session, args=(i,)) for i in range(args.concurrent)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def med(rs: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in rs)

    def tps(rs: list[dict]) -> float:
        return statistics.median(r["tokens"] / r["total"] for r in rs)

    report = {
        "model": str(model_dir),
        "client_polling": "5 ms" if args.fine_polling else "gradio_client's own (50 ms)",
        "requests": args.requests,
        "max_new_tokens": args.max_new_tokens,
        "bare": {
            "ttft_ms": med(bare, "ttft") * 1e3,
            "tokens_per_s": tps(bare),
            "cpu_ms_per_token": 1e3 * bare_cpu / sum(r["tokens"] for r in bare),
        },
        "app": {
            "ttft_ms": med(via_app, "ttft") * 1e3,
            "tokens_per_s": tps(via_app),
            "cpu_ms_per_token": 1e3 * app_cpu / sum(r["tokens"] for r in via_app),
            "retokenized_vs_generated": statistics.median(retokenized),
        },
        "concurrent": {
            "sessions": args.concurrent,
            "seconds": args.seconds,
            "requests": len(ttfts),
            "errors": len(errors),
            "ttft_p50_ms": pct(ttfts, 0.5) * 1e3 if ttfts else None,
            "ttft_p95_ms": pct(ttfts, 0.95) * 1e3 if ttfts else None,
            "first_errors": errors[:3],
        },
    }
    report["ratios"] = {
        "app_tokens_per_s_vs_bare": report["app"]["tokens_per_s"] / report["bare"]["tokens_per_s"],
        "app_ttft_minus_bare_ms": report["app"]["ttft_ms"] - report["bare"]["ttft_ms"],
        "app_cpu_per_token_vs_bare": report["app"]["cpu_ms_per_token"]
        / report["bare"]["cpu_ms_per_token"],
    }
    if args.api == "also":
        report["api"] = api_bench(args, model_dir, loop, prompts)
    write_result("bench.serve", report, settings=vars(args))
    if args.json:
        print(json.dumps(report, indent=2))
        return
    b, a, c, r = report["bare"], report["app"], report["concurrent"], report["ratios"]
    print(
        f"model: {model_dir}  ({args.requests} prompts, {args.max_new_tokens} new tokens, greedy; "
        f"client polling: {report['client_polling']})"
    )
    for name, side in (("bare loop", b), ("via app  ", a)):
        print(
            f"{name} : TTFT {side['ttft_ms']:7.0f} ms   {side['tokens_per_s']:6.1f} tok/s   "
            f"{side['cpu_ms_per_token']:6.1f} CPU-ms/token"
        )
    print(
        f"ratio     : app tok/s = {r['app_tokens_per_s_vs_bare']:.2f}x bare (goal >= 0.90); "
        f"app TTFT = bare + {r['app_ttft_minus_bare_ms']:.0f} ms (goal <= 150); "
        f"app CPU/token = {r['app_cpu_per_token_vs_bare']:.2f}x bare"
    )
    print(
        "app tokens are the server's own count; the streamed text re-tokenized gives "
        f"{a['retokenized_vs_generated']:.2f}x as many (median)"
    )
    print(
        f"{c['sessions']} concurrent sessions, {c['seconds']:.0f} s: {c['requests']} replies, "
        f"{c['errors']} errors, TTFT p50 {c['ttft_p50_ms'] or 0:.0f} ms, "
        f"p95 {c['ttft_p95_ms'] or 0:.0f} ms"
    )
    if "api" in report:
        print_api(report["api"])


if __name__ == "__main__":
    main()
