"""Block-wise 8-bit quantization (holocron/optim/quantization.h), the storage format of 8-bit
optimizer state: the map against its construction, every code against a naive nearest-value
search in float64, the edge values, and the ops' checks."""

import math
import zlib

import numpy as np
import pytest
import torch

import holocron_optim  # noqa: F401 (registers torch.ops.holocron)

ops = torch.ops.holocron
BLOCK = 256


def _map_in_float32(signed):
    """bitsandbytes' dynamic map as its create_dynamic_map builds it: in each decade 10**-6 ... 1,
    the midpoints of a float32 linspace(0.1, 1) split into 2**i (signed) or 2**(i+1) bins, then 0
    and 1, sorted."""
    values = []
    for i in range(7):
        bins = 2**i if signed else 2 ** (i + 1)
        edges = torch.linspace(0.1, 1, bins + 1, dtype=torch.float32)
        mids = (edges[:-1] + edges[1:]) / 2.0
        values += (mids * 10.0 ** (i - 6)).tolist()
        if signed:
            values += (mids * -(10.0 ** (i - 6))).tolist()
    return torch.tensor(sorted(values + [0.0, 1.0]), dtype=torch.float32)


def _map_in_float64(signed):
    """The same map in exact-as-possible float64 arithmetic."""
    values = [0.0, 1.0]
    for i in range(7):
        bins = 2**i if signed else 2 ** (i + 1)
        for j in range(bins):
            mid = 10.0 ** (i - 6) * (0.1 + 0.9 * (j + 0.5) / bins)
            values += [mid, -mid] if signed else [mid]
    return np.array(sorted(values))


def _naive_codes(values, signed):
    """Codes by brute force: each value over its block's largest magnitude (float32 division, as
    the format defines it), then the index of the nearest map value in float64, the lower on a
    tie (argmin's first); a block of zeros -> the code of 0; a block with a non-finite value -> the
    code of 0 and a NaN scale."""
    table = ops.dequantize_blockwise(torch.arange(256, dtype=torch.uint8), torch.ones(1), signed).double().numpy()
    flat = values.detach().to(torch.float32).reshape(-1)
    codes, scales = [], []
    zero_code = int(np.argmin(np.abs(table)))
    for start in range(0, flat.numel(), BLOCK):
        block = flat[start:start + BLOCK]
        if not torch.isfinite(block).all():
            codes += [zero_code] * block.numel()
            scales.append(math.nan)
            continue
        absmax = block.abs().max()
        scales.append(absmax.item())
        normalized = (block / absmax if absmax > 0 else torch.zeros_like(block)).double().numpy()
        nearest = [int(np.argmin(np.abs(table - y))) for y in normalized]
        # Unsigned (second moments): a positive value is never coded as 0.
        codes += [1 if not signed and code == zero_code and y > 0 else code for code, y in zip(nearest, normalized)]
    return (torch.tensor(codes, dtype=torch.uint8).reshape(values.shape),
            torch.tensor(scales, dtype=torch.float32))


@pytest.mark.parametrize("signed", [True, False])
def test_map_is_bitsandbytes_dynamic_map(signed):
    got = ops.dequantize_blockwise(torch.arange(256, dtype=torch.uint8), torch.ones(1), signed)
    assert torch.equal(got, _map_in_float32(signed))
    np.testing.assert_allclose(got.double().numpy(), _map_in_float64(signed), rtol=1e-6, atol=0)
    assert bool((got[1:] > got[:-1]).all()), "ascending, no value twice"
    assert got[-1] == 1.0
    if signed:
        assert got[127] == 0.0 and int((got < 0).sum()) == 127
        # The largest magnitude of a negative value: 0.1 + 0.9 * 63.5 / 64.
        assert got[0] == -0.99296875
    else:
        assert got[0] == 0.0


SHAPES = [(0,), (1,), (255,), (256,), (257,), (1000,), (3, 300), (2, 3, 129)]


