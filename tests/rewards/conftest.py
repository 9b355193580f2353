def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "vllm: starts a real vLLM server (CPU build, in .venv-vllm/ made by scripts/setup_vllm_cpu.sh; "
        "minutes the first time). Runs in CI; deselect locally with -m 'not vllm'.",
    )
