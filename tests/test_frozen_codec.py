"""The frozen codec layers compute what they replace, on both of their paths."""

import pytest
import torch

from mlmlmlm.models.frozen_codec import (
    MAX_PRODUCT_SIZE,
    FrozenConv1d,
    FrozenConvTranspose1d,
    frozen_layer,
)
from mlmlmlm.nn.cached import CausalConv1d, CausalConvTranspose1d, set_streaming


@pytest.mark.parametrize("stride,dilation,k", [(1, 1, 7), (1, 9, 7), (2, 1, 4), (1, 3, 3)])
def test_frozen_conv_equals_the_causal_conv(stride, dilation, k):
    torch.manual_seed(0)
    conv = CausalConv1d(8, 12, k, stride=stride, dilation=dilation).eval()
    frozen = frozen_layer(conv)
    assert isinstance(frozen, FrozenConv1d)
    with torch.inference_mode():
        for T in (stride, 8 * stride, 2 * MAX_PRODUCT_SIZE // 8):  # product path, then the conv
            x = torch.randn(2, 8, T)
            torch.testing.assert_close(frozen(x), conv(x), atol=1e-5, rtol=1e-5)
        set_streaming(conv), set_streaming(frozen)  # chunks through the shared pad state
        x = torch.randn(1, 8, 40 * stride)
        want = conv(x)
        set_streaming(conv), set_streaming(frozen)
        got = torch.cat([frozen(x[..., i:i + stride]) for i in range(0, x.shape[-1], stride)], -1)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    if stride > 1:
        with pytest.raises(ValueError, match="not a multiple"):
            frozen(x[..., :stride + 1])


@pytest.mark.parametrize("stride", [2, 4])
def test_frozen_transposed_conv_equals_the_causal_one(stride):
    torch.manual_seed(0)
    conv = CausalConvTranspose1d(8, 6, 2 * stride, stride).eval()
    frozen = frozen_layer(conv)
    assert isinstance(frozen, FrozenConvTranspose1d)
    with torch.inference_mode():
        for T in (1, 5, 2 * MAX_PRODUCT_SIZE // 8):
            x = torch.randn(2, 8, T)
            torch.testing.assert_close(frozen(x), conv(x), atol=1e-5, rtol=1e-5)
        x = torch.randn(1, 8, 30)
        set_streaming(conv)
        want = torch.cat([conv(x[..., :17]), conv(x[..., 17:])], -1)  # the library, streamed
        set_streaming(frozen)
        got = torch.cat([frozen(x[..., i:i + 1]) for i in range(30)], -1)  # one frame at a time
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert frozen_layer(CausalConvTranspose1d(8, 6, 3 * stride, stride)) is None  # kernel != 2 s
