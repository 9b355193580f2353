"""The `judge` reward's client logic against a scripted OpenAI-compatible server on loopback
(fast; the real vLLM server test is test_reward_judge_vllm.py): score parsing, retries with
backoff, non-retryable errors, the concurrency limit, the API key, both endpoints."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dare.rewards import get_reward
from dare.rewards.judge import parse_score

judge = get_reward("judge")


class FakeJudge:
    """Replies `Score: 8` unless the judge prompt holds a directive: REPLY=<text>, FAIL=<status>
    (for the first `fail_times` calls of that prompt), SLOW (0.3 s)."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.headers: list[dict[str, str]] = []
        self.fail_times = 2
        self.lock = threading.Lock()


@pytest.fixture
def fake() -> Iterator[tuple[FakeJudge, str]]:
    state = FakeJudge()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _send(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._send(200, {"data": [{"id": "fake-judge"}]})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            text = body["messages"][-1]["content"] if "messages" in body else body["prompt"]
            with state.lock:
                state.calls[text] = state.calls.get(text, 0) + 1
                n = state.calls[text]
                state.in_flight += 1
                state.max_in_flight = max(state.max_in_flight, state.in_flight)
                state.headers.append(dict(self.headers))
            if "SLOW" in text:
                time.sleep(0.3)
            # out of flight before the reply is written: once the client has it, it may send its
            # next request before this handler thread runs again
            with state.lock:
                state.in_flight -= 1
            if "FAIL=" in text and n <= state.fail_times:
                return self._send(int(text.split("FAIL=")[1][:3]), {"error": "scripted"})
            reply = text.split("REPLY=")[1].split("|")[0] if "REPLY=" in text else "Score: 8"
            assert body["model"] == "fake-judge"
            if "messages" in body:
                self._send(200, {"choices": [{"message": {"role": "assistant", "content": reply}}]})
            else:
                self._send(200, {"choices": [{"text": reply}]})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state, f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def ask(url: str, responses: list[str], **args):
    return judge(["q"] * len(responses), responses, None, base_url=url, backoff_s=0.01, **args)


def test_scores_are_parsed_clipped_and_normalized(fake):
    _, url = fake
    out = ask(url, ["fine", "REPLY=Score: 15|", "REPLY=score=2.5 then Score: 4|", "REPLY=I like it|"])
    assert [o["score"] for o in out] == [0.8, 1.0, 0.4, 0.0]
    assert [o["judge_score"] for o in out] == [8.0, 10.0, 4.0, 0.0]
    assert [o["parse_error"] for o in out] == [0.0, 0.0, 0.0, 1.0]
    assert out[3]["reply"] == "I like it" and all(o["request_error"] == 0.0 for o in out)
    raw = ask(url, ["x"], normalize=False, min_score=1, max_score=5)
    assert raw[0]["score"] == 5.0  # 8 clipped to the scale
    assert ask(url, ["x"], endpoint="completions")[0]["score"] == 0.8


def test_retries_with_backoff_then_gives_up(fake):
    state, url = fake
    assert ask(url, ["FAIL=503"], max_retries=2)[0]["score"] == 0.8  # 2 failures, then success
    state.calls.clear()
    out = ask(url, ["FAIL=503"], max_retries=1)
    assert out[0] == {"score": 0.0, "judge_score": 0.0, "parse_error": 0.0, "request_error": 1.0, "reply": None}
    # a client error is not retried
    state.calls.clear()
    out = ask(url, ["FAIL=400"], max_retries=3)
    assert out[0]["request_error"] == 1.0 and sum(state.calls.values()) == 1


def test_concurrency_limit_and_api_key(fake, monkeypatch):
    state, url = fake
    monkeypatch.setenv("DARE_TEST_JUDGE_KEY", "k-123")
    start = time.monotonic()
    out = ask(url, [f"SLOW {i}" for i in range(6)], max_concurrency=2, api_key_env="DARE_TEST_JUDGE_KEY")
    assert all(o["score"] == 0.8 for o in out)
    assert state.max_in_flight == 2 and time.monotonic() - start >= 3 * 0.3
    assert all(h.get("Authorization") == "Bearer k-123" for h in state.headers)


def test_unreachable_server_gives_zero():
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = ask(f"http://127.0.0.1:{port}/v1", ["a", "b"], max_retries=1, timeout_s=2)
    assert [o["score"] for o in out] == [0.0, 0.0] and all(o["request_error"] == 1.0 for o in out)


def test_parse_score():
    assert parse_score("Score: 7") == 7.0
    assert parse_score("score = -2.5") == -2.5
    assert parse_score("nothing") is None
    assert parse_score("7/10", r"(\d+)/10") == 7.0
    assert parse_score("a 3 b", r"\d") == 3.0  # no group: the whole match
