"""INT4/INT8 QAT and the packed INT4 model: exact where the math is exact, bounded where it rounds."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deltaguard.errors import ConfigError, FormatError
from deltaguard.guard.quant import (
    Int4Embedding, Int4Linear, QATEmbedding, QATLinear, convert_qat, dequantize_int4, fake_quant_int4,
    fake_quant_int8_per_token, int8_activation_codes, int8_channel_weight, int8_linear, load_packed_state, pack_int4,
    packed_state, prepare_qat, quantize_int4, quantized_size_bytes, set_compute_dtype, set_int8_matmuls, unpack_int4,
)
from tinymodels import make_tiny_llama

LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- packing -------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_cols", [2, 16, 17, 33])
def test_pack_round_trip_every_value_in_every_column(n_cols):
    # row r, column c holds ((r + c) mod 16) - 8: every value -8..7 appears in every (even and odd) column
    q = ((torch.arange(16)[:, None] + torch.arange(n_cols)[None, :]) % 16 - 8).to(torch.int8)
    packed = pack_int4(q)
    assert packed.dtype == torch.uint8 and packed.shape == (16, (n_cols + 1) // 2)
    assert torch.equal(unpack_int4(packed, n_cols), q)


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (7, 64), (2, 3, 9)])
def test_pack_round_trip_random_shapes(shape):
    q = torch.randint(-8, 8, shape, generator=_gen(sum(shape)), dtype=torch.int8)
    assert torch.equal(unpack_int4(pack_int4(q), shape[-1]), q)


def test_pack_nibble_order_and_odd_padding():
    # even column in the low nibble; an odd count pads the last high nibble with 0
    assert pack_int4(torch.tensor([[1, 2, -1]])).tolist() == [[0x21, 0x0F]]
    assert pack_int4(torch.tensor([[-8, 7]])).tolist() == [[0x78]]


def test_pack_refuses_out_of_range_and_bad_shapes():
    with pytest.raises(ConfigError):
        pack_int4(torch.tensor([[8, 0]]))
    with pytest.raises(ConfigError):
        pack_int4(torch.tensor([[0.5, 0.0]]))
    with pytest.raises(FormatError):
        unpack_int4(torch.zeros(2, 3, dtype=torch.uint8), 8)


# --- INT4 weights ---------------------------------------------------------------------------------

@pytest.mark.parametrize("group_size", [32, 64])
def test_quantize_error_within_half_a_step(group_size):
    w = torch.randn(24, 128, generator=_gen(group_size)) * torch.logspace(-3, 1, 24)[:, None]
    q, scales = quantize_int4(w, group_size)
    assert q.dtype == torch.int8 and q.shape == w.shape and scales.dtype == torch.float32
    assert scales.shape == (24, 128 // group_size)
    assert int(q.min()) >= -8 and int(q.max()) <= 7
    step = scales.repeat_interleave(group_size, dim=1)
    error = (dequantize_int4(q, scales, group_size) - w).abs()
    assert bool((error <= step / 2 * (1 + 1e-6)).all())
    # scale convention: the group's largest magnitude lands on ±7
    assert torch.equal(q.abs().unflatten(1, (-1, group_size)).amax(dim=2), torch.full_like(scales, 7, dtype=torch.int8))


def test_quantize_exact_on_the_grid():
    # power-of-two steps so scale = absmax / 7 is exact; each group reaches ±7
    codes = torch.randint(-7, 8, (6, 64), generator=_gen(3)).float()
    codes[:, ::32] = 7.0
    steps = 2.0 ** torch.randint(-8, 3, (6, 2), generator=_gen(4)).float()
    w = codes * steps.repeat_interleave(32, dim=1)
    q, scales = quantize_int4(w, 32)
    assert torch.equal(scales, steps)
    assert torch.equal(q.float(), codes)
    assert torch.equal(dequantize_int4(q, scales, 32), w)


def test_zero_group_gives_zeros_without_nan():
    w = torch.randn(2, 64, generator=_gen(5))
    w[0, :32] = 0.0
    q, scales = quantize_int4(w, 32)
    assert torch.isfinite(scales).all() and scales[0, 0] > 0
    out = dequantize_int4(q, scales, 32)
    assert torch.equal(out[0, :32], torch.zeros(32)) and torch.isfinite(out).all()
    assert torch.equal(fake_quant_int4(torch.zeros(3, 64), 32), torch.zeros(3, 64))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weight_refused(bad):
    w = torch.randn(4, 64)
    w[1, 3] = bad
    with pytest.raises(FormatError):
        quantize_int4(w, 32)


@pytest.mark.parametrize("group_size, dim", [(128, 576), (256, 576), (48, 64), (0, 64)])
def test_bad_group_size_is_a_one_line_config_error(group_size, dim):
    with pytest.raises(ConfigError) as info:
        quantize_int4(torch.randn(4, dim), group_size)
    message = str(info.value)
    assert "\n" not in message and str(group_size) in message
    if group_size:
        assert str(dim) in message


def test_bad_group_size_in_prepare_names_the_layer_and_changes_nothing():
    model = make_tiny_llama()
    with pytest.raises(ConfigError, match=r"group size 48 does not divide the input dim 64 of model\.layers\.0"):
        prepare_qat(model, group_size=48)
    assert not any(isinstance(m, (QATLinear, QATEmbedding)) for m in model.modules())


def test_fake_quant_int4_forward_and_straight_through_gradient():
    w = (torch.randn(16, 64, generator=_gen(6))).requires_grad_()
    out = fake_quant_int4(w, 32)
    q, scales = quantize_int4(w, 32)
    assert torch.equal(out, dequantize_int4(q, scales, 32))
    upstream = torch.randn(16, 64, generator=_gen(7))
    out.backward(upstream)
    assert torch.equal(w.grad, upstream)


# --- INT8 activations ----------------------------------------------------------------------------

def test_int8_per_token_error_within_half_a_step():
    x = torch.randn(4, 7, 96, generator=_gen(8)) * torch.logspace(-2, 2, 7)[None, :, None]
    x[0, 0] += 3.0   # a row that is all positive: the range still includes 0
    out = fake_quant_int8_per_token(x)
    lo = x.amin(dim=-1, keepdim=True).clamp(max=0)
    hi = x.amax(dim=-1, keepdim=True).clamp(min=0)
    step = (hi - lo) / 255
    assert bool(((out - x).abs() <= step / 2 * (1 + 1e-5)).all())
    # at most 256 distinct levels per token, and 0 is exact
    assert all(len(torch.unique(row)) <= 256 for row in out.reshape(-1, 96))
    x[1, 2, 5] = 0.0
    assert fake_quant_int8_per_token(x)[1, 2, 5] == 0.0


def test_int8_scoring_path_is_bit_identical_to_the_training_path():
    torch.manual_seed(3)
    x = torch.randn(3, 7, 64) * torch.rand(3, 7, 1) * 5
    trained = fake_quant_int8_per_token(x.clone().requires_grad_(True)).detach()
    with torch.no_grad():
        scored = fake_quant_int8_per_token(x)
    assert torch.equal(scored, trained) and scored.dtype == x.dtype
    assert not torch.equal(scored, x)   # it did quantise, and left its input alone
    assert torch.equal(fake_quant_int8_per_token(x), trained)   # no grad needed on x either


def test_int8_constant_rows_are_finite():
    x = torch.stack([torch.zeros(32), torch.full((32,), 5.0), torch.full((32,), -1e-30), torch.full((32,), 1e-42)])
    out = fake_quant_int8_per_token(x)
    assert torch.isfinite(out).all()
    assert torch.equal(out[0], torch.zeros(32))
    assert torch.allclose(out[1], x[1], rtol=1e-6)


def test_int8_straight_through_gradient():
    x = torch.randn(3, 5, 32, generator=_gen(9)).requires_grad_()
    upstream = torch.randn(3, 5, 32, generator=_gen(10))
    fake_quant_int8_per_token(x).backward(upstream)
    assert torch.equal(x.grad, upstream)


# --- QAT on a tiny Llama --------------------------------------------------------------------------

@pytest.mark.parametrize("tied", [True, False])
def test_prepare_qat_wraps_linears_and_embedding_and_keeps_the_tie(tied):
    model = make_tiny_llama(tied=tied)
    head_weight = model.lm_head.weight
    names = prepare_qat(model, group_size=32)
    expected = ["model.embed_tokens"] + [f"model.layers.{i}.{name}" for i in range(2) for name in LINEARS]
    assert names == expected
    assert isinstance(model.model.embed_tokens, QATEmbedding)
    assert type(model.lm_head) is nn.Linear and model.lm_head.weight is head_weight
    assert all(isinstance(model.get_submodule(name), QATLinear) for name in expected[1:])
    assert not any(type(m) is nn.Linear for name, m in model.named_modules() if name != "lm_head")
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied


def test_prepare_qat_options():
    model = make_tiny_llama()
    names = prepare_qat(model, group_size=64, quantize_embedding=False, act_int8=False, skip=("lm_head", "*.mlp.*"))
    assert names == [f"model.layers.{i}.self_attn.{p}_proj" for i in range(2) for p in "qkvo"]
    assert type(model.model.embed_tokens) is nn.Embedding
    assert not model.model.layers[0].self_attn.q_proj.act_int8


def test_qat_model_trains():
    model = make_tiny_llama().train()
    prepare_qat(model, group_size=32)
    ids = torch.randint(3, 256, (4, 24), generator=_gen(11))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    before = model(input_ids=ids, labels=ids).loss.item()
    for _ in range(3):
        loss = model(input_ids=ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        assert model.model.layers[1].mlp.down_proj.weight.grad is not None
        assert model.model.embed_tokens.weight.grad is not None
        optimizer.step()
    assert model(input_ids=ids, labels=ids).loss.item() < before


def _qat_model(seed: int = 0, **kwargs) -> nn.Module:
    model = make_tiny_llama(seed=seed, **kwargs)
    prepare_qat(model, group_size=32)
    return model.eval()


def test_int4_linear_matches_qat_linear_bit_for_bit():
    qat = QATLinear(nn.Linear(64, 48), group_size=32)
    x = torch.randn(2, 5, 64, generator=_gen(12))
    layer = Int4Linear.from_linear(qat, 32, act_int8=True)
    assert torch.equal(layer(x), qat(x))
    assert layer._weight is not None
    layer.free_cache()
    assert layer._weight is None and torch.equal(layer(x), qat(x))
    embedding = QATEmbedding(nn.Embedding(50, 64), group_size=32)
    ids = torch.randint(0, 50, (3, 7), generator=_gen(13))
    assert torch.equal(Int4Embedding.from_embedding(embedding, 32)(ids), embedding(ids))


def test_convert_and_packed_round_trip(tmp_path):
    from safetensors.torch import load_file, save_file

    model = _qat_model()
    ids = torch.randint(3, 256, (2, 16), generator=_gen(14))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        assert convert_qat(model) == {"linear": 14, "embedding": 1}
        converted = model(input_ids=ids).logits
    assert torch.allclose(converted, expected, atol=1e-5)
    assert isinstance(model.model.layers[0].mlp.down_proj, Int4Linear)

    tensors = packed_state(model)
    assert tensors["model.layers.0.mlp.down_proj.qweight"].dtype == torch.uint8
    assert tensors["model.layers.0.mlp.down_proj.qweight"].shape == (64, 64)
    assert tensors["model.layers.0.mlp.down_proj.scales"].shape == (64, 4)
    assert tensors["model.embed_tokens.qweight"].shape == (256, 32)
    assert "lm_head.weight" in tensors and "model.norm.weight" in tensors
    path = tmp_path / "guard.safetensors"
    save_file(tensors, str(path))

    skeleton = make_tiny_llama(seed=5).eval()
    load_packed_state(skeleton, load_file(str(path)), group_size=32, act_int8=True)
    with torch.no_grad():
        assert torch.equal(skeleton(input_ids=ids).logits, converted)

    with pytest.raises(FormatError):
        load_packed_state(make_tiny_llama(), {k: v for k, v in tensors.items() if k != "model.norm.weight"},
                          group_size=32)


def test_packed_state_has_no_shared_storage_when_the_embedding_stays_float(tmp_path):
    from safetensors.torch import save_file

    model = make_tiny_llama(tied=True)
    prepare_qat(model, group_size=32, quantize_embedding=False)
    convert_qat(model)
    tensors = packed_state(model)
    assert torch.equal(tensors["lm_head.weight"], tensors["model.embed_tokens.weight"])
    save_file(tensors, str(tmp_path / "tied.safetensors"))   # refuses shared storage


def test_quantized_size_under_a_fifth_of_fp32():
    model = make_tiny_llama(hidden=128, intermediate=512, vocab_size=64)
    fp32 = sum(p.numel() * 4 for p in model.parameters())
    prepare_qat(model, group_size=64)
    convert_qat(model)
    assert quantized_size_bytes(model) < fp32 / 5


# --- float16 scales ------------------------------------------------------------------------------


def test_scales_are_float16_values_and_the_converted_layer_stores_them_as_float16():
    w = torch.randn(8, 64, generator=_gen(40)) * torch.logspace(-4, 2, 8)[:, None]
    q, scales = quantize_int4(w, 32)
    assert torch.equal(scales.half().float(), scales)          # exactly representable in float16
    linear = torch.nn.Linear(64, 8, bias=False)
    with torch.no_grad():
        linear.weight.copy_(w)
    layer = Int4Linear.from_linear(linear, 32, act_int8=False)
    assert layer.scales.dtype == torch.float16
    assert torch.equal(layer.dequantized_weight(), dequantize_int4(q, scales, 32))
    # rows of tiny weights keep the half-step bound (the scale never drops to a float16 subnormal)
    step = scales.repeat_interleave(32, dim=1)
    assert bool(((dequantize_int4(q, scales, 32) - w).abs() <= step / 2 * (1 + 1e-6)).all())


def test_float32_scales_of_a_format_1_guard_load_unrounded():
    q = torch.randint(-7, 8, (4, 64), generator=_gen(41)).to(torch.int8)
    scales = torch.full((4, 2), 0.1234567, dtype=torch.float32)     # not a float16 value
    layer = Int4Linear(pack_int4(q), scales, None, in_features=64, group_size=32, act_int8=False)
    assert layer.scales.dtype == torch.float32 and torch.equal(layer.scales, scales)
    with pytest.raises(FormatError, match="floating point"):
        Int4Linear(pack_int4(q), scales.to(torch.int32), None, in_features=64, group_size=32)


def test_a_weight_beyond_float16_scales_is_refused():
    w = torch.zeros(2, 32)
    w[0, 0] = 1e6
    with pytest.raises(ConfigError, match="float16"):
        quantize_int4(w, 32)


@pytest.mark.parametrize("int8", [False, True], ids=["float", "int8"])
def test_scoring_quantises_each_shared_input_once_with_the_same_result(monkeypatch, int8):
    import deltaguard.guard.quant as quant

    model = _qat_model()
    ids = torch.randint(3, 256, (2, 16), generator=_gen(42))
    quantiser = "int8_activation_codes" if int8 else "fake_quant_int8_per_token"
    with torch.no_grad():
        convert_qat(model)
        set_int8_matmuls(model, enabled=int8)
        memoised = model(input_ids=ids).logits
        calls = []
        real = getattr(quant, quantiser)
        monkeypatch.setattr(quant, quantiser, lambda x: calls.append(x.shape) or real(x))
        again = model(input_ids=ids).logits
        n_blocks = len(model.model.layers)
        assert len(calls) == 4 * n_blocks         # q/k/v share one quantisation, gate/up another; o and down their own
        monkeypatch.setattr(quant, "_once_per_input", lambda kind, x, compute: compute(x))   # every layer on its own
        separately = model(input_ids=ids).logits
    assert len(calls) == 11 * n_blocks
    assert torch.equal(memoised, again) and torch.equal(memoised, separately)


def test_the_shared_input_memo_never_returns_a_stale_round_trip():
    from deltaguard.guard.quant import quantized_input

    x = torch.randn(3, 64, generator=_gen(43))
    first = quantized_input(x)
    assert quantized_input(x) is first
    x.mul_(2.0)                                     # changed in place: its version moves on
    assert torch.equal(quantized_input(x), fake_quant_int8_per_token(x))
    y = x.clone()                                   # equal values, another tensor
    assert quantized_input(y) is not quantized_input(x)


def test_bf16_compute_keeps_the_packed_weights_and_stays_close_to_float32():
    """Only the arithmetic moves to bf16: codes and float16 scales are untouched, float32 buffers (rotary
    frequencies) stay float32, and the logits stay within bf16's rounding of the float32 ones."""
    model = _qat_model()
    with torch.no_grad():
        convert_qat(model)
    ids = torch.randint(3, 256, (2, 16), generator=_gen(21))
    stored = {k: v.clone() for k, v in model.state_dict().items() if k.endswith(("qweight", "scales"))}
    float_buffers = {k for k, v in model.named_buffers() if v.dtype == torch.float32 and not k.endswith("scales")}
    with torch.no_grad():
        reference = model(input_ids=ids).logits
        assert set_compute_dtype(model, torch.bfloat16) is model
        fast = model(input_ids=ids).logits
    for name, tensor in model.state_dict().items():
        if name in stored:
            assert tensor.dtype == stored[name].dtype and torch.equal(tensor, stored[name]), name
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert all(dict(model.named_buffers())[k].dtype == torch.float32 for k in float_buffers)
    layer = model.model.layers[0].mlp.down_proj
    assert layer._weight is not None and layer._weight.dtype == torch.bfloat16   # the cache was rebuilt in bf16
    assert fast.dtype == torch.bfloat16 and torch.isfinite(fast).all()
    scale = reference.abs().max()
    assert (fast.float() - reference).abs().max() <= 0.05 * scale
    with pytest.raises(ConfigError, match="not a floating-point type"):
        set_compute_dtype(model, torch.int8)


