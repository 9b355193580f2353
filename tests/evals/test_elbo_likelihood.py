"""Multiple-choice scoring by the masked-diffusion ELBO, through `DareModel`'s OpenCompass API
(`get_ppl_from_template` is what OpenCompass's PPLInferencer calls)."""

from __future__ import annotations

import pytest
import torch
from oc_helpers import SAMPLING, SORT_ARGS  # (pytest puts this folder on sys.path)

from dare.data.tasks import get_task
from dare.evals.likelihood import continuation_batch, continuation_elbo
from dare.evals.prompts import split_continuation

# module-scoped fixtures: keep this file's tests on one pytest-xdist worker
pytestmark = pytest.mark.xdist_group("evals")


@pytest.fixture(scope="module")
def oc_model(sort_ckpt):
    from dare.evals.model import DareModel  # imports OpenCompass

    return DareModel(path=str(sort_ckpt), sampling=SAMPLING, elbo_samples=8, seed=0)


def _option_prompt(question: str, option: str) -> list[dict]:
    """What OpenCompass's PPLInferencer hands the model for one option (a PromptList)."""
    return [
        {"section": "round", "pos": "begin"},
        {"role": "HUMAN", "prompt": question},
        {"role": "BOT", "prompt": option},
        {"section": "round", "pos": "end"},
    ]


def _wrong_options(answer: str) -> list[str]:
    """Three distinct wrong answers of the same length: reversed, rotated, a digit changed."""
    out = []
    for cand in (answer[::-1], answer[1:] + answer[:1], answer[:-1] + str((int(answer[-1]) + 1) % 10)):
        if cand != answer and cand not in out:
            out.append(cand)
    return out


def test_elbo_ranks_the_correct_option_first(oc_model):
    rows = [r for r in get_task("sort", **SORT_ARGS).generate("eval", 40, seed=1) if len(set(r["response"])) > 1]
    firsts = []
    for row in rows[:20]:
        options = [row["response"], *_wrong_options(row["response"])]
        ppl = oc_model.get_ppl_from_template([_option_prompt(row["prompt"], o) for o in options])
        assert ppl.shape == (len(options),) and (ppl > 0).all()  # per-token negative ELBO, in nats
        firsts.append(int(ppl.argmin()) == 0)
    # measured: the correct sorted answer has the lowest PPL for 20 / 20 questions
    assert sum(firsts) >= 18, firsts


def test_elbo_variance_falls_with_the_sample_count(oc_model):
    model, tok = oc_model.model, oc_model.tokenizer
    row = next(r for r in get_task("sort", **SORT_ARGS).generate("eval", 20, seed=3) if len(r["response"]) >= 3)
    context = oc_model._encode_messages([{"role": "user", "content": row["prompt"]}])
    cont = oc_model._text_ids(row["response"][::-1] + "1")  # a 4-5 token continuation the model finds unlikely
    assert len(cont) >= 4
    R = 48  # independent estimates (rows) per sample count
    var, mean = {}, {}
    for k in (1, 4, 16):
        g = torch.Generator().manual_seed(k)
        est = continuation_elbo(model, [context] * R, [cont] * R, tok.pad_token_id, k, g)  # [R]
        var[k], mean[k] = float(est.var()), float(est.mean())
    # measured: variance 22.7 (K=1) -> 9.4 (K=4) -> 2.2 (K=16), about 1/K; a variance estimated from
    # 48 rows has a ~20% relative error, hence the margins
    assert var[4] < 0.75 * var[1] and var[16] < 0.5 * var[4], var
    # same expectation (unbiased): the means agree within a few standard errors of the K=1 estimate
    # (measured -28.5 vs -27.5, s.e. 0.7)
    se = (var[1] / R) ** 0.5
    assert abs(mean[16] - mean[1]) < 4 * se, (mean, se)


def test_continuation_layout_and_prompt_split():
    b = continuation_batch([[5, 6, 7], [8]], [[1, 2], [3, 4, 9]], pad_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 7, 1, 2, 0], [0, 0, 8, 3, 4, 9]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1]]
    assert b["response_mask"].long().tolist() == [[0, 0, 0, 1, 1, 0], [0, 0, 0, 1, 1, 1]]
    context, text = split_continuation(_option_prompt("sort 31", "13"))
    assert context == [{"role": "user", "content": "sort 31"}] and text == "13"
    with pytest.raises(ValueError, match="BOT turn"):
        split_continuation([{"role": "HUMAN", "prompt": "sort 31"}])
