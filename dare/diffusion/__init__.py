"""Diffusion math: forward noising (masks, schedules) and the SFT / ELBO losses of masked and
block diffusion LMs. Pure tensor functions; randomness only through an explicit `torch.Generator`;
family differences only through `DiffusionSpec`."""

from dare.diffusion.noise import (
    DEFAULT_EPS,
    MaskedNoise,
    apply_mask,
    bernoulli_mask,
    block_forward_noise,
    block_ids,
    complementary_masks,
    forward_noise,
    mask_exact_count,
    sample_block_p_mask,
    sample_p_mask,
    stratified_mask_counts,
)
from dare.diffusion.sft import (
    SFT_OBJECTIVES,
    SftBatch,
    SftObjective,
    answer_normalised_mean,
    batch_nll,
    block_diffusion_attention_mask,
    masked_ce_sum,
    padding_position_ids,
    sft_loss,
    sft_nll,
)

__all__ = [
    "DEFAULT_EPS",
    "SFT_OBJECTIVES",
    "MaskedNoise",
    "SftBatch",
    "SftObjective",
    "answer_normalised_mean",
    "apply_mask",
    "batch_nll",
    "bernoulli_mask",
    "block_diffusion_attention_mask",
    "block_forward_noise",
    "block_ids",
    "complementary_masks",
    "forward_noise",
    "mask_exact_count",
    "masked_ce_sum",
    "padding_position_ids",
    "sample_block_p_mask",
    "sample_p_mask",
    "sft_loss",
    "sft_nll",
    "stratified_mask_counts",
]
