"""The reference log bias (pipelines.sampler.attention) against straightforward dense implementations."""
from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from pipelines.sampler.attention import (HARD_MASK_LOG, ReferenceBiasAttnProcessor,  # noqa: E402
                                         ReferenceBiasState, biased_sdpa)


def dense_log_bias(num_target: int, weights: torch.Tensor, hard=-math.inf) -> torch.Tensor:
    """[T, T] additive bias: log(w) between a target and a reference token (both directions), 0 elsewhere."""
    r = weights.numel()
    t = num_target + r
    lw = torch.where(weights > 0, torch.log(weights.clamp(min=1e-30)), torch.full_like(weights, hard))
    bias = torch.zeros(t, t, dtype=torch.float64)
    bias[:num_target, num_target:] = lw[None, :]  # target query -> reference key
    bias[num_target:, :num_target] = lw[:, None]  # reference query -> target key
    return bias


def dense_attention(q, k, v, bias):
    """softmax(q k^T / sqrt(d) + bias) v in float64: the textbook formula."""
    q, k, v = q.double(), k.double(), v.double()
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + bias
    return torch.softmax(logits, dim=-1) @ v


def _qkv(b=2, h=3, t=20, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, t, d, generator=g) for _ in range(3)]


@pytest.mark.parametrize("d", [16, 64, 13])
def test_biased_sdpa_matches_dense_log_bias(d):
    q, k, v = _qkv(d=d)
    n_t = 12
    w = torch.tensor([0.5, 0.1, 1.0, 0.9, 0.25, 0.7, 0.05, 0.33])
    state = ReferenceBiasState()
    state.set(n_t, w)
    out = biased_sdpa(q, k, v, n_t, state.log_w)
    ref = dense_attention(q, k, v, dense_log_bias(n_t, w))
    assert out.shape == q.shape
    assert (out.double() - ref).abs().max().item() < 1e-5


def test_hard_mask_at_zero_equals_minus_inf_mask():
    q, k, v = _qkv()
    n_t = 12
    w = torch.tensor([0.0, 0.0, 1.0, 0.5, 0.0, 1.0, 0.0, 0.2])
    state = ReferenceBiasState()
    state.set(n_t, w)
    assert float(state.log_w.min()) == HARD_MASK_LOG
    out = biased_sdpa(q, k, v, n_t, state.log_w)
    ref = dense_attention(q, k, v, dense_log_bias(n_t, w, hard=-math.inf))
    assert (out.double() - ref).abs().max().item() < 1e-5
    # and a fully masked reference = the target attending only to itself
    zero = torch.zeros(8)
    state.set(n_t, zero)
    out0 = biased_sdpa(q, k, v, n_t, state.log_w)
    alone = dense_attention(q[:, :, :n_t], k[:, :, :n_t], v[:, :, :n_t], 0.0)
    assert (out0[:, :, :n_t].double() - alone).abs().max().item() < 1e-5


def test_state_all_ones_is_inactive():
    st = ReferenceBiasState()
    st.set(10, torch.ones(6))
    assert st.log_w is None
    st.set(10, None)
    assert st.log_w is None
    st.set(10, torch.full((6,), 0.5))
    assert st.log_w is not None and torch.allclose(st.log_w, torch.full((6,), math.log(0.5)))
    st.clear()
    assert st.log_w is None and st.num_target_tokens == 0


def test_biased_sdpa_rejects_wrong_token_count():
    q, k, v = _qkv()
    with pytest.raises(RuntimeError, match="reference bias expects"):
        biased_sdpa(q, k, v, 12, torch.zeros(3))


def _attn_module(heads=2, dim_head=16, seed=0):
    from diffusers.models.transformers.transformer_ltx2 import LTX2Attention

    torch.manual_seed(seed)
    mod = LTX2Attention(query_dim=heads * dim_head, heads=heads, kv_heads=heads, dim_head=dim_head, bias=True,
                        out_bias=True, rope_type="split", apply_gated_attention=True)
    mod.eval()
    for p in mod.parameters():  # gates are zero-initialised; randomise so the gated path is exercised
        torch.nn.init.normal_(p, std=0.2)
    return mod


