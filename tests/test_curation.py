"""Curation before training: PII scrubbing and exact / near-duplicate removal."""

from __future__ import annotations

from feedback.pii import ACCOUNT, CARD, EMAIL, PHONE, find_names, scrub_row, scrub_text, surrogate
from training.curation import CurationReport, dedup, drop_near_heldout


def _sft(user: str, reply: str) -> dict:
    return {
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    }


def test_contact_and_payment_details_are_replaced() -> None:
    counts: dict[str, int] = {}
    text = (
        "Mail me at dana.smith@example.org or call (415) 555-2671 / +44 20 7946 0958. "
        "Card 4111 1111 1111 1111, account no. 12345678, IBAN GB82 WEST 1234 5698 7654 32."
    )
    out = scrub_text(text, [], counts)
    assert "dana.smith" not in out and EMAIL in out
    assert "555-2671" not in out and "7946" not in out and out.count(PHONE) == 2
    assert "4111" not in out and CARD in out
    assert "12345678" not in out and "GB82" not in out and out.count(ACCOUNT) == 2
    assert counts == {"email": 1, "card": 1, "account": 2, "phone": 2}


def test_numbers_that_are_not_pii_stay() -> None:
    text = "Order 2048 arrived on 2024-03-11; refunds take 5 working days (POL-12), 60 days max."
    assert scrub_text(text, []) == text
    # 16 digits failing the Luhn check are not a card number.
    assert "1234 5678 9012 3456" in scrub_text("ref 1234 5678 9012 3456", [])


def test_names_get_one_surrogate_across_the_whole_row() -> None:
    row = _sft(
        "Hi, I'm Dana Smith. My internet is down.",
        "Hi Dana, sorry about the outage (POL-3).\n\n— Brightwater Support",
    )
    out = scrub_row(row)
    stand_in = surrogate("Dana")
    user, reply = (m["content"] for m in out["messages"])
    assert "Dana" not in user + reply and "Smith" not in user + reply
    assert user.startswith(f"Hi, I'm {stand_in}.") and reply.startswith(f"Hi {stand_in},")
    assert surrogate("Dana") == stand_in  # stable across rounds
    assert row["messages"][0]["content"].startswith("Hi, I'm Dana")  # input untouched


def test_pairs_and_reasons_get_the_same_stand_in() -> None:
    dpo = scrub_row({
        "prompt": [{"role": "user", "content": "This is Omar, omar@example.org."}],
        "chosen": [{"role": "assistant", "content": "Hi Omar, fixed."}],
        "rejected": [{"role": "assistant", "content": "Omar: no."}],
    })  # fmt: skip
    texts = [m["content"] for key in ("prompt", "chosen", "rejected") for m in dpo[key]]
    stand_in = surrogate("Omar")
    assert texts == [f"This is {stand_in}, {EMAIL}.", f"Hi {stand_in}, fixed.", f"{stand_in}: no."]
    kto = scrub_row({
        "prompt": [{"role": "user", "content": "I'm Priya."}],
        "completion": [{"role": "assistant", "content": "Hello."}],
        "label": False,
        "reasons": ["ignored Priya's number 415-555-2671"],
    })  # fmt: skip
    assert kto["reasons"] == [f"ignored {surrogate('Priya')}'s number {PHONE}"]
    assert kto["label"] is False


def test_name_finder_reads_introductions_and_greetings_only() -> None:
    assert find_names(["This is Omar.", "Hello Priya, thanks", "My name is Li Wei"]) == [
        "Omar",
        "Priya",
        "Li Wei",
        "Li",
    ]
    assert find_names(["I'm Sorry to hear that", "Hi there", "Paris is in France"]) == []


def test_exact_and_near_duplicates_are_dropped_oldest_kept() -> None:
    a = _sft("How do I reset my router?", "Unplug it for 30 seconds, then plug it back in (POL-7).")
    a_copy = _sft(
        "How do I reset my  router ?", "Unplug it for 30 seconds; then plug it back in (POL-7)"
    )
    a_near = _sft(
        "How do I reset my router please?",
        "Unplug it for 30 seconds, then plug it back in. (POL-7)",
    )
    b = _sft("Can I move my line to a new house?", "Yes, with 14 days' notice (POL-15).")
    report = CurationReport()
    assert dedup([a, a_copy, a_near, b], report=report) == [a, b]
    assert (report.exact_duplicates, report.near_duplicates) == (1, 1)


def test_system_prompt_does_not_make_rows_alike() -> None:
    system = {"role": "system", "content": "You are the support assistant. " * 40}
    one = _sft("Is there a cancellation fee?", "30 days' notice (POL-9).")["messages"]
    two = _sft("My bill doubled, why?", "A promotion ended (POL-12).")["messages"]
    rows = [{"messages": [system, *one]}, {"messages": [system, *two]}]
    assert dedup(rows) == rows


def test_train_rows_near_a_heldout_prompt_are_dropped() -> None:
    held = [_sft("Will I get money back for the outage?", "Yes, after 4 hours (POL-3).")]
    train = [
        _sft("Will I get money back for the outage ?", "A different reply."),
        _sft("What is the fee for a new router?", "It is free (POL-8)."),
    ]
    report = CurationReport()
    assert drop_near_heldout(train, held, report=report) == train[1:]
    assert report.near_heldout == 1
