"""The simulated expert's feedback on a round's replies, through the store's chat-page calls.

Which kind of feedback each prompt gets is drawn with a fixed seed: 60% thumbs (👍 when the
expert reads the reply as right, else 👎 with what was wrong as the reason), 25% corrections
(the gold answer in one of the expert's wordings; a reply that reads right gets a 👍
instead), 15% compares (the reply that reads right wins; a tie when both or neither do).
Labels are the expert's own (`bench/experts.py`), mistakes included.
"""

from __future__ import annotations

import random
from typing import Any

from bench.experts import Judgement, SimulatedExpert
from bench.loop_common import conversation, last_user_turn

MIX = {"thumbs": 0.60, "correction": 0.25, "compare": 0.15}


def feedback_kinds(n: int, seed: int) -> list[str]:
    """Which kind of feedback each of `n` prompts gets, in MIX's shares (fixed by `seed`)."""
    counts = {k: round(n * share) for k, share in MIX.items()}
    counts["thumbs"] += n - sum(counts.values())
    kinds = [k for k, c in counts.items() for _ in range(c)]
    random.Random(seed).shuffle(kinds)
    return kinds


def record_feedback(
    store: Any, user_id: int, items: list[dict], replies: list[str], seconds: dict[int, str],
    system: str, *, expert: SimulatedExpert, judgements: list[Judgement], variant: str,
    adapter: str | None, seed: int, sabotage: bool = False,
) -> dict[str, int]:  # fmt: skip
    """The expert's `judgements` of `replies` (and its reading of the compares' second
    replies, `seconds`), stored as the chat page stores them; the tally by kind.

    With `sabotage`, every label is flipped: 👍 and 👎 swap, a compare goes to the reply
    that reads wrong, and where the honest expert would correct a wrong reply the saboteur
    keeps the model's reply as the winner of a pair whose loser is the gold answer (as a
    bulk import of flipped pairs would store it)."""
    from feedback.records import NewExample, NewPreference

    rng = random.Random(seed)
    kinds = feedback_kinds(len(items), seed) if variant != "kto" else ["thumbs"] * len(items)
    tally = {"thumbs_up": 0, "thumbs_down": 0, "corrections": 0, "compare_picks": 0, "ties": 0,
             "not_stored": 0}  # fmt: skip
    imported, flipped = [], []
    rows = zip(items, replies, kinds, judgements, strict=True)
    for i, (item, reply, kind, judged) in enumerate(rows):
        prompt = conversation(item, system)
        cid = store.start_conversation(user_id=user_id, title=last_user_turn(item)[:60])
        for turn in prompt:
            if turn["role"] == "user":
                store.add_user_message(conversation_id=cid, content=turn["content"])
        common = {"conversation_id": cid, "prompt": prompt, "model": "bench",
                  "adapter_version": adapter, "latency_ms": 0.0}  # fmt: skip
        reply_id = store.add_response(content=reply, params={"temperature": 0.7}, **common)
        wrong = judged.reason
        claims_right = judged.right != sabotage
        if kind == "compare" and variant == "full":
            cand_id = store.add_response(
                content=seconds[i], params={"temperature": 1.0}, kind="candidate", **common
            )
            original_is_a = rng.random() < 0.5
            comparison = store.add_comparison(
                user_id=user_id, original_response_id=reply_id,
                candidate_response_id=cand_id, original_is_a=original_is_a,
            )  # fmt: skip
            ok_a, ok_b = claims_right, (not expert.honest(seconds[i], item)) != sabotage
            choice = "tie" if ok_a == ok_b else ("A" if ok_a == original_is_a else "B")
            store.decide_comparison(comparison_id=comparison, user_id=user_id, choice=choice)
            tally["ties" if choice == "tie" else "compare_picks"] += 1
        elif kind == "correction" and sabotage:  # the mirror of a correction
            if not judged.right and (text := expert.edit_of(reply, item, rng)) is not None:
                flipped.append(NewPreference(prompt=prompt, chosen=reply, rejected=text))
                tally["corrections"] += 1
            else:
                store.rate(response_id=reply_id, user_id=user_id, up=False, reason="wrong")
                tally["thumbs_down"] += 1
        elif claims_right and (kind != "compare" or variant == "kto"):
            store.rate(response_id=reply_id, user_id=user_id, up=True)
            tally["thumbs_up"] += 1
        elif kind == "correction":
            edit = expert.edit_of(reply, item, rng)
            if variant == "sft":  # an SFT row, and no edit pair
                answer = {"role": "assistant", "content": edit or reply}
                imported.append(NewExample(messages=[*prompt, answer]))
                tally["corrections"] += 1
            elif edit is not None:
                store.correct(response_id=reply_id, user_id=user_id, content=edit)
                tally["corrections"] += 1
            else:  # the reply is already the answer, word for word: the mistake becomes a 👎
                store.rate(response_id=reply_id, user_id=user_id, up=False, reason=wrong or "wrong")
                tally["thumbs_down"] += 1
        elif kind == "thumbs" and variant != "sft":
            store.rate(response_id=reply_id, user_id=user_id, up=False, reason=wrong or "wrong")
            tally["thumbs_down"] += 1
        else:  # the SFT-only run keeps no 👎 and no compare
            tally["not_stored"] += 1
    if imported:
        store.add_bulk(examples=imported)
    if flipped:
        store.add_bulk(preferences=flipped)
    return tally
