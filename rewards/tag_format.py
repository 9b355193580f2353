"""Tags in responses: `last_tag` (the one extraction of a tag's content) and the `format` reward:
does the response follow a tag structure such as

    <think>...</think><answer>...</answer>

Arguments (recipe `args`):
    tags: the tag names in order (default think, answer).
    strict: True (default): the whole stripped response is exactly the tags in order, each once,
        separated by whitespace only. False: each tag pair occurs, in order, anywhere.
    allow_empty: whether a tag may be empty (default False: empty content fails).
    pattern: a custom regular expression instead of `tags`; the stripped response must match it
        in full (`re.fullmatch`, DOTALL).
    partial: score the fraction of well-formed tags instead of all-or-nothing (ignored with
        `pattern` or `strict`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache
from typing import Any

from dare.rewards.base import register_reward


def last_tag(text: str, tag: str) -> str | None:
    """The content of the last closed `<tag>...</tag>` in `text` (as written, not stripped): the
    text between the last `</tag>` and the last `<tag>` before it; None if there is none (an
    unclosed tag, e.g. a truncated response, does not count). The one tag extraction of the
    rewards: the task rewards' `answer_tag` and math's `<answer>` read it."""
    open_, close = f"<{tag}>", f"</{tag}>"
    end = text.rfind(close)
    if end < 0:
        return None
    start = text.rfind(open_, 0, end)
    if start < 0:
        return None
    return text[start + len(open_) : end]


@cache
def _strict_regex(tags: tuple[str, ...], allow_empty: bool) -> re.Pattern[str]:
    names = "|".join(re.escape(t) for t in tags)
    no_tag = f"(?!</?(?:{names})>)"  # tags do not nest or repeat inside a tag's content
    body = f"(?:{no_tag}.)*?" if allow_empty else f"(?:{no_tag}.)*?{no_tag}\\S(?:{no_tag}.)*?"
    parts = [f"<{re.escape(t)}>{body}</{re.escape(t)}>" for t in tags]
    return re.compile(r"\s*".join(parts), flags=re.DOTALL)


@register_reward("format")
def format_reward(
    prompt: str,
    response: str,
    ground_truth: Any = None,
    tags: Sequence[str] = ("think", "answer"),
    strict: bool = True,
    allow_empty: bool = False,
    pattern: str | None = None,
    partial: bool = False,
) -> float:
    """1.0 if `response` has the tag structure (see the module docstring), else 0.0."""
    if not isinstance(response, str):
        return 0.0
    text = response.strip()
    if pattern is not None:
        return 1.0 if re.fullmatch(pattern, text, flags=re.DOTALL) else 0.0
    tags = tuple(tags)
    if not tags:
        raise ValueError("format reward: `tags` must name at least one tag")
    if strict:
        return 1.0 if _strict_regex(tags, allow_empty).fullmatch(text) else 0.0
    # lenient: each <tag>content</tag> found after the previous one, counting those found
    found, pos = 0, 0
    for t in tags:
        m = re.compile(f"<{re.escape(t)}>(.*?)</{re.escape(t)}>", flags=re.DOTALL).search(text, pos)
        if m is None or (not allow_empty and not m.group(1).strip()):
            if not partial:
                return 0.0
            continue
        found += 1
        pos = m.end()
    return found / len(tags) if partial else 1.0


__all__ = ["format_reward", "last_tag"]
