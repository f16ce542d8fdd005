"""MultiTenantModel: every row equals its tenant's merged model; tenants never touch each other's deltas."""

from __future__ import annotations

import copy

import pytest
import torch

from deltaguard.delta import apply_delta
from deltaguard.errors import ConfigError, IncompatibleBaseError
from deltaguard.serve import MultiTenantDense, MultiTenantLinear, MultiTenantModel


@pytest.fixture(params=["torch", "cpp"])
def mt(request, base_model, deltas):
    """The multi-tenant model on each CPU kernel (C++ skipped where it cannot build)."""
    from deltaguard.kernels import cpu_bitdelta

    if request.param == "cpp" and not cpu_bitdelta.available():
        pytest.skip(f"the C++ CPU kernel is unavailable: {cpu_bitdelta.disabled_reason() or 'it did not build'}")
    model = MultiTenantModel(copy.deepcopy(base_model), backend=request.param)
    for name, delta in deltas.items():
        model.add_tenant(name, delta)
    return model


@pytest.fixture(scope="module")
def merged(base_model, deltas):
    """Each tenant's model with its delta merged into the weights (the reference)."""
    return {name: apply_delta(base_model, delta) for name, delta in deltas.items()}


def test_mixed_batch_equals_each_tenants_merged_model(mt, merged, base_model):
    ids = torch.randint(4, 300, (6, 9), generator=torch.Generator().manual_seed(0))
    tenants = ["alpha", "gamma", None, "beta", "delta", "alpha"]
    with torch.no_grad():
        logits = mt(tenants, input_ids=ids).logits
        for row, tenant in enumerate(tenants):
            reference = (merged[tenant] if tenant else base_model)(input_ids=ids[row:row + 1]).logits[0]
            torch.testing.assert_close(logits[row], reference, rtol=0, atol=2e-5)


def test_long_prompts_use_merged_tiles_and_still_equal_the_merged_models(mt, merged):
    """Prefill-sized groups (≥ MERGE_MIN_ROWS tokens of one tenant) take the merged-tile path."""
    from deltaguard.kernels.reference import MERGE_MIN_ROWS

    ids = torch.randint(4, 300, (3, MERGE_MIN_ROWS + 8), generator=torch.Generator().manual_seed(4))
    tenants = ["beta", "alpha", "beta"]   # beta's rows are not contiguous: an index, not a slice
    with torch.no_grad():
        logits = mt(tenants, input_ids=ids).logits
        for row, tenant in enumerate(tenants):
            reference = merged[tenant](input_ids=ids[row:row + 1]).logits[0]
            torch.testing.assert_close(logits[row], reference, rtol=0, atol=3e-5)


def test_the_delta_is_applied_from_packed_parts_not_merged(mt, base_model, deltas):
    """The base weights stay the base's (shared), and the packed parts are what the layers hold."""
    q_proj = mt.model.get_submodule("model.layers.0.self_attn.q_proj")
    assert isinstance(q_proj, MultiTenantLinear)
    assert torch.equal(q_proj.base.weight, base_model.get_submodule("model.layers.0.self_attn.q_proj").weight)
    slot = mt.slot_of("alpha")
    packed = deltas["alpha"].tensors["model.layers.0.self_attn.q_proj.weight"].parts["signs"]
    assert q_proj.signs[slot].dtype == torch.uint8 and torch.equal(q_proj.signs[slot], packed)
    # all of a tenant's bits live in one buffer (no per-tensor allocator overhead), freed with the tenant
    k_proj = mt.model.get_submodule("model.layers.1.self_attn.k_proj")
    assert k_proj.signs[slot].untyped_storage().data_ptr() == q_proj.signs[slot].untyped_storage().data_ptr()
    assert k_proj.signs[slot].untyped_storage().data_ptr() != k_proj.signs[mt.slot_of("beta")].untyped_storage().data_ptr()
    assert isinstance(mt.model.get_submodule("model.norm"), MultiTenantDense)  # per-tenant norm deltas
    assert isinstance(mt.model.get_submodule("model.embed_tokens"), MultiTenantDense)


def _poison(mt, name: str, *, linear: bool, dense: bool) -> None:
    slot = mt.slot_of(name)
    for module in mt.model.modules():
        if linear and isinstance(module, MultiTenantLinear) and slot in module.signs:
            module.scale_values[slot] = (float("nan"),) * len(module.scale_values[slot])
        if dense and isinstance(module, MultiTenantDense) and slot in module.deltas:
            module.deltas[slot] = {k: torch.full_like(v, float("nan")) for k, v in module.deltas[slot].items()}


