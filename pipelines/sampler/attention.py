"""Reference attention bias for IC-LoRA, done right (SPEC.md 2).

Each reference token r carries a weight w_r = attention_strength x mask_r in [0, 1]. In VIDEO SELF-ATTENTION
(attn1) the logit between a target (noisy) token and a reference token gets an additive bias log(w_r), in BOTH
directions (target query -> reference key and reference query -> target key); target<->target and
reference<->reference stay unbiased; w <= 0 is a hard mask. That equals multiplying exp(score) by w before the
softmax renormalises.

diffusers 0.42.1 turns the same [0, 1] weights into a LINEAR bias (1 - w) * -10000 (so any fractional strength is
a hard mask) and builds a dense tokens x tokens mask per head. We never pass it a mask; instead the attn1
processors are replaced by ReferenceBiasAttnProcessor, which folds the bias into two extra head channels:

    q' = [q, a_q / s, b_q / s, 0...]      k' = [k, c_k, d_k, 0...]      (s = the softmax scale, 1/sqrt(head_dim))
    target query:    a_q = 0,          b_q = 1        target key:    c_k = 1, d_k = 0
    reference query: a_q = log w_q,    b_q = 0        reference key: c_k = 0, d_k = log w_k

so s * q'.k' = s * q.k + bias(q, k) exactly, for every pair, and one unmasked SDPA call (flash / memory-efficient
kernels, memory linear in tokens) computes the biased attention. Head dims are padded to a multiple of 8 so fused
kernels stay usable; v is zero-padded and the pad is sliced off. Cost: 8/head_dim more attention FLOPs.

Processor state lives on a shared ReferenceBiasState object (diffusers does not forward attention_kwargs to
processors). With no reference weights set (strength 1, no mask) the processor runs diffusers' stock code.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.models.transformers.transformer_ltx2 import (LTX2PerturbedAttnProcessor, apply_interleaved_rotary_emb,
                                                            apply_split_rotary_emb)

# log(w) for w <= 0. exp(-1e4) underflows to exactly 0 in fp32/bf16/fp16 softmax: a hard mask without the NaNs
# that -inf * 0 would give in the channel trick.
HARD_MASK_LOG = -1.0e4


@dataclass
class ReferenceBiasState:
    """What the processors need for one denoising run. `log_w` is None -> no bias (fast path)."""

    num_target_tokens: int = 0
    log_w: torch.Tensor | None = None  # [R] float32, log of per-reference-token weight
    calls: int = field(default=0, repr=False)  # how many biased attention calls ran (for tests / sanity)

    def set(self, num_target_tokens: int, weights: torch.Tensor | None) -> None:
        """weights: [R] in [0, 1] or None. All ones -> None (exactly the unbiased path)."""
        self.num_target_tokens = int(num_target_tokens)
        self.calls = 0
        if weights is None or bool(torch.all(weights >= 1.0)):
            self.log_w = None
            return
        w = weights.detach().to(torch.float32).clamp(max=1.0)
        self.log_w = torch.where(w > 0, torch.log(w.clamp(min=1e-30)), torch.full_like(w, HARD_MASK_LOG)).clamp(min=HARD_MASK_LOG)

    def clear(self) -> None:
        self.num_target_tokens = 0
        self.log_w = None


def _pad_to(x: torch.Tensor, width: int) -> torch.Tensor:
    return F.pad(x, (0, width - x.shape[-1]))


def biased_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_target: int, log_w: torch.Tensor) -> torch.Tensor:
    """Attention with the reference log bias. q, k, v: [B, H, T, D]; tokens [0, num_target) are targets, the rest
    references with log weights log_w [R]. Returns [B, H, T, D]."""
    b, h, t, d = q.shape
    r = t - num_target
    if r != log_w.numel():
        raise RuntimeError(f"reference bias expects {num_target}+{log_w.numel()} tokens, attention got {t}")
    scale = 1.0 / math.sqrt(d)
    width = (d + 2 + 7) // 8 * 8
    dt, dev = q.dtype, q.device
    lw = log_w.to(device=dev, dtype=torch.float32)
    zeros_t = torch.zeros(num_target, device=dev, dtype=torch.float32)
    ones_t = torch.ones(num_target, device=dev, dtype=torch.float32)
    zeros_r = torch.zeros(r, device=dev, dtype=torch.float32)
    ones_r = torch.ones(r, device=dev, dtype=torch.float32)
    # query channels (a, b) / s ; key channels (c, d)
    qa = torch.cat([zeros_t, lw]) / scale
    qb = torch.cat([ones_t, zeros_r]) / scale
    kc = torch.cat([ones_t, zeros_r])
    kd = torch.cat([zeros_t, lw])
    q_extra = torch.stack([qa, qb], dim=-1).to(dt).expand(b, h, t, 2)
    k_extra = torch.stack([kc, kd], dim=-1).to(dt).expand(b, h, t, 2)
    q2 = _pad_to(torch.cat([q, q_extra], dim=-1), width)
    k2 = _pad_to(torch.cat([k, k_extra], dim=-1), width)
    v2 = _pad_to(v, width)
    out = F.scaled_dot_product_attention(q2, k2, v2, dropout_p=0.0, is_causal=False, scale=scale)
    return out[..., :d]


class ReferenceBiasAttnProcessor(LTX2PerturbedAttnProcessor):
    """attn1 processor: diffusers' LTX-2 perturbed/gated attention plus the reference log bias."""

    def __init__(self, state: ReferenceBiasState):
        super().__init__()
        self.state = state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, query_rotary_emb=None,
                 key_rotary_emb=None, perturbation_mask=None, all_perturbed=None):
        st = self.state
        if st.log_w is None or encoder_hidden_states is not None or attention_mask is not None:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, query_rotary_emb,
                                    key_rotary_emb, perturbation_mask, all_perturbed)
        if attn.to_gate_logits is not None:
            gate_logits = attn.to_gate_logits(hidden_states)
        value = attn.to_v(hidden_states)
        if all_perturbed is None:
            all_perturbed = bool(torch.all(perturbation_mask == 0)) if perturbation_mask is not None else False
        if all_perturbed:
            out = value
        else:
            query = attn.norm_q(attn.to_q(hidden_states))
            key = attn.norm_k(attn.to_k(hidden_states))
            if query_rotary_emb is not None:
                rope = apply_split_rotary_emb if attn.rope_type == "split" else apply_interleaved_rotary_emb
                query = rope(query, query_rotary_emb)
                key = rope(key, key_rotary_emb if key_rotary_emb is not None else query_rotary_emb)
            q = query.unflatten(2, (attn.heads, -1)).transpose(1, 2)
            del query
            k = key.unflatten(2, (attn.heads, -1)).transpose(1, 2)
            del key
            v = value.unflatten(2, (attn.heads, -1)).transpose(1, 2)
            out = biased_sdpa(q, k, v, st.num_target_tokens, st.log_w)
            del q, k, v
            out = out.transpose(1, 2).flatten(2, 3).to(hidden_states.dtype)
            st.calls += 1
            if perturbation_mask is not None:
                out = torch.lerp(value, out, perturbation_mask)
        if attn.to_gate_logits is not None:
            out = out.unflatten(2, (attn.heads, -1))
            out = (out * (2.0 * torch.sigmoid(gate_logits)).unsqueeze(-1)).flatten(2, 3)
        out = attn.to_out[0](out)
        return attn.to_out[1](out)


def install_reference_bias(transformer) -> ReferenceBiasState:
    """Replace every video self-attention (attn1) processor with ours, sharing one state. Idempotent."""
    existing = getattr(transformer, "_iclora_bias_state", None)
    if existing is not None:
        return existing
    state = ReferenceBiasState()
    for block in transformer.transformer_blocks:
        block.attn1.set_processor(ReferenceBiasAttnProcessor(state))
    transformer._iclora_bias_state = state
    return state
