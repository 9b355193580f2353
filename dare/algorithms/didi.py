"""DiDi-Instruct: distil a few-step student from a diffusion LM teacher.

Zheng et al., "Ultra-Fast Language Generation via Discrete Diffusion Divergence Instruct",
arXiv 2509.25035 (haoyangzheng-ai/didi-instruct; its training code was unreleased at 7825a02,
so this follows the paper). Roles: the teacher (the stage's reference: the actor's frozen copy of
the policy at the start of the stage, or with `resources.reference: separate` the reference
workers' copy), the student (the trainable policy, initialised from the teacher) and a
discriminator D(z_t, t) (`dare.algorithms.didi_discriminator`, initialised from the teacher backbone,
last blocks unfrozen, new head on (z_t, t), its own Adam), trained in the actor.

Objective: the integral KL between the forward-noised marginals of student samples x ~ p_nu and
teacher samples,
    D_IKL(nu) = int_0^1 w(t) KL(q_nu(z_t) || q_theta(z_t)) dt,
minimised with the score-function gradient
    grad_nu = E_{t, x ~ p_nu, z_t ~ Q(.|x)} [ grad_nu log p_nu(x) * log q_nu(z_t) / q_theta(z_t) ].
Per step of the stage:
1. the student samples `num_generations` responses per prompt with `student_steps` steps
   (`dare.sampling.few_step`, exact trajectory; log p_nu(x) = sum of per-step transition
   log-probs);
2. every state after a student step (the intermediate states and the final sample) is
   forward-noised to a level t drawn uniformly between its own mask fraction and `noise_max` of the
   way to all-but-one masked (the paper: t ~ U over the whole range, noise_max = 1; dare's default
   noise_max = 0 scores each state at its own level, which worked better on tiny models), and a
   cached teacher sample (many-step teacher decoding, generated once by the stage trainer) is
   noised to the same number of masks;
3. the discriminator takes `disc_updates` BCE steps (student = 1, teacher = 0, label smoothing),
   so its logit estimates log q_nu(z_t) / q_theta(z_t) (`log_ratio` undoes the smoothing; dare's
   discriminator reads the tokens through `disc_views` complementary views and adds the frozen
   teacher's surprise at them, see `dare.algorithms.didi_discriminator`);
4. rewards R_s = -(discriminator logit of state s), a monotone stand-in for the log ratio that does
   not saturate (see `prepare`), normalised within each prompt's group (GRPO style);
   intermediate-state matching: step j's transition gets the advantage
       A_j = sum_{s >= j} w_s * Rhat_s,   w_final = 1, w_intermediate = `intermediate_weight`,
   (a step shapes every later state; an intermediate state should look like the teacher's forward
   marginal at its level; with `intermediate_weight` 0 only the samples are scored);
5. the student loss is -1/(B L) sum_rows sum_j A_j log p_nu(step j's tokens | state j).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F

from dare.algorithms.base import Algorithm, register_algorithm
from dare.algorithms.didi_discriminator import DiffusionDiscriminator, log_ratio, smoothed_targets
from dare.diffusion.trajectory import per_step_logp, trajectory_states, trajectory_token_logp
from dare.errors import RecipeError, check_fields
from dare.sampling.few_step import sample_trajectory
from dare.sampling.ops import topk_transfer, uniform


def states_after_steps(response: torch.Tensor, step_of: torch.Tensor, num_steps: int, mask_id: int) -> torch.Tensor:
    """The state after each student step: intermediate states, then the clean sample. `[S, N, L]`."""
    before = trajectory_states(response, step_of, num_steps, mask_id)  # state j = before step j
    return torch.cat([before[1:], response[None]], 0)


def noise_pair(
    student: torch.Tensor,
    teacher: torch.Tensor,
    mask_id: int,
    generator: torch.Generator | None,
    noise_max: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward-noise a student state and a teacher sample to the same mask count.

    student `[M, L]` may already hold m masks; the count c is uniform in
    {m, ..., m + floor(noise_max * (L - 1 - m))} (t uniform above the state's own level, at least
    one token visible; noise_max = 0 keeps the state as it is), the student's extra c - m masks and
    the teacher's c masks fall on uniformly random positions. Returns (noised student, noised
    teacher, t = c / L `[M]`).
    """
    M, L = student.shape
    device = student.device
    is_mask = student == mask_id
    m = is_mask.sum(-1)  # [M]
    span = (noise_max * (L - 1 - m).clamp(min=0).double()).floor() + 1  # choices of c
    c = m + (uniform((M,), generator, device) * span).long()  # [M]
    extra = topk_transfer(uniform((M, L), generator, device), ~is_mask, c - m)
    z_student = student.masked_fill(extra, mask_id)
    ones = torch.ones_like(is_mask)
    z_teacher = teacher.masked_fill(topk_transfer(uniform((M, L), generator, device), ones, c), mask_id)
    return z_student, z_teacher, c.double() / L