def test_layers_reference_the_tenant_buffer_instead_of_holding_a_view_each(mt, deltas):
    """A tensor view per tenant and layer costs ~1 KB of host memory; layers keep (buffer, offset) instead."""
    slot = mt.slot_of("alpha")
    layers = [m for m in mt.model.modules() if isinstance(m, MultiTenantLinear) and slot in m.signs]
    refs = [layer.signs.ref(slot) for layer in layers]
    assert len(layers) > 2 and all(flat is refs[0][0] for flat, _, _ in refs)
    offsets = [offset for _, offset, _ in refs]
    assert len(set(offsets)) == len(offsets)
    name = "model.layers.1.mlp.down_proj.weight"
    layer = mt.model.get_submodule(name.rsplit(".", 1)[0])
    assert torch.equal(layer.signs[slot], deltas["alpha"].tensors[name].parts["signs"])


def test_stacked_tables_for_one_triton_launch_hold_every_slots_bits_once(mt, deltas):
    """The Triton path's stacking (device-independent bookkeeping, so checked here on the CPU)."""
    name = "model.layers.0.mlp.up_proj.weight"
    layer = mt.model.get_submodule(name.rsplit(".", 1)[0])
    before = {slot: layer.signs[slot].clone() for slot in layer.signs}
    signs, scales = layer._stacked_tables(torch.device("cpu"))
    assert signs.shape[0] == max(before) + 1 and scales.shape == signs.shape[:2]
    for slot, bits in before.items():
        assert torch.equal(signs[slot, : bits.shape[0]], bits) and torch.equal(layer.signs[slot], bits)
        assert layer.signs.ref(slot)[0].untyped_storage().data_ptr() == signs.untyped_storage().data_ptr()
        assert scales[slot, : bits.shape[0]].tolist() == pytest.approx(list(layer.scale_values[slot]))


def test_slot_signs_is_a_mapping_of_views():
    from deltaguard.serve.layers import SlotSigns

    signs = SlotSigns()
    first = torch.randint(0, 256, (1, 3, 2), dtype=torch.uint8)
    signs[4] = first
    flat = torch.arange(30, dtype=torch.uint8)
    signs.place(7, flat, 10, (1, 4, 2))
    assert sorted(signs) == [4, 7] and len(signs) == 2 and 7 in signs and 5 not in signs
    assert torch.equal(signs[4], first)
    assert signs[7].tolist() == [[[10, 11], [12, 13], [14, 15], [16, 17]]]
    del signs[4]
    assert list(signs) == [7] and signs.pop(7).shape == (1, 4, 2) and not signs


def test_a_row_never_depends_on_other_tenants_deltas(mt):
    """Isolation: poison beta's parts; alpha's rows (alone or batched with beta) do not change."""
    ids = torch.randint(4, 300, (3, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        alone = mt(["alpha"] * 3, input_ids=ids).logits
        _poison(mt, "beta", linear=True, dense=False)     # only beta's packed 1-bit linear parts
        mixed = mt(["alpha", "beta", "alpha"], input_ids=ids).logits
        assert torch.isnan(mixed[1]).all()                 # beta's row did use its packed parts...
        torch.testing.assert_close(mixed[[0, 2]], alone[[0, 2]], rtol=0, atol=1e-5)   # ...alpha's did not
        _poison(mt, "beta", linear=True, dense=True)       # and its norm/embedding deltas too
        mixed = mt(["alpha", "beta", "alpha"], input_ids=ids).logits
    assert torch.isfinite(mixed[[0, 2]]).all()
    torch.testing.assert_close(mixed[[0, 2]], alone[[0, 2]], rtol=0, atol=1e-5)


def test_base_rows_are_untouched_by_any_tenant(mt, base_model):
    ids = torch.randint(4, 300, (2, 5), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = mt([None, "beta"], input_ids=ids).logits[0]
        torch.testing.assert_close(out, base_model(input_ids=ids[:1]).logits[0], rtol=0, atol=1e-5)


def test_delta_for_another_base_is_refused(base_model, world):
    from deltaguard.delta import load_delta

    model = MultiTenantModel(copy.deepcopy(base_model))
    with pytest.raises(IncompatibleBaseError, match="made for base"):
        model.add_tenant("intruder", load_delta(world.other_base_delta))
    assert model.tenant_names == []
    assert not any(isinstance(m, (MultiTenantLinear, MultiTenantDense)) for m in model.model.modules())


def test_remove_and_readd_a_tenant(mt, deltas):
    ids = torch.randint(4, 300, (1, 6), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        before = mt(["gamma"], input_ids=ids).logits
        mt.remove_tenant("gamma")
        with pytest.raises(ConfigError, match="not loaded"):
            mt(["gamma"], input_ids=ids)
        mt.add_tenant("gamma", deltas["gamma"])
        torch.testing.assert_close(mt(["gamma"], input_ids=ids).logits, before, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="already loaded"):
        mt.add_tenant("gamma", deltas["gamma"])


def test_footprint_counts_the_packed_bytes(mt, deltas):
    footprint = mt.footprint("alpha")
    expected = sum(t.numel() * t.element_size() for p in deltas["alpha"].tensors.values() for t in p.parts.values())
    assert footprint.n_bytes == expected
    assert footprint.encodings == ("bitdelta", "dense16")