# --- INT8 integer matmuls ------------------------------------------------------------------------

def test_int8_channel_weight_error_within_half_a_step_and_exact_on_its_grid():
    w = torch.randn(48, 64, generator=_gen(50))
    w[3] *= 40.0                                      # rows of very different ranges get their own scales
    codes_t, scales, sums = int8_channel_weight(w)
    assert codes_t.dtype == torch.int8 and codes_t.shape == (64, 48) and scales.shape == (48,)
    assert int(codes_t.abs().max()) <= 127
    back = codes_t.t().float() * scales[:, None]
    assert ((back - w).abs() <= scales[:, None] / 2 * (1 + 1e-6)).all()
    assert torch.equal(sums, codes_t.t().sum(dim=1, dtype=torch.int32))
    on_grid = torch.randint(-127, 128, (5, 32), generator=_gen(51)).float() * 0.25
    on_grid[:, 0] = 127 * 0.25                        # each row's max sets its scale to exactly 0.25
    assert torch.equal(int8_channel_weight(on_grid)[0].t().float() * 0.25, on_grid)


def test_int8_channel_weight_zero_row_and_bad_weights():
    codes_t, scales, _ = int8_channel_weight(torch.zeros(3, 8))
    assert torch.equal(codes_t, torch.zeros(8, 3, dtype=torch.int8)) and torch.isfinite(scales).all()
    with pytest.raises(FormatError, match="NaN or infinite"):
        int8_channel_weight(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ConfigError, match="2-D"):
        int8_channel_weight(torch.ones(4))


