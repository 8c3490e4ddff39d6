import numpy as np
import pytest

from flowprep import FlowprepError, dequantize, quantize
from flowprep.flow.quantize import clipped_count, clipped_fraction, nonfinite_count


def test_zero_maps_to_128_and_ends_to_0_and_255():
    q = quantize(np.array([0.0, -20.0, 20.0, -25.0, 1e9, -np.inf]), bound=20)
    assert q.tolist() == [128, 0, 255, 0, 255, 0]


def test_rounding_is_half_up_hand_computed():
    # 255 * (v + 20) / 40 = 6.375 v + 127.5 ; v = 0.2 -> 128.775 -> 129 ; v = -0.2 -> 126.225 -> 126
    # v = -0.0784313725 (exactly 0.5 below 127.5+...): 6.375 * v = -0.5 -> 127.0 -> 127
    v = np.array([0.2, -0.2, -0.5 / 6.375, 1.0])
    assert quantize(v, 20).tolist() == [129, 126, 127, 134]


def test_round_trip_error_is_at_most_half_a_step():
    rng = np.random.default_rng(0)
    v = rng.uniform(-20, 20, size=(50, 40, 2)).astype(np.float32)
    back = dequantize(quantize(v, 20), 20)
    step = 40 / 255
    assert np.abs(back - v).max() <= step / 2 + 1e-5
    assert back.dtype == np.float32 and back.shape == v.shape


def test_dequantize_inverts_exactly_on_the_grid():
    q = np.arange(256, dtype=np.uint8)
    assert np.array_equal(quantize(dequantize(q, 15), 15), q)


def test_other_bound_and_nan():
    assert quantize(np.array([np.nan, 15.0, -7.5]), bound=15).tolist() == [128, 255, 64]


def test_bad_bound_is_an_error():
    with pytest.raises(FlowprepError, match="bound"):
        quantize(np.zeros(3), bound=0)


def test_clipped_fraction():
    assert clipped_fraction(np.array([0, 20, -25, 3.0]), 20) == 0.5


@pytest.mark.parametrize("bound", [20.0, 15.0, 7.0, 3.3])
def test_matches_the_exact_formula_at_every_rounding_boundary(bound):
    """float32 flow values on and next to each boundary 255 (v + b) / (2b) + 0.5 = k, against exact rationals."""
    from fractions import Fraction

    k = np.arange(1, 256)
    edges = ((k - 0.5) * 2 * bound / 255 - bound).astype(np.float32)
    values = np.concatenate([np.nextafter(edges, np.float32(-np.inf)), edges, np.nextafter(edges, np.float32(np.inf)),
                             np.float32([0.0, -1e-45, 1e-45, bound, -bound])])
    b = Fraction(bound)
    exact = [int(np.floor(255 * (min(max(Fraction(float(v)), -b), b) + b) / (2 * b) + Fraction(1, 2)))
             for v in values]
    assert quantize(values, bound).tolist() == exact


@pytest.mark.parametrize("as_torch", [False, True])
def test_clipped_and_nonfinite_counts_per_field(as_torch):
    """The one count of values at the bound and of NaN/inf per field, on numpy and on torch (the device path
    counts where the flow was computed): (B, H, W, 2) -> (B,)."""
    flow = np.zeros((3, 2, 2, 2), np.float32)
    flow[0, 0, 0, 0], flow[0, 1, 1, 1] = 20.0, -30.0  # field 0: two at the bound
    flow[1, 0, 1, 0] = np.nan  # field 1: one NaN, not clipped
    flow[2, 1, 0, 1], flow[2, 0, 0, 0] = np.inf, 19.9  # field 2: inf counts as both
    if as_torch:
        import torch

        flow = torch.from_numpy(flow)
    assert clipped_count(flow, 20).tolist() == [2, 0, 1]
    assert nonfinite_count(flow).tolist() == [0, 1, 1]
    assert int(nonfinite_count(flow[1])) == 1 and int(clipped_count(flow[0], 20)) == 2  # one (H, W, 2) field


def test_at_bound_count_counts_stored_values_at_either_end_per_field():
    from flowprep.flow.quantize import at_bound_count

    q = np.full((3, 4, 5, 2), 128, np.uint8)  # (fields, H, W, x/y)
    q[0, 0, 0, 0] = 0
    q[0, 1, 1, 1] = 255
    q[2, :, :, 1] = 255
    assert at_bound_count(q).tolist() == [2, 0, 20]
    assert int(at_bound_count(q[0])) == 2