def group_normalise(rewards: torch.Tensor, group: int, eps: float = 1e-6) -> torch.Tensor:
    """(R - mean_group) / (std_group + eps) over consecutive rows of `group` (prompt-major). `[N, ...]`"""
    shape = rewards.shape
    r = rewards.reshape(shape[0] // group, group, *shape[1:])
    return ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + eps)).reshape(shape)


def step_advantages(state_adv: torch.Tensor, intermediate_weight: float) -> torch.Tensor:
    """A_j = sum_{s >= j} w_s A_s (w_final = 1, else `intermediate_weight`): `[N, S]` -> `[N, S]`."""
    w = torch.full((state_adv.shape[1],), intermediate_weight, dtype=state_adv.dtype, device=state_adv.device)
    w[-1] = 1.0
    return (state_adv * w).flip(-1).cumsum(-1).flip(-1)


@register_algorithm
class DiDiInstruct(Algorithm):
    """See the module docstring."""

    name = "didi_instruct"
    supports_sharding = False  # the discriminator is built from the unsharded teacher
    # the teacher is the reference and follows its placement (dare.workers.reference.placement):
    # separate, its forwards run on the reference workers and the discriminator is built from its
    # weights fetched once (`build_discriminator`)
    separate_reference = True
    kind = "distill"
    attention = ("full",)
    required_batch_keys = ("input_ids", "attention_mask", "teacher_response", "noise_seed", "step")

    @dataclass
    class Args:
        # student samples per prompt (one reward-normalisation group); also the teacher samples
        # cached per prompt (paper: 4; 8 measured better on tiny models, docs/didi.md)
        num_generations: int = 8
        # the student's sampling budget (DiDi-Instruct trains N = 2: all-mask -> x_tau -> x_0)
        student_steps: int = 2
        # student rollout temperature (> 0: the score-function gradient needs a density)
        temperature: float = 1.0
        # which positions a student step reveals: "random" (ancestral) or "low_confidence"
        remasking: Literal["random", "low_confidence"] = "random"
        # the teacher's SamplingConfig for the cached samples (many steps; gen_length = data.gen_length,
        # steps default to gen_length: one token per step)
        teacher_sampling: dict[str, Any] = field(default_factory=lambda: {"algorithm": "llada", "temperature": 1.0})
        # discriminator: Adam lr, trainable last blocks, BCE label smoothing, BCE steps per stage step.
        # The paper trains 8B models with disc_lr 1e-5 and one update; on tiny models the
        # discriminator then stays near chance and the student random-walks (docs/didi.md), so the
        # defaults are the settings measured to work: 1e-3, 2 updates
        disc_lr: float = 1e-3
        disc_unfrozen_blocks: int = 4
        # complementary views of the visible tokens the discriminator reads (dare's addition, see
        # dare/algorithms/didi_discriminator.py; 1 = the paper's single pass)
        disc_views: int = 2
        # the views' surprise term is the frozen teacher's (True) or the trainable backbone's
        disc_frozen_surprise: bool = True
        label_smoothing: float = 0.1
        disc_updates: int = 2
        # stage steps that only train the discriminator first (the student's advantages are zero)
        disc_warmup_steps: int = 20
        # upper end of the extra forward noise on each state, as a fraction of its visible tokens
        # (1 = t uniform up to all-but-one masked, the paper's integral over t; 0 = each state is
        # scored at its own mask level, the default: extra noise hides the inconsistencies the
        # discriminator must find, measured 0 > 0.5 > 1 in docs/didi.md)
        noise_max: float = 0.0
        # weight of the intermediate states' rewards (intermediate-state matching, the paper's; > 0
        # scores every student state); 0 = the final samples only, the default: with the frozen-
        # surprise discriminator it reached the same accuracy at 1/S of the discriminator work
        # (docs/didi.md)
        intermediate_weight: float = 0.0

        def validate(self, key: str, file: Any) -> None:
            checks = {
                "num_generations": (self.num_generations >= 2, ">= 2 (a group)"),
                "student_steps": (self.student_steps >= 1, ">= 1"),
                "temperature": (self.temperature > 0, "> 0 (the score-function gradient needs a density)"),
                "disc_lr": (self.disc_lr > 0, "> 0"),
                "disc_unfrozen_blocks": (self.disc_unfrozen_blocks >= 1, ">= 1"),
                "disc_views": (self.disc_views >= 1, ">= 1"),
                "label_smoothing": (0 <= self.label_smoothing < 1, "in [0, 1)"),
                "disc_updates": (self.disc_updates >= 1, ">= 1"),
                "disc_warmup_steps": (self.disc_warmup_steps >= 0, ">= 0"),
                "intermediate_weight": (self.intermediate_weight >= 0, ">= 0"),
                "noise_max": (0 <= self.noise_max <= 1, "in [0, 1]"),
            }
            check_fields(self, checks, key, file)
            from dare.sampling import SamplingConfig

            try:
                SamplingConfig(**{"gen_length": 1, **self.teacher_sampling, "steps": None})
            except (TypeError, ValueError) as e:
                raise RecipeError(file, f"{key}.teacher_sampling", str(e)) from None

    def __init__(self, args: Any, spec) -> None:
        super().__init__(args, spec)
        self.discriminator: DiffusionDiscriminator | None = None
        self.disc_optimizer: torch.optim.Optimizer | None = None
        self._metrics: dict[str, float] = {}
        self._pending_state: dict[str, Any] | None = None  # restored before the discriminator exists

    def extra_state(self) -> dict[str, Any] | None:
        """The discriminator and its Adam state, saved with the actor's training state."""
        if self.discriminator is None:
            return None
        return {"discriminator": self.discriminator.state_dict(), "disc_optimizer": self.disc_optimizer.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore `extra_state()`; applied when the discriminator is built (first `prepare`)."""
        self._pending_state = state
        if self.discriminator is not None:
            self._apply_pending_state()

    def _apply_pending_state(self) -> None:
        self.discriminator.load_state_dict(self._pending_state["discriminator"])
        self.disc_optimizer.load_state_dict(self._pending_state["disc_optimizer"])
        self._pending_state = None

    @property
    def needs_reference(self) -> bool:
        return True  # the actor's frozen copy of the policy at stage start is the teacher

    # ----------------------------------------------------------------- discriminator

    def build_discriminator(self, teacher: torch.nn.Module, seed: int | None = None) -> None:
        """The discriminator from the teacher: the colocated frozen copy, or the separate
        reference's stand-in (it has `local_copy`). Separate, the teacher's weights are fetched once
        into a local module that becomes the backbone, and the frozen surprise forwards run on the
        reference worker: the actor holds the policy and the discriminator (a trainable copy of the
        backbone either way), not the teacher and the discriminator's frozen copy of it, i.e. two
        model copies fewer; the discriminator's own memory (its backbone, grads, Adam) stays.

        `seed` draws the new head's initial weights (else the global RNG, whose state depends on
        what the process ran before, e.g. whether it sampled the teacher itself)."""
        local_copy = getattr(teacher, "local_copy", None)
        remote = local_copy is not None
        backbone = local_copy() if remote else teacher
        device = next(backbone.parameters()).device
        with torch.random.fork_rng(devices=[]):  # the head is built on the CPU, then moved
            if seed is not None:
                torch.manual_seed(seed)
            self.discriminator = DiffusionDiscriminator(
                backbone, self.args.disc_unfrozen_blocks, views=self.args.disc_views,
                frozen_surprise=self.args.disc_frozen_surprise,
                surprise_model=teacher if remote else None, copy_teacher=not remote,
            )  # fmt: skip
        self.discriminator.to(device)
        params = [p for p in self.discriminator.parameters() if p.requires_grad]
        self.disc_optimizer = torch.optim.Adam(params, lr=self.args.disc_lr, betas=(0.9, 0.999))
        if self._pending_state is not None:
            self._apply_pending_state()

    def discriminator_logits(
        self, prompt_ids, prompt_mask, z: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Sequence logits `[M]` of noised responses z `[M, L]` after their prompts `[M, P]`
        (`generator` draws the discriminator's complementary views)."""
        ids = torch.cat([prompt_ids, z], 1)
        valid = torch.cat([prompt_mask.bool(), torch.ones_like(z, dtype=torch.bool)], 1)
        resp = torch.cat([torch.zeros_like(prompt_mask, dtype=torch.bool), torch.ones_like(z, dtype=torch.bool)], 1)
        return self.discriminator.sequence_logit(ids, valid, resp, t, generator)

    def discriminator_step(
        self, prompt_ids, prompt_mask, z_student, z_teacher, t, generator=None, final_rows: int | None = None
    ) -> dict[str, float]:
        """One BCE step on noised student (label 1) and teacher (label 0) responses `[M, L]`."""
        D = self.discriminator.train()
        ids = torch.cat([prompt_ids, prompt_ids])
        mask = torch.cat([prompt_mask, prompt_mask])
        logits = self.discriminator_logits(ids, mask, torch.cat([z_student, z_teacher]), torch.cat([t, t]), generator)
        if not bool(D.bias_initialised):  # first step: centre the logits on this batch
            D.init_bias(logits)
            logits = logits - logits.median().detach()  # the value with the new bias
        is_student = torch.cat([torch.ones_like(t), torch.zeros_like(t)])
        loss = F.binary_cross_entropy_with_logits(logits, smoothed_targets(is_student, self.args.label_smoothing))
        self.disc_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for p in D.parameters() if p.grad is not None]
        if dist.is_initialized() and dist.get_world_size() > 1:  # data-parallel replicas stay identical
            for p in params:
                dist.all_reduce(p.grad)
                p.grad /= dist.get_world_size()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        self.disc_optimizer.step()
        hit = ((logits > 0).double() == is_student).double().view(2, -1)  # [student | teacher, S'*N]
        final = hit[:, -final_rows:] if final_rows else hit  # states are state-major: the clean samples last
        return {"disc/loss": float(loss.detach()), "disc/accuracy": float(hit.mean()),
                "disc/accuracy_final": float(final.mean())}  # fmt: skip

    # ----------------------------------------------------------------- the step

    def prepare(self, model, reference, batch):
        a, spec = self.args, self.spec
        G, S = a.num_generations, a.student_steps
        ids, mask = batch["input_ids"], batch["attention_mask"]
        N, L = batch["teacher_response"].shape
        if N % G:
            raise ValueError(
                f"didi_instruct: a worker got {N} rows, not whole groups of num_generations={G}; "
                "make stage.batch_size divisible by resources.num_workers"
            )
        if self.discriminator is None:
            with reference() as teacher:  # the first batch's noise seed: from the recipe seed, stage and step
                self.build_discriminator(teacher, seed=int(batch["noise_seed"][0]))
        gen = torch.Generator(device=ids.device).manual_seed(int(batch["noise_seed"][0]))
        traj = sample_trajectory(model, spec, ids, mask, L, S, a.temperature, a.remasking, gen)
        after = states_after_steps(traj.response, traj.step_of, S, spec.mask_token_id)  # [S, N, L]
        # intermediate states only matter with intermediate-state matching; else score the samples
        scored = after if a.intermediate_weight > 0 else after[-1:]  # [S', N, L]
        S2 = scored.shape[0]
        z_s, z_t, t = noise_pair(
            scored.reshape(S2 * N, L), batch["teacher_response"].repeat(S2, 1), spec.mask_token_id, gen, a.noise_max
        )  # [S'*N, L] each, t [S'*N]
        p_ids, p_mask = ids.repeat(S2, 1), mask.repeat(S2, 1)
        metrics: dict[str, float] = {}
        for _ in range(a.disc_updates):
            metrics = self.discriminator_step(p_ids, p_mask, z_s, z_t, t, gen, final_rows=N)
        with torch.no_grad():
            self.discriminator.eval()
            logit = self.discriminator_logits(p_ids, p_mask, z_s, t, gen).view(S2, N).T  # [N, S']
            logit = torch.cat([logit.new_zeros(N, S - S2), logit], 1)  # [N, S], unscored states: 0
            lr = log_ratio(logit, a.label_smoothing)
        # the reward is minus the logit, not minus log_ratio(logit): with label smoothing the
        # inverse saturates once D leaves (eps/2, 1 - eps/2) (|logit| > ~2.9 at eps 0.1, common for
        # a sum over positions) and every such state would get the same reward; the logit orders
        # states the same way inside that range and keeps ordering them outside it
        rewards = -logit.float()  # [N, S]
        adv = step_advantages(group_normalise(rewards, G), a.intermediate_weight)  # [N, S]
        if int(batch["step"][0]) < a.disc_warmup_steps:
            adv = torch.zeros_like(adv)
        metrics.update({
            "reward/mean": float(rewards[:, -1].mean()),
            "reward/std": float(rewards[:, -1].std()),
            "didi/log_ratio_final": float(lr[:, -1].mean()),
            "didi/log_ratio_intermediate": float(lr[:, :-1].mean()) if S2 > 1 else 0.0,
            "didi/student_eos_rate": float((traj.response == spec.eos_token_id).float().mean()),
        })  # fmt: skip
        self._metrics = metrics
        return [{"input_ids": ids, "attention_mask": mask, "response": traj.response, "step_of": traj.step_of,
                 "advantages": adv}]  # fmt: skip

    def compute_loss(self, model, batch):
        a = self.args
        token_lp = trajectory_token_logp(
            model,
            self.spec,
            batch["input_ids"],
            batch["attention_mask"],
            batch["response"],
            batch["step_of"],
            a.student_steps,
            a.temperature,
        )  # [N, L]  fmt: skip
        lp = per_step_logp(token_lp, batch["step_of"], a.student_steps)  # [N, S]
        L = batch["response"].shape[1]
        loss = -(batch["advantages"] * lp).sum(-1).mean() / L
        return loss, {
            **self._metrics,
            "actor/pg_loss": float(loss.detach()),
            "actor/logp": float(lp.sum(-1).mean().detach()),
        }


__all__ = ["DiDiInstruct", "group_normalise", "noise_pair", "states_after_steps", "step_advantages"]
