"""Training throughput: our round's SFT + DPO stages against a plain TRL script, one run.

Both sides train the same LoRA (r=16, all linear layers) on the same model and the same
rows (the demo domain: system prompt, seed examples, preference pairs made from them) for
one epoch of each stage. The baseline is what a plain script gets with TRL's defaults:
`SFTConfig` / `DPOConfig` as they come (batch 8, gradient checkpointing on, reference
log-probs recomputed every DPO step). Ours is `training.stages` with the settings' defaults
(batch 2 on a CPU, 8 on a GPU; no gradient checkpointing, reference log-probs computed
once, loss on assistant tokens). Each variant runs in its own subprocess so its peak memory
is its own (peak RSS on CPU, `torch.cuda.max_memory_allocated` on a GPU).

Tokens/s counts the tokens of every row a stage trains on (DPO: prompt + chosen and
prompt + rejected), divided by that stage's wall time including DPO's reference pass.

    .venv/bin/python -m bench.train_throughput                 # embedded SmolLM2, CPU
    .venv/bin/python -m bench.train_throughput --rows 16 --model PATH
    .venv/bin/python -m bench.train_throughput --processes 2   # + ours on 2 ranks (torchrun)
    .venv/bin/python -m bench.train_throughput --long-rows --unshared --ours-only
                                                   # + ours running every row whole
    .venv/bin/python -m bench.train_throughput --qlora-8b      # GPU: QLoRA step, Llama-3.1-8B shape

`--processes N` adds a third variant: our stages on N processes started by torchrun (gloo
on a CPU, one GPU each on CUDA), the same rows and settings; each rank trains 1/N of every
epoch. Its time is rank 0's, its peak memory rank 0's alone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.record import write_result

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

REPO = Path(__file__).resolve().parent.parent
NAMES = ["Dana", "Omar", "Priya", "Lena", "Marco", "Aiko", "Sven", "Fatima", "Jonas", "Rosa"]


def long_system_prompt() -> str:
    """A deployment-sized system prompt (~270 tokens): the demo's, plus its policy list."""
    system = (REPO / "data" / "system_prompt.md").read_text(encoding="utf-8").strip()
    policies = (REPO / "data" / "policies.md").read_text(encoding="utf-8")
    lines = [x for x in policies.splitlines() if x.startswith("- POL-")]
    return (
        system
        + "\n\nPolicies you may cite:\n"
        + "\n".join(lines)
        + ("\n\nIf no policy applies, say so and offer to open a ticket.")
    )


def demo_rows(n: int, *, long_rows: bool = False) -> tuple[list[dict], list[dict]]:
    """`n` SFT rows and `n` DPO pairs in the demo domain, with its system prompt. With
    `long_rows`, rows like a real deployment's (~370 tokens): a ~270-token system prompt,
    a ticket with its account details, and the short reply."""
    system = (REPO / "data" / "system_prompt.md").read_text(encoding="utf-8").strip()
    if long_rows:
        system = long_system_prompt()
    seeds = [
        json.loads(line)
        for line in (REPO / "data" / "seed_sft.jsonl").read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    sft, dpo = [], []
    for i in range(n):
        seed = seeds[i % len(seeds)]["messages"]
        name = NAMES[i % len(NAMES)]
        user = f"This is {name}. " + seed[0]["content"]
        if long_rows:
            user = (
                f"Ticket #{4100 + i} from {name} (account {52000 + 17 * i}, plan Fibre "
                f"{100 * (1 + i % 5)}, customer since {2015 + i % 9}). Channel: web chat.\n"
                f"Message: {seed[0]['content']} Please tell me what happens next."
            )
        good = seed[-1]["content"]
        prompt = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        sft.append({"messages": [*prompt, {"role": "assistant", "content": good}]})
        dpo.append(
            {
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": good}],
                "rejected": [{"role": "assistant", "content": "Please call our hotline."}],
            }
        )
    return sft, dpo


def count_tokens(model_dir: Path, sft: list[dict], dpo: list[dict]) -> tuple[int, int]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)

    def n(messages: list[dict]) -> int:
        out: Any = tok.apply_chat_template(messages, tokenize=True, return_dict=True)
        return len(out["input_ids"])

    sft_tokens = sum(n(r["messages"]) for r in sft)
    dpo_tokens = sum(n(r["prompt"] + r["chosen"]) + n(r["prompt"] + r["rejected"]) for r in dpo)
    return sft_tokens, dpo_tokens


