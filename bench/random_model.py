"""A randomly initialised chat model of a real model's shape, for GPU benchmarks where the
real weights cannot travel (the device machine downloads nothing).

The tokenizer is the tests' small ChatML one (tests/tiny.py); the model keeps the real
vocabulary width, so the embedding and output layers cost what they cost in the real
model. Speed and memory depend on the shape, not on the values of the weights.

    python -m bench.random_model DEST [--shape smollm2-360m|smollm2-1.7b|llama-3.1-8b]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

# Published configs (hidden, intermediate, layers, heads, kv heads, vocab, tied embeddings).
SHAPES: dict[str, dict] = {
    "smollm2-360m": dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32,
                         num_attention_heads=15, num_key_value_heads=5, vocab_size=49152,
                         tie_word_embeddings=True),
    "smollm2-1.7b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
                         num_attention_heads=32, num_key_value_heads=32, vocab_size=49152,
                         tie_word_embeddings=True),
    "llama-3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                         tie_word_embeddings=False),
}  # fmt: skip


def build(dest: Path, shape: str) -> Path:
    """Save a random bf16 LlamaForCausalLM of `shape` and the tests' tokenizer to `dest`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from tests.tiny import CHAT_TEMPLATE, _train_tokenizer

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_train_tokenizer(),
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(
        **SHAPES[shape],
        max_position_embeddings=8192,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model: Any = LlamaForCausalLM(config)
    model = model.to(torch.bfloat16)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dest", type=Path)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="smollm2-360m")
    args = parser.parse_args()
    print(build(args.dest, args.shape))


if __name__ == "__main__":
    main()
