import pytest
import torch

from training.networks import (
    ARCHS,
    Conv2d,
    EDMPrecond,
    PatchEDMPrecond,
    SongUNet,
    UNetBlock,
    build_network,
    position_grid,
)


def paper_net():
    return PatchEDMPrecond(img_resolution=384, img_channels=3, out_channels=1, model_channels=128,
                           channel_mult=[2, 2, 2], num_blocks=4, attn_resolutions=[16], dropout=0.1)


def test_paper_config_parameter_count_and_attention_layout():
    net = paper_net()
    assert sum(p.numel() for p in net.parameters()) == 54_409_729
    attn = [name for name, m in net.model.named_modules() if getattr(m, "num_heads", 0)]
    # img_resolution 384 -> levels 384/192/96; attention only in the decoder's first block
    assert attn == ["dec.96x96_in0"]
    keys = net.state_dict().keys()
    assert "model.enc.384x384_conv.weight" in keys
    assert "model.dec.384x384_aux_conv.weight" in keys
    assert "model.map_layer0.weight" in keys


@pytest.mark.parametrize("shape", [(2, 1, 16, 16), (3, 1, 16, 8), (1, 1, 24, 40)])
def test_patch_net_output_shape(shape, tiny_patch_net):
    x = torch.rand(shape)
    pos = torch.rand(shape[0], 2, *shape[2:]) * 2 - 1
    with torch.no_grad():
        out = tiny_patch_net(x, torch.full((shape[0],), 0.7), pos)
    assert out.shape == shape
    assert torch.isfinite(out).all()


def test_patch_net_requires_position(tiny_patch_net):
    with pytest.raises(ValueError, match="position"):
        tiny_patch_net(torch.rand(1, 1, 16, 16), 1.0)


def test_odd_size_rejected_clearly(tiny_patch_net):
    with pytest.raises(ValueError, match="divisible by 2"):
        tiny_patch_net(torch.rand(1, 1, 15, 16), 1.0, torch.zeros(1, 2, 15, 16))


def test_edm_preconditioning_limits():
    """sigma -> 0: D(x) -> x (c_skip -> 1, c_out -> 0), whatever the network says."""
    torch.manual_seed(0)
    net = build_network("tiny", 16, 1, positional=False).eval()
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        out = net(x, 1e-6)
    assert torch.allclose(out, x, atol=1e-5)
    assert isinstance(net, EDMPrecond) and not isinstance(net, PatchEDMPrecond)


def test_rebuild_from_init_kwargs_gives_same_state_keys():
    net = build_network("small", 64, 1)
    twin = type(net)(**net.init_kwargs)
    assert net.state_dict().keys() == twin.state_dict().keys()


def test_unknown_arch_lists_valid_names():
    with pytest.raises(ValueError, match="tiny"):
        build_network("huge", 64, 1)


def test_group_norm_that_cannot_split_its_channels_is_refused_at_build_time():
    # 48 x [1, 2, 2] concatenates to 144 channels in the decoder: 32 groups do not divide them
    # (it used to fail only at the first training step, naming no option).
    with pytest.raises(ValueError, match="model_channels 48 .* 144 channels, not divisible by its 32 groups"):
        build_network("small", 64, 1, model_channels=48)
    for channels in (16, 32, 64):
        build_network("small", 64, 1, model_channels=channels)


def test_songunet_rejects_bad_types():
    with pytest.raises(ValueError, match="encoder_type"):
        SongUNet(32, 3, 1, encoder_type="nope")


def test_position_grid_values():
    g = position_grid(3, 5)
    assert g.shape == (1, 2, 3, 5)
    assert torch.allclose(g[0, 0, 0], torch.tensor([-1, -0.5, 0, 0.5, 1.0]))  # x: columns
    assert torch.allclose(g[0, 1, :, 0], torch.tensor([-1, 0, 1.0]))  # y: rows
    assert set(ARCHS) >= {"ddpmpp", "small", "tiny"}


@pytest.mark.parametrize("kernel,up,down,fused", [(3, False, False, False), (1, False, False, False),
                                                  (3, True, False, False), (1, False, True, False),
                                                  (3, True, False, True), (3, False, True, True)])
def test_conv_adds_its_bias_once_in_every_resampling_mode(kernel, up, down, fused):
    """The bias goes into the last weighted convolution (or is added in place after the fused
    down-sampling): output(bias) - output(no bias) is the bias at every pixel, in every mode."""
    torch.manual_seed(0)
    conv = Conv2d(4, 6, kernel=kernel, up=up, down=down, fused_resample=fused, init_bias=1)
    conv.bias.data = torch.randn(6)
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        with_bias = conv(x)
        bias = conv.bias.data.clone()
        conv.bias.data.zero_()
        without = conv(x)
    side = 16 if up else 4 if down else 8
    assert with_bias.shape == (2, 6, side, side)
    assert torch.allclose(with_bias - without, bias.reshape(1, -1, 1, 1).expand_as(without), atol=1e-5)


@pytest.mark.parametrize("cin,cout,up,down,attention", [(8, 8, False, False, True), (8, 12, False, False, False),
                                                        (8, 8, True, False, False), (8, 8, False, True, False)])
def test_block_keeps_its_inputs_and_exact_gradients(cin, cout, up, down, attention):
    """The block's in-place adds/scalings act only on its own fresh tensors: the inputs are
    unchanged after a call and autograd's gradients match finite differences (float64)."""
    torch.manual_seed(0)
    block = UNetBlock(cin, cout, emb_channels=6, up=up, down=down, attention=attention, num_heads=1,
                      skip_scale=0.5 ** 0.5, resample_proj=True, adaptive_scale=False,
                      init_zero=dict(init_weight=1)).double().eval()
    x = torch.randn(1, cin, 4, 4, dtype=torch.float64, requires_grad=True)
    emb = torch.randn(1, 6, dtype=torch.float64, requires_grad=True)
    x_copy, emb_copy = x.detach().clone(), emb.detach().clone()
    with torch.no_grad():
        block(x, emb)
    assert torch.equal(x.detach(), x_copy) and torch.equal(emb.detach(), emb_copy)
    assert torch.autograd.gradcheck(block, (x, emb), eps=1e-6, atol=1e-5)