# The CPU path (a bucket lookup and one comparison) and the ATen ops, which other devices run.
PATHS = ["auto", "reference"]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
def test_codes_are_the_nearest_map_values(signed, shape, dtype, path, backend):
    backend(path)
    generator = torch.Generator().manual_seed(zlib.crc32(repr((signed, shape, dtype)).encode()))
    values = torch.randn(shape, generator=generator, dtype=torch.float64)
    # Magnitudes over many decades inside a block, as second moments have (float16's range is narrower).
    spread = 2 if dtype == torch.float16 else 6
    values = values * torch.exp(spread * torch.randn(shape, generator=generator, dtype=torch.float64))
    if not signed:
        values = values.abs()
    values = values.to(dtype)
    codes, absmax = ops.quantize_blockwise(values, signed)
    expected_codes, expected_absmax = _naive_codes(values, signed)
    assert codes.dtype == torch.uint8 and codes.shape == values.shape and codes.is_contiguous()
    assert torch.equal(codes, expected_codes)
    torch.testing.assert_close(absmax, expected_absmax, rtol=0, atol=0, equal_nan=True)
    table = ops.dequantize_blockwise(torch.arange(256, dtype=torch.uint8), torch.ones(1), signed)
    decoded = ops.dequantize_blockwise(codes, absmax, signed, dtype)
    flat_codes = codes.reshape(-1).long()
    scales = absmax.repeat_interleave(BLOCK)[:codes.numel()]
    assert torch.equal(decoded, (table[flat_codes] * scales).reshape(shape).to(dtype))


@pytest.mark.parametrize("signed", [True, False])
def test_cpu_path_equals_the_aten_ops_on_every_float(signed, backend):
    """Every float32 bit pattern in [-1, 1] (a stride through them), as a normalized value next to
    a 1 in its block, gets the same code from both paths, and -0.0, the smallest subnormals and
    the values on both sides of every threshold too."""
    table = ops.dequantize_blockwise(torch.arange(256, dtype=torch.uint8), torch.ones(1), signed)
    patterns = torch.arange(0, 2**32, 4093, dtype=torch.int64).to(torch.int32).view(torch.float32)
    midpoints = (table[:-1].double() + table[1:].double()) / 2
    near = torch.cat([midpoints.float(), torch.nextafter(midpoints.float(), torch.tensor(2.0)),
                      torch.nextafter(midpoints.float(), torch.tensor(-2.0))])
    special = torch.tensor([-0.0, 0.0, 1e-45, -1e-45, 2.0**-24, -(2.0**-24), 1.0, -1.0])
    values = torch.cat([patterns[patterns.abs() <= 1], near, table, special])
    values = torch.cat([values.reshape(-1, 1), torch.ones(values.numel(), 1)], 1).reshape(-1)  # absmax 1
    out = {}
    for path in PATHS:
        backend(path)
        codes, absmax = ops.quantize_blockwise(values, signed)
        out[path] = (codes, absmax, ops.dequantize_blockwise(codes, absmax, signed))
    for got, expected in zip(out["auto"], out["reference"]):
        torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True)


def test_non_contiguous_values_are_read_in_row_major_order():
    values = torch.randn(300, 7).t()
    codes, absmax = ops.quantize_blockwise(values, True)
    contiguous = ops.quantize_blockwise(values.contiguous(), True)
    assert torch.equal(codes, contiguous[0]) and torch.equal(absmax, contiguous[1])


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("signed", [True, False])
def test_exact_ties_take_the_lower_code(signed, path, backend):
    backend(path)
    table = ops.dequantize_blockwise(torch.arange(256, dtype=torch.uint8), torch.ones(1), signed).double()
    ties, above = [], []
    for k in range(255):
        midpoint = (table[k] + table[k + 1]) / 2
        as_float = torch.tensor(midpoint.item(), dtype=torch.float32)
        if as_float.double() == midpoint:
            ties.append((k, as_float))
            above.append((k + 1, torch.nextafter(as_float, torch.tensor(2.0))))
    assert len(ties) > 20, "the map has midpoints that float32 holds exactly"
    for cases in (ties, above):
        # Each case in a block of its own whose largest magnitude is 1, so it is not rescaled.
        blocks = torch.zeros(len(cases), BLOCK)
        blocks[:, 0] = torch.stack([value for _, value in cases])
        blocks[:, 1] = 1.0
        codes, absmax = ops.quantize_blockwise(blocks, signed)
        assert bool((absmax == 1).all())
        # (The unsigned map never codes a positive value as 0: the tie above 0 takes code 1.)
        assert codes[:, 0].tolist() == [1 if not signed and k == 0 and value > 0 else k for k, value in cases]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("signed", [True, False])
