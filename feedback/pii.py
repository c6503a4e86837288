"""PII scrubbing: the one policy for everything people read or a model learns from.

Applied to a round's training rows (`training.datasets`), to the pairs annotators see in
Argilla (`feedback.argilla.sync`) and, unless `--raw` is given, to `tuneloop export` files
(`feedback.formats`). The store itself keeps the raw text: operators own it.

What is replaced: emails, phone numbers, payment-card numbers, IBANs / account numbers and
person names. Library choice (offline, maintained):
  - phone numbers: `phonenumbers` (Google's libphonenumber metadata, no download);
  - cards and IBANs: `python-stdnum` check digits (Luhn, ISO 13616), so an order number
    is not mistaken for a card;
  - emails and "account no. 12345678": regular expressions.
  - names: no maintained library detects names offline here. Presidio needs a spaCy
    model download, scrubadub's name detectors need NLTK/TextBlob corpora or spaCy models
    (downloads), and neither can be fetched on this network. Names are found where the
    text itself says they are names: self-introductions ("I'm Dana", "my name is ...",
    "this is ...") and greetings ("Hi Dana,"). Each found name is replaced, everywhere in
    the texts scrubbed together (a row, an Argilla record), by a surrogate first name
    chosen by a hash of it: the model still learns to greet the customer by the name they
    gave, never a real customer's name, and an annotator sees the same stand-in in the
    question and in both replies. A name mentioned in no such phrase is not caught; that
    limit is stated in the README.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from typing import Any

Row = dict[str, Any]
# The keys of a TRL row (SFT, DPO, KTO) that hold message lists.
MESSAGE_KEYS = ("messages", "prompt", "chosen", "rejected", "completion")

EMAIL = "[email]"
PHONE = "[phone]"
CARD = "[card]"
ACCOUNT = "[account]"

_EMAIL_RE = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")
_CARD_RE = re.compile(r"\b(?:\d[ -]?){12,18}\d\b")
_IBAN_RE = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
_ACCOUNT_RE = re.compile(
    r"\b(account|acct|a/c)(\s*(?:number|no\.?|#)?\s*:?\s*)(\d[\d -]{4,}\d)", re.IGNORECASE
)
_NAME = r"([A-Z][a-z]+(?:[ -][A-Z][a-z]+)?)"
_INTRO_RE = re.compile(
    r"\b(?:I'm|I am|[Mm]y name is|[Tt]his is|[Nn]ame:|[Ss]igned,?)\s+" + _NAME + r"\b"
)
_GREETING_RE = re.compile(r"^\W*(?:Hi|Hello|Dear|Hey)\s+" + _NAME + r"\b", re.MULTILINE)
# Capitalised words these phrases catch that are not names.
_NOT_NAMES = {
    "Sorry", "Happy", "Glad", "Here", "There", "Not", "Just", "Still", "Very", "So", "The",
    "Your", "Our", "We", "It", "This", "That", "Brightwater", "Support", "Customer", "Team",
    "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday", "All",
    "Everyone", "Again", "Thanks", "Thank", "Please", "Yes", "No", "Ok", "Okay", "Sir",
    "Madam", "Moving", "Trying", "Calling", "Writing", "Back", "New", "Unable",
}  # fmt: skip
SURROGATES = (
    "Alex", "Sam", "Robin", "Jamie", "Morgan", "Casey", "Taylor", "Jordan", "Riley",
    "Avery", "Quinn", "Rowan", "Sasha", "Kai", "Noor", "Ines", "Tomas", "Lena", "Milo",
    "Yara", "Emil", "Zara", "Hugo", "Maya", "Otto", "Leila", "Ivo", "Nina", "Arlo", "Vera",
)  # fmt: skip


def find_names(texts: Iterable[str]) -> list[str]:
    """Person names the texts introduce themselves with or greet, in order of appearance."""
    found: dict[str, None] = {}
    for text in texts:
        for regex in (_INTRO_RE, _GREETING_RE):
            for match in regex.finditer(text):
                words = match.group(1).split()
                while words and words[-1] in _NOT_NAMES:
                    words.pop()
                if words and words[0] not in _NOT_NAMES:
                    found[" ".join(words)] = None
                    found[words[0]] = None  # "Dana Smith" is later "Dana" too
    return list(found)


def surrogate(name: str) -> str:
    """A fixed stand-in first name for `name` (same name, same stand-in, every round)."""
    digest = hashlib.sha256(name.lower().encode("utf-8")).digest()
    return SURROGATES[int.from_bytes(digest[:4], "big") % len(SURROGATES)]


def _count(counts: dict[str, int] | None, kind: str, n: int = 1) -> None:
    if counts is not None:
        counts[kind] = counts.get(kind, 0) + n


def scrub_text(
    text: str, names: list[str], counts: dict[str, int] | None = None, region: str = "US"
) -> str:
    """`text` with emails, cards, accounts, phones and the given `names` replaced; what was
    replaced is added to `counts` (kind -> number), if given. `region`: the country whose
    phone numbers may be written without a country code."""
    import phonenumbers
    from stdnum import iban, luhn

    def sub(regex: re.Pattern[str], kind: str, repl: Callable[[re.Match[str]], str]) -> None:
        nonlocal text

        def counted(match: re.Match[str]) -> str:
            out = repl(match)
            if out != match.group(0):
                _count(counts, kind)
            return out

        text = regex.sub(counted, text)

    sub(_EMAIL_RE, "email", lambda m: EMAIL)

    def card(match: re.Match[str]) -> str:
        digits = re.sub(r"\D", "", match.group(0))
        return CARD if 13 <= len(digits) <= 19 and luhn.is_valid(digits) else match.group(0)

    sub(_CARD_RE, "card", card)
    sub(_IBAN_RE, "account", lambda m: ACCOUNT if iban.is_valid(m.group(0)) else m.group(0))
    sub(_ACCOUNT_RE, "account", lambda m: m.group(1) + m.group(2) + ACCOUNT)
    matches = list(
        phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.POSSIBLE)
    )
    for match in reversed(matches):
        text = text[: match.start] + PHONE + text[match.end :]
        _count(counts, "phone")
    for name in sorted(names, key=len, reverse=True):
        text, n = re.subn(rf"\b{re.escape(name)}\b", surrogate(name.split()[0]), text)
        if n:
            _count(counts, "name", n)
    return text


def scrub_texts(
    texts: list[str], counts: dict[str, int] | None = None, region: str = "US"
) -> list[str]:
    """`texts` scrubbed together: a name found in any of them is replaced in all of them by
    the same stand-in (a question and the replies to it)."""
    names = find_names(texts)
    return [scrub_text(text, names, counts, region) for text in texts]


def scrub_row(row: Row, counts: dict[str, int] | None = None, region: str = "US") -> Row:
    """A copy of a TRL row (SFT, DPO or KTO) with PII scrubbed consistently across its
    messages and its 👎 reasons (an export's KTO rows carry them)."""
    texts = [str(m.get("content", "")) for key in MESSAGE_KEYS for m in row.get(key, [])]
    reasons = [str(r) for r in row.get("reasons", [])]
    scrubbed = iter(scrub_texts([*texts, *reasons], counts, region))
    out: Row = dict(row)
    for key in MESSAGE_KEYS:
        if key in row:
            out[key] = [{**m, "content": next(scrubbed)} for m in row[key]]
    if "reasons" in row:
        out["reasons"] = [next(scrubbed) for _ in reasons]
    return out
