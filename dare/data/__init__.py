"""Data: built-in synthetic tasks (`dare.data.tasks`), dataset loading (`loading`), chat
formatting and masked-diffusion collators (`formatting`)."""

from dare.data.formatting import (
    IGNORE_INDEX,
    SFTCollator,
    collate_preference,
    collate_prompts,
    collate_sft,
    encode_prompt,
    encode_response,
    encode_sft_row,
    limit_prompts,
    prompt_messages,
)
from dare.data.loading import BUILTIN_PREFIX, KINDS, RowError, load_dataset_spec, load_rows, normalize_row
from dare.data.tasks import (
    BUILTIN_SYMBOLS,
    TASKS,
    Task,
    builtin_tokenizer,
    extract_answer,
    get_task,
)

__all__ = [
    "BUILTIN_PREFIX",
    "BUILTIN_SYMBOLS",
    "IGNORE_INDEX",
    "KINDS",
    "TASKS",
    "RowError",
    "SFTCollator",
    "Task",
    "builtin_tokenizer",
    "collate_preference",
    "collate_prompts",
    "collate_sft",
    "encode_prompt",
    "encode_response",
    "encode_sft_row",
    "limit_prompts",
    "extract_answer",
    "get_task",
    "load_dataset_spec",
    "load_rows",
    "normalize_row",
    "prompt_messages",
]