def test_processor_inactive_state_equals_stock_path_exactly():
    from diffusers.models.transformers.transformer_ltx2 import LTX2PerturbedAttnProcessor

    mod = _attn_module()
    x = torch.randn(1, 20, 32)
    with torch.no_grad():
        mod.set_processor(LTX2PerturbedAttnProcessor())
        stock = mod(x)
        state = ReferenceBiasState()
        state.set(12, torch.ones(8))
        mod.set_processor(ReferenceBiasAttnProcessor(state))
        ours = mod(x)
    assert state.calls == 0
    assert torch.equal(stock, ours)


def _stock_cls():
    from diffusers.models.transformers.transformer_ltx2 import LTX2PerturbedAttnProcessor

    return LTX2PerturbedAttnProcessor


class DenseMaskProcessor(_stock_cls()):
    """Test-only: diffusers' stock processor given a dense [B, T, T] additive log-bias mask (the textbook way)."""

    def __init__(self, num_target: int, weights: torch.Tensor, hard=-math.inf):
        super().__init__()
        self.bias = dense_log_bias(num_target, weights, hard).float()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, query_rotary_emb=None,
                 key_rotary_emb=None, perturbation_mask=None, all_perturbed=None):
        if encoder_hidden_states is None and attention_mask is None:
            attention_mask = self.bias[None].expand(hidden_states.shape[0], -1, -1).to(hidden_states.dtype)
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, query_rotary_emb,
                                key_rotary_emb, perturbation_mask, all_perturbed)


def test_processor_matches_stock_processor_with_dense_log_mask():
    mod = _attn_module()
    x = torch.randn(2, 20, 32)
    w = torch.tensor([0.5, 0.0, 1.0, 0.3, 0.5, 0.8, 0.1, 0.0])
    with torch.no_grad():
        mod.set_processor(DenseMaskProcessor(12, w))
        ref = mod(x)
        state = ReferenceBiasState()
        state.set(12, w)
        mod.set_processor(ReferenceBiasAttnProcessor(state))
        ours = mod(x)
    assert state.calls == 1
    assert (ours - ref).abs().max().item() < 1e-5


def test_left_half_mask_changes_attention_only_for_left_half_reference_tokens():
    """Reference grid 2 frames x 2 x 4 latent; mask 0 on columns 0-1. The logit bias our channels add is nonzero
    only between targets and left-half reference tokens, and the attention probabilities among all other keys
    keep their ratios (only the renormalisation changes)."""
    n_t, f, hh, ww = 10, 2, 2, 4
    w = torch.ones(f, hh, ww)
    w[..., :2] = 0.0
    w = w.reshape(-1)
    left = torch.zeros(f, hh, ww, dtype=torch.bool)
    left[..., :2] = True
    left = left.reshape(-1)
    q, k, v = _qkv(b=1, h=2, t=n_t + w.numel(), d=16, seed=3)
    p_masked = torch.softmax(q.double() @ k.double().transpose(-1, -2) / 4 + dense_log_bias(n_t, w), -1)
    p_plain = torch.softmax(q.double() @ k.double().transpose(-1, -2) / 4, -1)
    # which (query, key) pairs got a different *unnormalised* weight: ratio p_masked / p_plain per row is a
    # constant except where the bias acts
    ratio = p_masked / p_plain
    row_const = ratio[..., :1]  # key 0 is a target key, unbiased for target queries and right-half refs
    changed = ~torch.isclose(ratio, row_const.expand_as(ratio), rtol=1e-9, atol=0)
    is_left_ref = torch.cat([torch.zeros(n_t, dtype=torch.bool), left])
    is_target = torch.cat([torch.ones(n_t, dtype=torch.bool), torch.zeros(w.numel(), dtype=torch.bool)])
    expected = (is_target[:, None] & is_left_ref[None, :]) | (is_left_ref[:, None] & is_target[None, :])
    # for left-ref query rows, key 0 itself is masked: compare against a reference key instead
    for qi in torch.nonzero(is_left_ref).flatten():
        changed[..., qi, :] = ~torch.isclose(ratio[..., qi, :], ratio[..., qi, -1:].expand_as(ratio[..., qi, :]), rtol=1e-9, atol=0)
    assert torch.equal(changed[0, 0], expected) and torch.equal(changed[0, 1], expected)
    # our kernel computes exactly that attention
    st = ReferenceBiasState()
    st.set(n_t, w)
    out = biased_sdpa(q, k, v, n_t, st.log_w)
    assert (out.double() - p_masked @ v.double()).abs().max().item() < 1e-5
