"""Reference attention bias for IC-LoRA, done right (SPEC.md 2), with Lightricks' token groups (SPEC.md 11).

Tokens [0, N) are the target (noisy) tokens; after them come appended groups (keyframes, then one group per
reference video). Each appended token r carries a weight w_r = attention_strength x mask_r in [0, 1]. In VIDEO
SELF-ATTENTION (attn1) ltx-core (`conditioning/mask_utils.build_attention_mask`) gives the pair (i, j):

    target <-> target                       1
    target <-> appended token r             w_r   (both directions)
    appended <-> appended, same group       1
    appended <-> appended, other group      0     (once any group carries an attention mask)

applied as an additive log bias log(w) on the logits (w <= 0 -> hard mask). That equals multiplying exp(score) by w
before the softmax renormalises.

diffusers 0.42.1 turns the same [0, 1] weights into a LINEAR bias (1 - w) * -10000 (so any fractional strength is
a hard mask) and builds a dense tokens x tokens mask per head. We never pass it a mask; instead the attn1
processors are replaced by ReferenceBiasAttnProcessor, which folds the bias into extra head channels:

    q' = [q, a_q / s, b_q / s, g_q / s, 0...]      k' = [k, c_k, d_k, e_k, 0...]   (s = 1/sqrt(head_dim))
    target query:    a_q = 0,        b_q = 1,  g_q = 0        target key:    c_k = 1, d_k = 0,        e_k = 0
    appended query:  a_q = log w_q,  b_q = 0,                 appended key:  c_k = 0, d_k = log w_k,
                     g_q[h] = HARD if the query is not in group h, else 0      e_k[h] = 1 if the key is in group h

so s * q'.k' = s * q.k + bias(q, k) exactly, for every pair (exactly one group channel is non-zero for a pair of
appended tokens in different groups, none otherwise: no cancellation of large numbers), and one unmasked SDPA call
(flash / memory-efficient kernels, memory linear in tokens) computes the biased attention. The group channels exist
only when there are two or more groups. Head dims are padded to a multiple of 8 so fused kernels stay usable; v is
zero-padded and the pad is sliced off. Cost: (2 + groups, rounded up to 8) / head_dim more attention FLOPs.

The same processors carry spatio-temporal guidance (STG): in the blocks listed on the state, video (audio)
self-attention is skipped (its value projection passes through), as ltx-core's SKIP_VIDEO_SELF_ATTN /
SKIP_AUDIO_SELF_ATTN perturbations do.

Processor state lives on a shared ReferenceBiasState object (diffusers does not forward attention_kwargs to
processors). With no bias set (no mask, strength 1) the processor runs diffusers' stock code.
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
    """What the processors need for one model call. `log_w` is None -> no bias (fast path)."""

    num_target_tokens: int = 0
    log_w: torch.Tensor | None = None  # [R] float32, log of each appended token's weight
    groups: torch.Tensor | None = None  # [R] int64 group of each appended token; None = all in one group
    num_groups: int = 0  # group channels in use (0 when there is at most one group)
    skip_video_blocks: frozenset = frozenset()  # STG: blocks whose video self-attention is skipped
    skip_audio_blocks: frozenset = frozenset()  # STG: blocks whose audio self-attention is skipped
    calls: int = field(default=0, repr=False)  # how many biased attention calls ran (for tests / sanity)

    def set(self, num_target_tokens: int, weights: torch.Tensor | None, groups: torch.Tensor | None = None) -> None:
        """weights: [R] in [0, 1] or None (= all 1). groups: [R] group ids or None (= one group). All ones in one
        group -> no bias at all (exactly the unbiased path)."""
        self.num_target_tokens = int(num_target_tokens)
        self.calls = 0
        ids = None
        if groups is not None and groups.numel():
            uniq, ids = torch.unique(groups.detach().to("cpu", torch.int64), return_inverse=True)
            ids = ids if len(uniq) > 1 else None
        if ids is None and (weights is None or bool(torch.all(weights >= 1.0))):
            self.log_w, self.groups, self.num_groups = None, None, 0
            return
        if weights is None:
            weights = torch.ones(len(groups))
        w = weights.detach().to(torch.float32).clamp(max=1.0)
        if ids is not None and ids.numel() != w.numel():
            raise ValueError(f"{w.numel()} weights for {ids.numel()} grouped tokens")
        self.log_w = torch.where(w > 0, torch.log(w.clamp(min=1e-30)), torch.full_like(w, HARD_MASK_LOG)).clamp(min=HARD_MASK_LOG)
        self.groups = ids
        self.num_groups = 0 if ids is None else int(ids.max()) + 1

    def to(self, device) -> "ReferenceBiasState":
        if self.log_w is not None:
            self.log_w = self.log_w.to(device)
        if self.groups is not None:
            self.groups = self.groups.to(device)
        return self

    def clear(self) -> None:
        self.num_target_tokens = 0
        self.log_w = None
        self.groups = None
        self.num_groups = 0
        self.skip_video_blocks = frozenset()
        self.skip_audio_blocks = frozenset()


def _head_width(d: int, num_groups: int = 0) -> int:
    """Head dim plus the bias channels, rounded up to a multiple of 8 (fused kernels stay usable)."""
    return (d + 2 + num_groups + 7) // 8 * 8


def _padded(x: torch.Tensor, width: int) -> torch.Tensor:
    """[B, H, T, D] (any strides) -> a zero-padded contiguous [B, H, T, width] copy, in ONE allocation (no
    cat-then-pad intermediates: this is what keeps the processor's memory close to the stock path)."""
    out = x.new_zeros((*x.shape[:-1], width))
    out[..., : x.shape[-1]].copy_(x)
    return out


def _write_bias_channels(q2: torch.Tensor, k2: torch.Tensor, d: int, num_target: int, log_w: torch.Tensor,
                         scale: float, groups: torch.Tensor | None = None, num_groups: int = 0) -> None:
    """Fill the bias channels of the padded q'/k' (module docstring): s * q'.k' = s * q.k + bias."""
    t = q2.shape[-2]
    if t - num_target != log_w.numel():
        raise RuntimeError(f"reference bias expects {num_target}+{log_w.numel()} tokens, attention got {t}")
    lw = log_w.to(device=q2.device, dtype=torch.float32)
    q2[..., num_target:, d] = (lw / scale).to(q2.dtype)
    q2[..., :num_target, d + 1] = 1.0 / scale
    k2[..., :num_target, d] = 1.0
    k2[..., num_target:, d + 1] = lw.to(k2.dtype)
    if num_groups > 1:
        g = groups.to(q2.device)
        for h in range(num_groups):
            inside = g == h
            q2[..., num_target:, d + 2 + h] = torch.where(inside, 0.0, HARD_MASK_LOG / scale).to(q2.dtype)
            k2[..., num_target:, d + 2 + h] = inside.to(k2.dtype)


def _sdpa_padded(q2: torch.Tensor, k2: torch.Tensor, v2: torch.Tensor, d: int) -> torch.Tensor:
    out = F.scaled_dot_product_attention(q2, k2, v2, dropout_p=0.0, is_causal=False, scale=1.0 / math.sqrt(d))
    return out[..., :d]


def _attend(q2: torch.Tensor, k2: torch.Tensor, v2: torch.Tensor, d: int, st: ReferenceBiasState,
            parallel_config=None, backend=None) -> torch.Tensor:
    """Biased attention of the padded [B, H, T, width] q'/k'/v' -> [B, H, T, d]. Under context parallelism
    (pipelines.parallel) this rank holds tokens [off, off + T) of the sequence: their bias channels are written
    here, they travel with their tokens, and diffusers' dispatch (Ulysses / ring) makes the attention span every
    rank, so the log bias stays exact. ``backend``: the processor's diffusers attention backend (ring attention
    needs one that returns the log-sum-exp)."""
    scale = 1.0 / math.sqrt(d)
    if parallel_config is None:
        _write_bias_channels(q2, k2, d, st.num_target_tokens, st.log_w, scale, st.groups, st.num_groups)
        return _sdpa_padded(q2, k2, v2, d)
    from diffusers.models.attention_dispatch import dispatch_attention_fn

    t, n = q2.shape[-2], st.num_target_tokens
    off = _shard_offset(t, n + st.log_w.numel(), parallel_config)
    mine = slice(max(0, off - n), max(0, off + t - n))  # this rank's appended tokens
    _write_bias_channels(q2, k2, d, min(max(n - off, 0), t), st.log_w[mine], scale,
                         st.groups[mine] if st.groups is not None else None, st.num_groups)
    out = dispatch_attention_fn(q2.transpose(1, 2), k2.transpose(1, 2), v2.transpose(1, 2), scale=scale,
                                backend=backend, parallel_config=parallel_config)
    return out.transpose(1, 2)[..., :d]


def _shard_offset(local: int, total: int, parallel_config) -> int:
    """Where this rank's tokens start: diffusers splits the sequence as ``tensor_split`` does (evenly, the first
    ranks one token longer when it does not divide)."""
    import torch.distributed as dist

    mesh = parallel_config.context_parallel_config._flattened_mesh
    rank, world = dist.get_rank(mesh.get_group()), mesh.size()
    base, extra = divmod(total, world)
    if local != base + (1 if rank < extra else 0):
        raise RuntimeError(f"context parallel: rank {rank} holds {local} of {total} tokens, not its even share")
    return rank * base + min(rank, extra)


def biased_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_target: int, log_w: torch.Tensor,
                groups: torch.Tensor | None = None) -> torch.Tensor:
    """Attention with the reference log bias. q, k, v: [B, H, T, D]; tokens [0, num_target) are targets, the rest
    appended tokens with log weights log_w [R] and group ids `groups` [R] (None: one group). Returns [B, H, T, D]
    (a view into the padded output)."""
    d = q.shape[-1]
    if q.shape[-2] - num_target != log_w.numel():
        raise RuntimeError(f"reference bias expects {num_target}+{log_w.numel()} tokens, attention got {q.shape[-2]}")
    num_groups = 0
    if groups is not None:
        groups = torch.unique(groups, return_inverse=True)[1]
        num_groups = int(groups.max()) + 1 if groups.numel() else 0
        num_groups = num_groups if num_groups > 1 else 0
    width = _head_width(d, num_groups)
    q2, k2 = _padded(q, width), _padded(k, width)
    _write_bias_channels(q2, k2, d, num_target, log_w, 1.0 / math.sqrt(d), groups, num_groups)
    return _sdpa_padded(q2, k2, _padded(v, width), d)