def _peak_memory() -> float:
    """Peak memory of this process in GiB (GPU allocations on CUDA, RSS on CPU)."""
    import resource

    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_variant(
    variant: str,
    model_dir: Path,
    rows: int,
    batch: int,
    out: Path,
    *,
    long_rows: bool = False,
    sft_only: bool = False,
) -> dict:
    """Train SFT then DPO one epoch each; return seconds per stage and peak memory."""
    # Both sides import the training libraries before their clocks start (a plain script
    # imports them at the top; our stages import them lazily, on first use).
    import dataclasses

    import datasets  # noqa: F401
    import peft  # noqa: F401
    import trl  # noqa: F401

    from app.config import Settings
    from training.round_config import RoundConfig
    from training.stages import train_dpo, train_sft

    sft, dpo = demo_rows(rows, long_rows=long_rows)
    if sft_only:
        dpo = []
    # the settings' round (TUNELOOP_GRADIENT_CHECKPOINTING, _PADDING_FREE, _QLORA... apply),
    # one epoch of each stage, no checkpoints on the clock
    config = dataclasses.replace(
        RoundConfig.from_settings(Settings(), sft_steps=0, dpo_steps=0, max_steps=0),
        batch_size=batch, sft_epochs=1, dpo_epochs=1, save_steps=10_000, tracker="none",
    )  # fmt: skip
    timings: dict = {}
    if variant == "ours":
        t = time.perf_counter()
        adapter = train_sft(model_dir, sft, out / "sft", config, lambda *a: None)
        timings["sft_s"] = time.perf_counter() - t
        t = time.perf_counter()
        if dpo:
            train_dpo(model_dir, dpo, adapter, out / "dpo", config, lambda *a: None)
        timings["dpo_s"] = time.perf_counter() - t
    else:
        timings = _plain_trl(model_dir, sft, dpo, batch, out)
    timings["peak_gib"] = _peak_memory()
    from training.device import ranks

    timings["processes"] = ranks.world_size()
    return timings


