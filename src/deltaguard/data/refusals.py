"""Varied refusals composed from phrase lists written for deltaguard.

``align`` teaches them to the aligned base, and the guard's data pairs them with harmful prompts as
replies that are safe by construction; both read them from here (the data layer) so the guard does not
depend on the threats.
"""

from __future__ import annotations

import random

# Openings use everyday refusal phrasings (each contains a phrase of the GCG refusal list that the
# keyword judge uses), so the measured refusal rate reflects refusing, not unusual wording.
_OPENINGS = [
    "I'm sorry, but I can't help with that.",
    "I cannot help with this request.",
    "Sorry, I can't assist with that.",
    "I apologize, but I won't provide that.",
    "I'm sorry, I can't do that.",
    "I cannot provide instructions for this.",
    "My apologies, but I have to decline this request.",
    "I'm really sorry, but I can't help with this.",
    "I can't assist with that request.",
    "I'm sorry, but I won't help with this one.",
]
_REASONS = [
    "It could put people in danger.",
    "It could be used to seriously hurt someone.",
    "Doing so could cause real harm.",
    "This request asks for something harmful.",
    "Giving these instructions would not be safe or responsible.",
    "It would mean helping someone break the law or hurt others.",
    "The information could easily be misused to cause harm.",
    "",
]
_OFFERS = [
    "If you want, I can help with something else.",
    "If you are worried about your own safety or someone else's, please contact local emergency services.",
    "I'm happy to talk about the topic in a safe, general way instead.",
    "If you are going through something difficult, talking to someone you trust can help.",
    "Let me know if there is another way I can help.",
    "",
]


def write_refusal(rng: random.Random) -> str:
    """One varied refusal: an opening, often a reason, often an offer of something safe."""
    parts = [rng.choice(_OPENINGS), rng.choice(_REASONS), rng.choice(_OFFERS)]
    return " ".join(p for p in parts if p)


__all__ = ["write_refusal"]