class ReferenceBiasAttnProcessor(LTX2PerturbedAttnProcessor):
    """attn1 processor: diffusers' LTX-2 perturbed/gated attention plus the reference log bias and STG skipping."""

    def __init__(self, state: ReferenceBiasState, block: int = -1):
        super().__init__()
        self.state = state
        self.block = block

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, query_rotary_emb=None,
                 key_rotary_emb=None, perturbation_mask=None, all_perturbed=None):
        st = self.state
        if self.block in st.skip_video_blocks:
            all_perturbed = True
        if (st.log_w is None or all_perturbed is True or encoder_hidden_states is not None
                or attention_mask is not None):
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
            d = query.shape[-1] // attn.heads
            width = _head_width(d, st.num_groups)
            # straight into the padded [B, H, T, width] buffers, dropping each unpadded tensor at once
            q2 = _padded(query.unflatten(2, (attn.heads, -1)).transpose(1, 2), width)
            del query
            k2 = _padded(key.unflatten(2, (attn.heads, -1)).transpose(1, 2), width)
            del key
            v2 = _padded(value.unflatten(2, (attn.heads, -1)).transpose(1, 2), width)
            if perturbation_mask is None:
                del value
            out = _attend(q2, k2, v2, d, st, self._parallel_config, self._attention_backend)
            del q2, k2, v2
            out = out.transpose(1, 2).flatten(2, 3).to(hidden_states.dtype)
            st.calls += 1
            if perturbation_mask is not None:
                out = torch.lerp(value, out, perturbation_mask)
        if attn.to_gate_logits is not None:
            out = out.unflatten(2, (attn.heads, -1))
            out = (out * (2.0 * torch.sigmoid(gate_logits)).unsqueeze(-1)).flatten(2, 3)
        out = attn.to_out[0](out)
        return attn.to_out[1](out)


