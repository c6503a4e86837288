"""Simulated experts: a domain's own reading of replies, with the mistakes people make.

A domain's `expert.py` says how a person judges a reply against the item's gold answer
(`verdict(reply, item)`: '' when right, else what is wrong) and how they write the answer
they wanted (`corrections(item)`: several wordings). It reads replies its own way, never
with the domain's checker, so it accepts answers a person would accept and the checker may
not, and the benchmark's metric is not the rule the feedback was made with.

`SimulatedExpert` adds what a person does that a rule does not: it is wrong on a share of
its labels (`mistakes`, 10% by default). For a batch of n labels exactly round(n * share) are
wrong, which ones drawn with the expert's seed, so a run is repeatable and the share is
what was asked for. A wrong label inverts the expert's reading of the reply it judges: a 👍
for a wrong reply, a 👎 or a correction for a right one, the other reply of a compare.

With `names_answer`, an honest 👎's reason names the answer in one of the expert's wordings
("the answer is …") instead of saying what is wrong, as some people write their reasons;
the round reads such a reason as a correction (`feedback.reasons`). The wording is drawn
apart from the labels, so the same seed gives the same labels either way.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

DEFAULT_MISTAKES = 0.10
# What a mistaken expert says of a reply that is in fact right.
MISTAKEN_REASONS = ("this looks wrong to me", "not what the customer asked", "wrong answer")


@dataclass(frozen=True)
class Judgement:
    """One label: whether the expert says the reply is right, why not, and whether the
    label is one of the expert's mistakes (the opposite of its honest reading)."""

    right: bool
    reason: str
    mistaken: bool


class SimulatedExpert:
    """A domain's expert (`expert` is its `expert.py` module), wrong on `mistakes` of its
    labels, drawn with `seed`."""

    def __init__(
        self,
        expert: Any,
        *,
        mistakes: float = DEFAULT_MISTAKES,
        seed: int = 0,
        names_answer: bool = False,
    ):
        if not 0.0 <= mistakes <= 1.0:
            raise ValueError(f"the expert's mistake share must be in [0, 1], not {mistakes}")
        self.expert, self.mistakes, self.seed = expert, mistakes, seed
        self.names_answer = names_answer

    def honest(self, reply: str, item: dict[str, Any]) -> str:
        """The expert's own reading: '' when the reply is right, else what is wrong."""
        return str(self.expert.verdict(reply, item))

    def mistaken(self, n: int, batch: int = 0) -> set[int]:
        """Which of a batch of `n` labels are wrong: exactly round(n * mistakes) of them."""
        rng = random.Random(f"{self.seed}:{batch}:mistakes")
        return set(rng.sample(range(n), round(n * self.mistakes)))

    def judge(
        self, replies: list[str], items: list[dict[str, Any]], batch: int = 0
    ) -> list[Judgement]:
        """A label per reply; `batch` numbers the call (a round) so each has its own draw."""
        wrong_labels = self.mistaken(len(replies), batch)
        rng = random.Random(f"{self.seed}:{batch}:reasons")
        wording = random.Random(f"{self.seed}:{batch}:named")
        out = []
        for i, (reply, item) in enumerate(zip(replies, items, strict=True)):
            reading = self.honest(reply, item)
            if i in wrong_labels:
                reason = "" if reading else rng.choice(MISTAKEN_REASONS)
                out.append(Judgement(right=bool(reading), reason=reason, mistaken=True))
            else:
                if reading and self.names_answer:
                    reading = f"the answer is {wording.choice(self.expert.corrections(item))}"
                out.append(Judgement(right=not reading, reason=reading, mistaken=False))
        return out

    def edit_of(self, reply: str, item: dict[str, Any], rng: random.Random) -> str | None:
        """The answer the expert wanted as an edit of `reply`: one of its wordings that is not
        the reply word for word, or None when every one is. A mistaken 👎 can land on a reply
        that already says the answer as the expert would write it, and then an edit has
        nothing to change (the chat page refuses to save it)."""
        wordings = [str(w) for w in self.expert.corrections(item)]
        fresh = [w for w in wordings if w.strip() != reply.strip()]
        return rng.choice(fresh) if fresh else None