def _plain_trl(model_dir: Path, sft: list[dict], dpo: list[dict], batch: int, out: Path) -> dict:
    """A plain TRL SFT + DPO script with library defaults (what the docs show)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda else torch.float32
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear")
    tok = AutoTokenizer.from_pretrained(model_dir)
    # Library defaults, but for what a script must say (output, one epoch, no hub/trackers);
    # batch 0 keeps TRL's default batch size (8).
    common: dict[str, Any] = {"num_train_epochs": 1, "report_to": []}
    if batch:
        common["per_device_train_batch_size"] = batch
    common.update(save_strategy="no", disable_tqdm=True, bf16=cuda, use_cpu=not cuda)
    t = time.perf_counter()
    sft_trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype),
        args=SFTConfig(output_dir=str(out / "sft"), **common),
        train_dataset=Dataset.from_list(sft),
        processing_class=tok,
        peft_config=lora,
    )
    sft_trainer.train()
    trained: Any = sft_trainer.model
    trained.save_pretrained(str(out / "sft-adapter"))
    sft_s = time.perf_counter() - t
    if not dpo:
        return {"sft_s": sft_s, "dpo_s": 0.0}
    t = time.perf_counter()
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    dpo_trainer = DPOTrainer(
        model=PeftModel.from_pretrained(base, str(out / "sft-adapter"), is_trainable=True),
        args=DPOConfig(output_dir=str(out / "dpo"), **common),
        train_dataset=Dataset.from_list(dpo),
        processing_class=tok,
    )
    dpo_trainer.train()
    return {"sft_s": sft_s, "dpo_s": time.perf_counter() - t}


def qlora_8b_step(seq_len: int) -> dict:
    """Peak GPU memory and time of QLoRA steps on a random model of Llama-3.1-8B's shape."""
    import torch
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig

    from training.lora import lora_config

    config = LlamaConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
        tie_word_embeddings=False,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        # Random bf16 weights saved once, then loaded 4-bit the way a real checkpoint is.
        with torch.device("cuda"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.save_pretrained(tmp)
        del model
        torch.cuda.empty_cache()
        quant = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True,
        )
        model = AutoModelForCausalLM.from_pretrained(
            tmp, quantization_config=quant, dtype=torch.bfloat16, device_map={"": 0}
        )
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    model = get_peft_model(model, lora_config(r=16, alpha=32, dropout=0.05))
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, config.vocab_size, (1, seq_len), device="cuda")
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(3):
        t = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optim.step()
        optim.zero_grad()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return {
        "seq_len": seq_len,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
        "step_s": min(times),
        "tokens_per_s": seq_len / min(times),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="A local HF model dir (default: the embedded SmolLM2).")
    parser.add_argument("--rows", type=int, default=16, help="SFT rows and DPO pairs.")
    parser.add_argument(
        "--batch", type=int, default=0, help="Our round's batch size (0: the settings' default)."
    )
    parser.add_argument(
        "--plain-batch", type=int, default=0, help="The plain script's (0: TRL's default, 8)."
    )
    parser.add_argument("--variant", choices=("ours", "plain"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--qlora-8b", action="store_true", help="GPU: QLoRA 8B-shape step only.")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument(
        "--processes", type=int, default=1, help="Also run ours on N processes (torchrun)."
    )
    parser.add_argument(
        "--ours-only", action="store_true", help="Skip the plain TRL script (setting checks)."
    )
    parser.add_argument(
        "--long-rows", action="store_true", help="~370-token rows (a ~270-token system prompt)."
    )
    parser.add_argument("--sft-only", action="store_true", help="Time the SFT stage alone.")
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="Also ours at batch 4 and with gradient checkpointing (padding-free is left out: "
        "TRL keeps rows apart in a padding-free batch only with flash-attention kernels).",
    )
    parser.add_argument(
        "--unshared",
        action="store_true",
        help="Also ours with TUNELOOP_SHARE_PREFIX=false: every row run whole, as before.",
    )
    args = parser.parse_args()

    if args.qlora_8b:
        step = qlora_8b_step(args.seq_len)
        print(json.dumps(step))
        write_result("bench.train_throughput", step, settings=vars(args), name="qlora_8b_step")
        return
    if args.model:
        model_dir = Path(args.model)
    else:
        from app.config import Settings
        from app.serving.modelfiles import resolve_model_dir

        model_dir = resolve_model_dir(None, Settings().models_dir, progress=False)
    if args.variant:  # a child process: one variant, one JSON line
        batch = args.batch if args.variant == "ours" else args.plain_batch
        result = run_variant(
            args.variant, model_dir, args.rows, batch, Path(args.out),
            long_rows=args.long_rows, sft_only=args.sft_only,
        )  # fmt: skip
        from training.device import ranks

        if ranks.is_main():
            print("RESULT " + json.dumps(result))
        return

    from training.device.machine import default_train_batch_size

    args.batch = args.batch or default_train_batch_size()
    sft, dpo = demo_rows(args.rows, long_rows=args.long_rows)
    if args.sft_only:
        dpo = []
    sft_tokens, dpo_tokens = count_tokens(model_dir, sft, dpo)
    results = {}
    torchrun = str(Path(sys.executable).parent / "torchrun")
    one = [sys.executable]
    # name: (launcher, variant, our batch size, settings the child reads from its environment)
    launch: dict[str, tuple[list[str], str, int, dict[str, str]]] = {
        "plain": (one, "plain", args.batch, {}),
        "ours": (one, "ours", args.batch, {}),
    }
    if args.ours_only:
        del launch["plain"]
    if args.sweep:
        launch["ours b4"] = (one, "ours", 4, {})
        launch["ours gc"] = (one, "ours", args.batch, {"TUNELOOP_GRADIENT_CHECKPOINTING": "true"})
    if args.unshared:
        launch["ours unshared"] = (one, "ours", args.batch, {"TUNELOOP_SHARE_PREFIX": "false"})
    if args.processes > 1:
        label = f"ours x{args.processes}"
        launch[label] = (
            [torchrun, "--standalone", "--nproc_per_node", str(args.processes)], "ours",
            args.batch, {},
        )  # fmt: skip
    for name, (launcher, variant, batch, env) in launch.items():
        with tempfile.TemporaryDirectory() as out:
            cmd = [*launcher, "-m", "bench.train_throughput", "--variant", variant]
            cmd += ["--model", str(model_dir), "--rows", str(args.rows)]
            cmd += ["--batch", str(batch), "--plain-batch", str(args.plain_batch)]
            cmd += ["--out", out]
            cmd += ["--long-rows"] * args.long_rows + ["--sft-only"] * args.sft_only
            proc = subprocess.run(
                cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, **env}
            )
            lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode or not lines:
                sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
            results[name] = json.loads(lines[-1][7:])
            print(f"{name}: {json.dumps(results[name])}", flush=True)  # as each finishes
    write_result("bench.train_throughput", {"sft_tokens": sft_tokens, "dpo_tokens": dpo_tokens,
                 "runs": results}, settings=vars(args))  # fmt: skip
    plain_batch = args.plain_batch or "8 (TRL default)"
    print(
        f"model {model_dir.name}, {args.rows} SFT rows + {len(dpo)} pairs, one epoch each; "
        f"batch: ours {args.batch}, plain {plain_batch}"
    )
    print(f"tokens per epoch: SFT {sft_tokens}, DPO {dpo_tokens}")
    for variant, r in results.items():
        total = sft_tokens + dpo_tokens
        print(
            f"{variant:>8}: SFT {sft_tokens / r['sft_s']:.1f} tok/s ({r['sft_s']:.1f} s), "
            f"DPO {dpo_tokens / max(r['dpo_s'], 1e-9):.1f} tok/s ({r['dpo_s']:.1f} s), "
            f"round {total / (r['sft_s'] + r['dpo_s']):.1f} tok/s, peak {r['peak_gib']:.2f} GiB"
        )
    o = results["ours"]
    for name, r in results.items():  # the default against each setting it was run beside
        if name.startswith("ours ") and not name.startswith("ours x"):
            print(
                f"ratio ours/{name[5:]}: SFT {r['sft_s'] / o['sft_s']:.2f}x, "
                f"DPO {r['dpo_s'] / max(o['dpo_s'], 1e-9):.2f}x, "
                f"round {(r['sft_s'] + r['dpo_s']) / (o['sft_s'] + o['dpo_s']):.2f}x tokens/s"
            )
    if args.ours_only:
        return
    p = results["plain"]
    print(
        f"ratio ours/plain: SFT {p['sft_s'] / o['sft_s']:.2f}x, "
        f"DPO {p['dpo_s'] / max(o['dpo_s'], 1e-9):.2f}x, "
        f"round {(p['sft_s'] + p['dpo_s']) / (o['sft_s'] + o['dpo_s']):.2f}x tokens/s; "
        f"peak memory {o['peak_gib'] / p['peak_gib']:.2f}x"
    )
    for name, r in results.items():
        if name.startswith("ours x"):
            speed = (o["sft_s"] + o["dpo_s"]) / (r["sft_s"] + r["dpo_s"])
            print(
                f"{name} / ours on 1 process: round {speed:.2f}x tokens/s; peak memory "
                f"per process {r['peak_gib'] / o['peak_gib']:.2f}x"
            )


if __name__ == "__main__":
    main()