def test_int8_activation_codes_are_the_round_trips_grid_exactly():
    x = torch.randn(2, 7, 64, generator=_gen(52)) * 3 + 1
    x[0, 0] = 0.0                                     # an all-zero token
    codes, step, zero = int8_activation_codes(x)
    assert codes.dtype == torch.int8 and codes.shape == (14, 64) and zero.dtype == torch.int32
    assert torch.equal(((codes.float() - zero) * step).reshape(x.shape), fake_quant_int8_per_token(x))


@pytest.mark.parametrize("bias", [True, False])
def test_int8_linear_equals_the_float_reference_up_to_float32_rounding(bias):
    """The integer path computes F.linear(INT8 round trip of x, the INT8 weight, bias); float64 is the reference."""
    layer = nn.Linear(96, 40, bias=bias)
    codes_t, scales, sums = int8_channel_weight(layer.weight)
    x = torch.randn(3, 11, 96, generator=_gen(53)) * 2
    with torch.no_grad():
        out = int8_linear(x, codes_t, scales, sums, layer.bias)
        weight = codes_t.t().double() * scales.double()[:, None]
        reference = torch.nn.functional.linear(fake_quant_int8_per_token(x).double(), weight,
                                               None if layer.bias is None else layer.bias.double())
    assert out.shape == (3, 11, 40) and out.dtype == torch.float32
    assert (out.double() - reference).abs().max() <= 1e-5 * reference.abs().max()
    assert int8_linear(x.bfloat16(), codes_t, scales, sums, layer.bias).dtype == torch.bfloat16
    assert int8_linear(x[:0], codes_t, scales, sums, layer.bias).shape == (0, 11, 40)
    with pytest.raises(ConfigError, match="96"):
        int8_linear(x[..., :64], codes_t, scales, sums, layer.bias)