class AudioSkipAttnProcessor(LTX2PerturbedAttnProcessor):
    """audio_attn1 processor: diffusers' stock one, skipped (value passthrough) in the state's audio STG blocks."""

    def __init__(self, state: ReferenceBiasState, block: int = -1):
        super().__init__()
        self.state = state
        self.block = block

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, query_rotary_emb=None,
                 key_rotary_emb=None, perturbation_mask=None, all_perturbed=None):
        if self.block in self.state.skip_audio_blocks:
            all_perturbed = True
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, query_rotary_emb,
                                key_rotary_emb, perturbation_mask, all_perturbed)


def install_reference_bias(transformer) -> ReferenceBiasState:
    """Replace every video self-attention (attn1) processor with ours and every audio self-attention processor
    with the STG-aware stock one, sharing one state. Idempotent."""
    existing = getattr(transformer, "_iclora_bias_state", None)
    if existing is not None:
        return existing
    state = ReferenceBiasState()
    for i, block in enumerate(transformer.transformer_blocks):
        block.attn1.set_processor(ReferenceBiasAttnProcessor(state, i))
        if hasattr(block, "audio_attn1"):
            block.audio_attn1.set_processor(AudioSkipAttnProcessor(state, i))
    transformer._iclora_bias_state = state
    return state
