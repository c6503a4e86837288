"""A tiny chat model and LoRA adapters built locally in about a second, for the fast tests.

The real SmolLM2 has a 49k-token vocabulary whose output layer dominates every step; this
one has a few hundred tokens (byte-level BPE trained on the paragraph below) in a random
2-layer Llama, with the same ChatML chat template and `<|im_end|>` eos as SmolLM2. Its
replies are gibberish, but deterministic under greedy decoding, which is what the tests
compare. Nothing is downloaded.

Fixtures: `tiny_model_dir` (session) and `tiny_adapters` (session: {"v1": dir, "v2": dir});
`add_pairs` fills a store with numbered preference pairs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# SmolLM2's template with a shorter default system prompt.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
VOCAB_SIZE = 320

_TEXT = """\
The assistant answers questions about gardens, kitchens, bicycles and the weather. A good
answer is short, polite and correct. When the user asks how to water tomatoes, say that
tomatoes like deep water twice a week and a little mulch to keep the soil cool. When the
user asks about bread, explain that flour, water, salt and yeast make a simple loaf, and
that the dough should rest until it has doubled in size. A bicycle chain needs a drop of
oil every month; wipe off the extra oil so dust does not stick to it. If the sky is grey
and the wind turns cold, rain is likely before the evening. Please and thank you cost
nothing. The quick brown fox jumps over the lazy dog, and the five boxing wizards jump
quickly. Numbers such as 1, 2, 3, 10, 42 and 2048 appear in questions too. Experts read
every reply, mark what is wrong, and write a better answer; the model learns from them.
What is the capital of France? Paris is the capital of France. How many legs does a spider
have? A spider has eight legs. Which month comes after June? July comes after June.
Hello! Hi there, how can I help you today? I would like a recipe for soup. Chop an onion,
two carrots and a potato, cook them in stock for twenty minutes, then add salt and pepper.
"""


def _train_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    # No byte alphabet beyond the characters of _TEXT: every token decodes to plain ASCII
    # (a random model emitting stray UTF-8 bytes would print replacement characters), and
    # anything else in a prompt becomes <|endoftext|>, which is fine for plumbing tests.
    tok = Tokenizer(models.BPE(unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
    )
    tok.train_from_iterator(_TEXT.splitlines(), trainer)
    return tok


def build_tiny_model(dest: Path) -> Path:
    """Save a tokenizer and a random tiny LlamaForCausalLM (fixed seed) to `dest`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    dest = Path(dest)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_train_tokenizer(),
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        initializer_range=0.2,  # larger than usual so that greedy replies vary, not repeat
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest


def build_tiny_adapter(model_dir: Path, dest: Path, *, seed: int) -> Path:
    """Save a LoRA adapter (r=4, all linear layers) with random non-zero weights to `dest`.

    `init_lora_weights=False` makes B non-zero, so the adapter changes greedy output at
    once, the way a trained adapter would; different seeds give different adapters.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    dest = Path(dest)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = get_peft_model(base, config)
    model.save_pretrained(str(dest))
    return dest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model, built once per test session."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_adapters(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Two different adapters for the tiny model: {"v1": dir, "v2": dir} (seeds 1 and 2)."""
    root = tmp_path_factory.mktemp("tiny-adapters")
    return {f"v{s}": build_tiny_adapter(tiny_model_dir, root / f"v{s}", seed=s) for s in (1, 2)}


def add_pairs(
    store: Any,
    n: int,
    *,
    prompt: str = "question {i}",
    chosen: str = "good answer {i}",
    rejected: str = "bad answer {i}",
    start: int = 0,
) -> None:
    """Add `n` one-turn preference pairs to `store`; `{i}` in each text is the pair's number."""
    from feedback.records import NewPreference

    store.add_bulk(
        preferences=[
            NewPreference(
                prompt=[{"role": "user", "content": prompt.format(i=i)}],
                chosen=chosen.format(i=i),
                rejected=rejected.format(i=i),
            )
            for i in range(start, start + n)
        ]
    )


def tiny_registry(
    monkeypatch: pytest.MonkeyPatch,
    home: Path,
    model_dir: Path,
    adapters: dict[str, Path],
    *,
    max_new_tokens: int,
) -> Any:
    """Serve the tiny model (TUNELOOP_MODEL) with `adapters` registered under `home`."""
    from training.registry import Registry

    monkeypatch.setenv("TUNELOOP_MODEL", str(model_dir))
    monkeypatch.setenv("TUNELOOP_GENERATE_MAX_NEW_TOKENS", str(max_new_tokens))
    registry = Registry(home / "adapters")
    for version, path in adapters.items():
        registry.register(version, path)
    return registry


DIFFERS_SCORER = '''
def differs(rows, replies):
    """1 for a reply that is not the bare base model's own (the row's reference)."""
    ok = [reply.strip() != row["reference"].strip() for row, reply in zip(rows, replies)]
    return {"differs": sum(ok) / len(ok)}
'''


def differs_gate(
    model_dir: Path,
    folder: Path,
    system_prompt: str,
    *,
    rows: int = 10,
    max_new_tokens: int = 6,
    margins: str = "",
    min_items: int = 8,
) -> Any:
    """A gate whose objective any trained adapter of the tiny model meets, for tests of a
    round's mechanics (promotion, registry, rollback) rather than of the gate: an eval set
    of `rows` prompts whose rows pass when the reply is not the bare base's own greedy
    reply. Serving the bare base scores 0 on it; an adapter that changed the replies, 1."""
    from training.eval.generate import generate_replies, load_for_generation
    from training.eval.prompt_files import row_conversation
    from training.gate import GateConfig, parse_margins

    folder.mkdir(parents=True, exist_ok=True)
    questions = [f"Which month comes after June, case {i}?" for i in range(rows)]
    model, tok = load_for_generation(model_dir, bf16=False)
    own = generate_replies(
        model,
        tok,
        [row_conversation({"prompt": q}, system_prompt) for q in questions],
        max_new_tokens=max_new_tokens,
    )
    evalset = folder / "differs_set.jsonl"
    evalset.write_text(
        "".join(
            json.dumps({"prompt": q, "reference": r}) + "\n"
            for q, r in zip(questions, own, strict=True)
        ),
        encoding="utf-8",
    )
    scorer = folder / "differs_scorer.py"
    scorer.write_text(DIFFERS_SCORER, encoding="utf-8")
    return GateConfig(
        margins=parse_margins(margins),
        eval_sets=(evalset,),
        eval_scorer=f"{scorer}:differs",
        eval_max_new_tokens=max_new_tokens,
        bf16=False,
        evals_dir=folder / "evals",
        min_items=min_items,
    )
