"""OpenCompass prompts -> dare chat messages (no OpenCompass import needed).

OpenCompass hands a model either a plain string or a `PromptList`: a list of strings, section
markers `{"section": ..., "pos": "begin" | "end"}` and turns `{"role": "HUMAN" | "BOT" | "SYSTEM",
"prompt": text}`. dare renders turns with the tokenizer's own chat template (the template the
model was trained with), so OpenCompass's `meta_template` is not needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

ROLES = {"HUMAN": "user", "BOT": "assistant", "SYSTEM": "system"}


def to_messages(prompt: str | Sequence[Any]) -> list[dict[str, str]]:
    """The chat messages of an OpenCompass prompt (a plain string is one user turn). Loose strings
    in a PromptList are appended to the current turn."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    messages: list[dict[str, str]] = []
    for item in prompt:
        if isinstance(item, str):
            if not item:
                continue
            if messages:
                messages[-1]["content"] += item
            else:
                messages.append({"role": "user", "content": item})
        elif isinstance(item, dict) and "section" in item:
            continue
        elif isinstance(item, dict) and "role" in item:
            role = ROLES.get(str(item["role"]).upper())
            if role is None:
                raise ValueError(f"unknown OpenCompass role {item['role']!r}; dare knows {', '.join(ROLES)}")
            messages.append({"role": role, "content": str(item.get("prompt", "") or "")})
        else:
            raise ValueError(f"unexpected OpenCompass prompt item {item!r}")
    return messages


def generation_messages(prompt: str | Sequence[Any]) -> list[dict[str, str]]:
    """Messages to answer: a trailing empty assistant turn (the slot OpenCompass leaves for the
    answer) is dropped."""
    messages = to_messages(prompt)
    while messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
        messages.pop()
    if not messages:
        raise ValueError("empty OpenCompass prompt: nothing to answer")
    return messages


def split_continuation(prompt: str | Sequence[Any]) -> tuple[list[dict[str, str]] | None, str]:
    """(context messages, continuation text) of a scoring prompt: the last assistant turn is the
    scored continuation (an option of a multiple-choice question). A plain string has no context
    (None): the whole text is scored, as OpenCompass's perplexity does for causal LMs."""
    if isinstance(prompt, str):
        return None, prompt
    messages = to_messages(prompt)
    if not messages or messages[-1]["role"] != "assistant" or not messages[-1]["content"]:
        raise ValueError(
            "a perplexity / likelihood prompt for a dare model must end with a BOT turn holding the "
            f"option text; got roles {[m['role'] for m in messages]}"
        )
    return messages[:-1], messages[-1]["content"]


__all__ = ["ROLES", "generation_messages", "split_continuation", "to_messages"]