def test_edge_values(signed, path, backend):
    backend(path)
    table = ops.dequantize_blockwise(torch.arange(256, dtype=torch.uint8), torch.ones(1), signed)
    zero_code = int(torch.nonzero(table == 0).item())
    values = torch.zeros(5 * BLOCK)
    values[BLOCK:2 * BLOCK] = torch.linspace(-3, 3, BLOCK)   # the extremes are +-absmax
    values[2 * BLOCK + 7] = math.inf
    values[3 * BLOCK + 1] = math.nan
    values[4 * BLOCK:] = torch.linspace(1e-30, 1e-3, BLOCK)
    codes, absmax = ops.quantize_blockwise(values, signed)
    decoded = ops.dequantize_blockwise(codes, absmax, signed)
    # A block of zeros: scale 0, the code of 0, decoded exactly.
    assert absmax[0] == 0 and bool((codes[:BLOCK] == zero_code).all()) and bool((decoded[:BLOCK] == 0).all())
    # +absmax is 1 exactly; -absmax the most negative value (signed) or 0 (unsigned: its nearest).
    assert codes[2 * BLOCK - 1] == 255 and decoded[2 * BLOCK - 1] == 3.0
    assert codes[BLOCK] == (0 if signed else zero_code)
    # A non-finite value poisons its block only.
    for block in (2, 3):
        assert math.isnan(absmax[block]) and bool(decoded[block * BLOCK:(block + 1) * BLOCK].isnan().all())
    assert bool(decoded[4 * BLOCK:].isfinite().all())
    # Values far below the block's largest (1e-30 / 1e-3) fall to the code of 0; with the unsigned
    # map (second moments) to the least positive value's instead, so that they do not vanish.
    assert codes[4 * BLOCK] == (zero_code if signed else zero_code + 1) and codes[5 * BLOCK - 1] == 255
    assert signed or bool((decoded[4 * BLOCK:] > 0).all())


def test_error_is_within_half_a_gap():
    torch.manual_seed(3)
    for signed in (True, False):
        table = ops.dequantize_blockwise(torch.arange(256, dtype=torch.uint8), torch.ones(1), signed)
        values = torch.rand(64 * BLOCK) * (2 if signed else 1) - (1 if signed else 0)
        values[::BLOCK] = 1.0  # every block's largest is 1: the normalized values are the values
        codes, absmax = ops.quantize_blockwise(values, signed)
        decoded = ops.dequantize_blockwise(codes, absmax, signed)
        gaps = torch.cat([table[1:] - table[:-1], torch.zeros(1)])
        widest = torch.maximum(gaps[codes.long()], torch.cat([torch.zeros(1), gaps])[codes.long()])
        inside = values >= table[0]
        assert bool(((decoded - values).abs()[inside] <= widest[inside] / 2 + 1e-7).all())


def test_the_values_are_not_written():
    values = torch.randn(600, dtype=torch.float64)
    before = values.clone()
    ops.quantize_blockwise(values, True)
    assert torch.equal(values, before)


def test_bad_arguments_are_refused_by_name():
    codes, absmax = ops.quantize_blockwise(torch.randn(300), True)
    with pytest.raises(TypeError, match="quantize_blockwise: values have dtype Long"):
        ops.quantize_blockwise(torch.arange(3), True)
    with pytest.raises(RuntimeError, match="values have layout Sparse"):
        ops.quantize_blockwise(torch.randn(3).to_sparse(), True)
    with pytest.raises(TypeError, match="codes have dtype Int"):
        ops.dequantize_blockwise(codes.int(), absmax, True)
    with pytest.raises(TypeError, match="absmax has dtype Double"):
        ops.dequantize_blockwise(codes, absmax.double(), True)
    with pytest.raises(TypeError, match="dtype is Long"):
        ops.dequantize_blockwise(codes, absmax, True, torch.int64)
    with pytest.raises(ValueError, match=r"absmax has shape \[3\] but 300 codes make 2 blocks of 256"):
        ops.dequantize_blockwise(codes, torch.ones(3), True)
    with pytest.raises(ValueError, match="absmax is on meta but the codes are on cpu"):
        ops.dequantize_blockwise(codes, absmax.to("meta"), True)


@pytest.mark.parametrize("signed", [True, False])
def test_opcheck(signed):
    values = torch.randn(3, 200, dtype=torch.float64)
    torch.library.opcheck(ops.quantize_blockwise.default, (values, signed))
    codes, absmax = ops.quantize_blockwise(values, signed)
    torch.library.opcheck(ops.dequantize_blockwise.default, (codes, absmax, signed), {"dtype": torch.bfloat16})


def test_meta_shapes():
    codes, absmax = ops.quantize_blockwise(torch.empty(5, 200, device="meta"), False)
    assert codes.shape == (5, 200) and codes.dtype == torch.uint8 and absmax.shape == (4,)
    decoded = ops.dequantize_blockwise(codes, absmax, False, torch.float16)
    assert decoded.shape == (5, 200) and decoded.dtype == torch.float16
