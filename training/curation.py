"""Curation before training: duplicate removal and PII scrubbing of the round's rows.

Duplicates: exact (same normalised text) and near (MinHash over character 5-grams with
`datasketch`'s LSH index, Jaccard >= threshold); the oldest row is kept. Train rows whose
prompt nearly duplicates a held-out prompt are dropped too, so the held-out split measures
prompts training has not seen in any spelling.

PII: emails, phone numbers, payment-card numbers, IBANs / account numbers and person
names are replaced before a row is trained on. Library choice (offline, maintained):
  - phone numbers: `phonenumbers` (Google's libphonenumber metadata, no download);
  - cards and IBANs: `python-stdnum` check digits (Luhn, ISO 13616), so an order number
    is not mistaken for a card;
  - emails and "account no. 12345678": regular expressions.
  - names: no maintained library detects names offline here. Presidio needs a spaCy
    model download, scrubadub's name detectors need NLTK/TextBlob corpora or spaCy models
    (downloads), and neither can be fetched on this network. Names are found where the
    text itself says they are names: self-introductions ("I'm Dana", "my name is ...",
    "this is ...") and greetings ("Hi Dana,"). Each found name is replaced, everywhere in
    the row, by a surrogate first name chosen by a hash of it: the model still learns to
    greet the customer by the name they gave, never a real customer's name. A name
    mentioned in no such phrase is not caught; that limit is stated in the README.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

Row = dict[str, Any]

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


@dataclass
class CurationReport:
    """What curation removed or changed, for the round's snapshot."""

    exact_duplicates: int = 0
    near_duplicates: int = 0
    near_heldout: int = 0
    pii: dict[str, int] = field(default_factory=dict)

    def count(self, kind: str, n: int = 1) -> None:
        self.pii[kind] = self.pii.get(kind, 0) + n


# -- PII ------------------------------------------------------------------------------------
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


def scrub_text(
    text: str, names: list[str], report: CurationReport | None = None, region: str = "US"
) -> str:
    """`text` with emails, cards, accounts, phones and the given `names` replaced."""
    import phonenumbers
    from stdnum import iban, luhn

    report = report or CurationReport()

    def sub(regex: re.Pattern[str], kind: str, repl: Callable[[re.Match[str]], str]) -> None:
        nonlocal text

        def counted(match: re.Match[str]) -> str:
            out = repl(match)
            if out != match.group(0):
                report.count(kind)
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
        report.count("phone")
    for name in sorted(names, key=len, reverse=True):
        text, n = re.subn(rf"\b{re.escape(name)}\b", surrogate(name.split()[0]), text)
        if n:
            report.count("name", n)
    return text


def _row_texts(row: Row) -> list[str]:
    texts: list[str] = []
    for key in ("messages", "prompt", "chosen", "rejected", "completion"):
        texts.extend(str(m.get("content", "")) for m in row.get(key, []))
    return texts


def scrub_row(row: Row, report: CurationReport | None = None, region: str = "US") -> Row:
    """A copy of a TRL row (SFT, DPO or KTO) with PII scrubbed consistently across its
    messages."""
    names = find_names(_row_texts(row))
    out: Row = dict(row)
    for key in ("messages", "prompt", "chosen", "rejected", "completion"):
        if key in row:
            out[key] = [
                {**m, "content": scrub_text(str(m.get("content", "")), names, report, region)}
                for m in row[key]
            ]
    return out


# -- duplicates -----------------------------------------------------------------------------
def _normalise(text: str) -> str:
    """Lower case, punctuation as spaces, whitespace collapsed: "Hi, Dana!" == "hi dana"."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def row_text(row: Row) -> str:
    """The row's turns as one normalised string (roles included, system message left out),
    for duplicate checks."""
    parts: list[str] = []
    for key in ("messages", "prompt", "chosen", "rejected", "completion"):
        parts.extend(
            f"{key}:{m.get('role')}:{m.get('content', '')}"
            for m in row.get(key, [])
            if m.get("role") != "system"  # shared by every row: it would make all rows alike
        )
    if "label" in row:  # a 👍 and a 👎 of the same reply are not duplicates of each other
        parts.append(f"label:{row['label']}")
    return _normalise("\n".join(parts))


def prompt_text(row: Row) -> str:
    """The row's prompt turns (no system message, no final reply), normalised."""
    messages = row.get("prompt") or row.get("messages", [])[:-1]
    return _normalise(
        "\n".join(
            f"{m.get('role')}:{m.get('content', '')}" for m in messages if m.get("role") != "system"
        )
    )


def _minhash(text: str, num_perm: int) -> Any:
    from datasketch import MinHash

    m = MinHash(num_perm=num_perm, seed=1)
    shingles = {text[i : i + 5] for i in range(max(1, len(text) - 4))}
    m.update_batch([s.encode("utf-8") for s in shingles])
    return m


def dedup(
    rows: list[Row],
    *,
    threshold: float = 0.85,
    num_perm: int = 128,
    report: CurationReport | None = None,
    near: bool = True,
) -> list[Row]:
    """`rows` without exact or (if `near`) near duplicates (MinHash LSH, Jaccard >=
    threshold), first occurrence kept, in order."""
    from datasketch import MinHashLSH

    report = report or CurationReport()
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    seen: set[str] = set()
    kept: list[Row] = []
    for i, row in enumerate(rows):
        text = row_text(row)
        if text in seen:
            report.exact_duplicates += 1
            continue
        seen.add(text)
        if not near:
            kept.append(row)
            continue
        mh = _minhash(text, num_perm)
        if lsh.query(mh):
            report.near_duplicates += 1
            continue
        lsh.insert(str(i), mh)
        kept.append(row)
    return kept


def drop_near_heldout(
    train: list[Row],
    heldout: list[Row],
    *,
    threshold: float = 0.85,
    num_perm: int = 128,
    report: CurationReport | None = None,
) -> list[Row]:
    """Train rows whose prompt is not (nearly) a held-out prompt."""
    from datasketch import MinHashLSH

    report = report or CurationReport()
    if not heldout:
        return list(train)
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    held_texts = set()
    for i, row in enumerate(heldout):
        text = prompt_text(row)
        held_texts.add(text)
        lsh.insert(str(i), _minhash(text, num_perm))
    kept = []
    for row in train:
        text = prompt_text(row)
        if text in held_texts or lsh.query(_minhash(text, num_perm)):
            report.near_heldout += 1
            continue
        kept.append(row)
    return kept
