"""Where a model or tokenizer "path" comes from: a local folder, or a Hugging Face Hub id.

Every place dare accepts a checkpoint or tokenizer (recipes' `model.path` / `model.tokenizer`,
`dare generate / eval / export --model`, `dare.models.from_pretrained`, the OpenCompass model)
calls `resolve_checkpoint`, so the rules are the same everywhere:

- an existing local folder always wins (a folder named like an id is still a folder);
- `ORG/NAME` or `ORG/NAME@REVISION` is looked up in huggingface_hub's cache (`HF_HUB_CACHE`,
  else `HF_HOME/hub`, else `~/.cache/huggingface/hub`): downloaded there first when online,
  the cache only with `HF_HUB_OFFLINE=1`;
- anything else, or an id that is not cached and cannot be fetched, is one `HubResolutionError`
  naming the id and the `hf download` command that would fetch it.

Only what dare reads is fetched (configs, safetensors, tokenizer files, chat templates): never
the repository's Python files (dare runs no remote code) nor pickled `*.bin` weights.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# org and repo names on the Hub: letters, digits, "-", "_", "."; an optional "@revision"
# (branch, tag or commit; may contain "/" as in "refs/pr/1")
_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<rev>[\w./-]+))?$")

# what dare reads from a released repository: everything it loads, the configs, the tokenizer
HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.jinja", "*.model", "*.tiktoken"]
CONFIG_FILES = ["*.json"]
TOKENIZER_FILES = ["*.json", "*.txt", "*.jinja", "*.model", "*.tiktoken"]

_TRUE = {"1", "true", "yes", "on"}


class HubResolutionError(FileNotFoundError):
    """A model / tokenizer path that is neither a local folder nor an available Hub id."""


def parse_hub_id(text: str) -> tuple[str, str | None] | None:
    """(repo_id, revision or None) of `ORG/NAME[@REVISION]`, or None when `text` is not an id."""
    m = _HUB_ID.match(text)
    if m is None or text.startswith((".", "/")) or ".." in m["repo"]:
        return None
    return m["repo"], m["rev"]


def hub_offline() -> bool:
    """True when the Hub must not be contacted (`HF_HUB_OFFLINE`, read now rather than at import
    so a test or a launcher can set it late)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE")
    return env.strip().lower() in _TRUE if env is not None else bool(constants.HF_HUB_OFFLINE)


def hub_cache_dir() -> Path:
    """The huggingface_hub cache folder in force now (same precedence as huggingface_hub)."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE)


def fetch_command(repo_id: str, revision: str | None = None) -> str:
    return f"hf download {repo_id}" + (f" --revision {revision}" if revision else "")


def _snapshot(repo_id: str, revision: str | None, local_only: bool, files: list[str]) -> Path:
    from huggingface_hub import snapshot_download

    return Path(
        snapshot_download(
            repo_id, revision=revision, cache_dir=hub_cache_dir(), local_files_only=local_only, allow_patterns=files
        )
    )


def resolve_checkpoint(
    path_or_id: str | Path, *, download: bool | None = None, what: str = "checkpoint", files: list[str] | None = None
) -> Path:
    """The local folder of a checkpoint / tokenizer given as a folder or a Hub id.

    Args:
        path_or_id: a local folder, or `ORG/NAME[@REVISION]`.
        download: fetch an uncached id from the Hub (default: unless `HF_HUB_OFFLINE=1`);
            False only looks in the cache.
        what: the word used in error messages ("checkpoint", "tokenizer").
        files: the file patterns needed (default `HUB_FILES`, everything dare loads). Reading a
            config or a tokenizer fetches only those (`CONFIG_FILES`, `TOKENIZER_FILES`): a recipe
            is validated without downloading its weights, which come when the policy is built.

    Raises:
        HubResolutionError: not a folder, and not an id in the cache (or fetchable).
    """
    local = Path(path_or_id).expanduser()
    if local.is_dir():
        return local
    text = str(path_or_id)
    parsed = parse_hub_id(text)
    if parsed is None:
        raise HubResolutionError(
            f"{text} is not a {what} folder (no such folder) nor a Hugging Face Hub id ORG/NAME[@REVISION]"
        )
    repo_id, revision = parsed
    offline = hub_offline()
    fetch = (not offline) if download is None else (download and not offline)
    try:
        return _snapshot(repo_id, revision, local_only=not fetch, files=files or HUB_FILES)
    except Exception as e:  # huggingface_hub raises several types (not cached, not found, no network)
        where = "offline (HF_HUB_OFFLINE=1), " if offline else ""
        raise HubResolutionError(
            f"{text} is not a {what} folder here, and Hub id {repo_id!r}"
            + (f" at revision {revision!r}" if revision else "")
            + f" is not in the Hugging Face cache {hub_cache_dir()} ({where}{type(e).__name__}); "
            f"fetch it with `{fetch_command(repo_id, revision)}` (or point HF_HUB_CACHE / HF_HOME at the cache "
            "that holds it)"
        ) from None


__all__ = [
    "CONFIG_FILES",
    "HUB_FILES",
    "TOKENIZER_FILES",
    "HubResolutionError",
    "fetch_command",
    "hub_cache_dir",
    "hub_offline",
    "parse_hub_id",
    "resolve_checkpoint",
]
