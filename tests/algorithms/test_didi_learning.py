"""DiDi-Instruct learning (the slow one, its own module so pytest-xdist runs it beside the other
DiDi tests): a 4-step student distilled from a tiny SFT teacher beats the teacher at 4 steps."""

import pytest

from dare.sampling import SamplingConfig


@pytest.mark.slow
def test_four_step_student_beats_the_teacher_at_up_to_seven_steps():
    """Learning, in the issue's regime: the quickstart's task (sort 3-8 digits, gen_length 10) with
    both orders accepted (`direction: either`), so a tiny SFT teacher decoding 2-3 tokens per step
    mixes the orders and drops from ~86-90% at 10 steps to ~50-70% at 4. DiDi-Instruct with the Args
    defaults distils a 4-step student that is far more accurate than the teacher at the same 4 steps
    (greedy, and at T=1, the distribution it is trained on) and than the teacher at 7 steps. Seed 0
    of `benchmarks/didi_speedup.py` (1000 SFT steps on 4000 rows, 100 distill steps of 16 prompts x 8
    on 512 prompts, 300 eval prompts); over seeds 0-2 (docs/didi.md, discriminator head seeded from
    the noise seed) the student gained +27.7 / +20.3 / +39.0 points greedy and +17.0 / +36.0 / +37.7
    at T=1 over the 4-step teacher, and was -9.3 / +0.3 / +4.4 points from the 10-step teacher greedy
    (seed 0's student matches the teacher at 8 steps, 77.0% vs 64.3% at 7). Asserted: gains > 10
    points greedy and > 8 at T=1 (about half the smallest), greedy student above the 7-step teacher."""
    from didi_utils import accuracy, distill, sort_either_rows, sort_either_score, teacher_cache, train_teacher

    L, S, seed = 10, 4, 0
    rows = sort_either_rows(4000, 8, seed, "train")
    teacher, tok = train_teacher(rows, 1000, L, seed=seed)
    cache = teacher_cache(teacher, tok, rows[:512], L, 8, seed)
    student, _, history = distill(teacher, tok, rows[:512], L, 100, seed=seed, cache=cache, student_steps=S)
    assert history[0]["actor/pg_loss"] == 0.0 and history[-1]["actor/pg_loss"] != 0.0  # discriminator warm-up
    eval_rows = sort_either_rows(300, 8, 10_000 + seed, "eval")

    def acc(model, steps, temperature, remasking):
        cfg = SamplingConfig(algorithm="few_step", gen_length=L, steps=steps, temperature=temperature,
                             remasking=remasking)  # fmt: skip
        return accuracy(model, tok, eval_rows, cfg, seed, score=sort_either_score)

    greedy, ancestral = (0.0, "low_confidence"), (1.0, "random")
    teacher_few, student_few = acc(teacher, S, *greedy), acc(student, S, *greedy)
    teacher_seven = acc(teacher, 7, *greedy)
    teacher_t1, student_t1 = acc(teacher, S, *ancestral), acc(student, S, *ancestral)
    numbers = dict(teacher_few=teacher_few, student_few=student_few, teacher_seven=teacher_seven,
                   teacher_t1=teacher_t1, student_t1=student_t1)  # fmt: skip
    assert student_few > teacher_few + 0.10, numbers  # measured at this seed: 49.3% -> 77.0%
    assert student_t1 > teacher_t1 + 0.08, numbers  # measured: 38.3% -> 55.3%
    assert student_few > teacher_seven, numbers  # measured: 77.0% at 4 steps vs 64.3% at 7
