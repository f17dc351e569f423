"""What a product looks like, beyond its class: the language of its text and the size of its
photo. The prediction store records these per product and drift detection compares them with
the training data's."""

from __future__ import annotations

import functools
import re

from stop_words import get_stop_words

# The catalogue's languages (the stop-word lists of the text model); anything else is "other".
LANGUAGES = {"fr": "french", "en": "english", "de": "german"}
_WORD = re.compile(r"(?u)\b\w\w+\b")


@functools.cache
def _stop_words() -> dict[str, frozenset[str]]:
    return {code: frozenset(get_stop_words(name)) for code, name in LANGUAGES.items()}


def guess_language(text: str) -> str:
    """fr, en or de by the most stop words of that language in `text` (ties: the first of
    fr, en, de); "other" when no stop word of any is found (a title of brand and model names,
    or another language)."""
    words = _WORD.findall(text.lower())
    counts = {code: sum(word in stop for word in words) for code, stop in _stop_words().items()}
    best = max(counts, key=lambda code: counts[code])
    return best if counts[best] else "other"
