"""Bit packing is lossless: every fast path is checked against these functions."""

from __future__ import annotations

import pytest
import torch

from deltaguard.delta.packing import pack_bits, pack_codes, pack_signs, unpack_bits, unpack_codes, unpack_signs


@pytest.mark.parametrize("n", [1, 7, 8, 9, 64, 577])
def test_bits_round_trip_any_length(n):
    bits = torch.rand(3, n, generator=torch.Generator().manual_seed(n)) > 0.5
    packed = pack_bits(bits)
    assert packed.dtype == torch.uint8 and packed.shape == (3, (n + 7) // 8)
    assert torch.equal(unpack_bits(packed, n), bits)


def test_bit_order_is_little_endian_per_byte():
    bits = torch.tensor([[True, False, False, False, False, False, False, False, False, True]])
    assert pack_bits(bits).tolist() == [[1, 2]]


def test_signs_zero_is_positive_and_round_trips():
    delta = torch.tensor([[0.5, -0.1, 0.0, -2.0]])
    assert unpack_signs(pack_signs(delta), 4).tolist() == [[1.0, -1.0, 1.0, -1.0]]


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_codes_round_trip(bits):
    codes = torch.randint(0, 2**bits, (1000,), generator=torch.Generator().manual_seed(bits))
    planes = pack_codes(codes, bits)
    assert planes.shape == (bits, 125)
    assert torch.equal(unpack_codes(planes, 1000), codes.to(torch.int32))