def test_int8_matmuls_switch_a_converted_model_and_back():
    """Close to the INT4 float path (only the weights' re-rounding to per-channel INT8 differs), bit-identical
    to it after switching back, and the shared inputs are still quantised once."""
    model = _qat_model()
    ids = torch.randint(3, 256, (2, 16), generator=_gen(54))
    with torch.no_grad():
        convert_qat(model)
        reference = model(input_ids=ids).logits
        assert set_int8_matmuls(model) == 7 * len(model.model.layers)
        layer = model.model.layers[0].self_attn.q_proj
        assert layer.compute == "int8" and "compute=int8" in repr(layer)
        fast = model(input_ids=ids).logits
        assert layer._int8 is not None and layer._weight is None
        set_int8_matmuls(model, enabled=False)
        assert layer._int8 is None and torch.equal(model(input_ids=ids).logits, reference)
    scale = reference.abs().max()
    assert torch.isfinite(fast).all() and 0 < (fast - reference).abs().max() <= 0.05 * scale


def test_int8_matmuls_need_int8_activations():
    model = _qat_model()
    with torch.no_grad():
        convert_qat(model)
    for module in model.modules():
        if isinstance(module, Int4Linear):
            module.act_int8 = False
    with pytest.raises(ConfigError, match="INT8 activations"):
        set_int8_matmuls(model)
    assert all(m.compute == "float" for m in model.modules() if isinstance(m, Int4Linear))


def test_int8_matmuls_run_on_the_cpu_only():
    model = _qat_model()
    with torch.no_grad():
        convert_qat(model)
    with pytest.raises(ConfigError, match="CPU only"):
        set_int8_matmuls(model.to("meta"))
