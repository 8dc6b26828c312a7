import pytest
import torch

from inverse.prior import (
    OverlapAveragePrior,
    PatchPrior,
    WholeImagePrior,
    axis_pads,
    candidate_psizes,
    check_grid,
    choose_grid,
    extract_patches,
    grid_candidates,
    grid_region,
    stitch_patches,
    valid_psizes,
)
from training.networks import build_network, position_grid


class Identity(torch.nn.Module):
    """D(x) = x; records what it was called with."""

    pos_channels = 2

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x, sigma, pos=None):
        self.seen.append((x.detach().clone(), torch.as_tensor(sigma).detach().clone(),
                          None if pos is None else pos.detach().clone()))
        return x


@pytest.mark.parametrize("shape,psize", [((2, 1, 12, 12), 4), ((1, 3, 10, 15), 5), ((3, 2, 14, 7), 7)])
def test_extract_stitch_round_trip_exact(shape, psize):
    x = torch.randn(shape)
    patches = extract_patches(x, psize)
    ph, pw = shape[2] // psize, shape[3] // psize
    assert patches.shape == (shape[0] * ph * pw, shape[1], psize, psize)
    # patch (image 0, row 1, column 0) is the crop at (psize, 0)
    assert torch.equal(patches[pw], x[0, :, psize:2 * psize, :psize])
    assert torch.equal(stitch_patches(patches, shape[0], ph, pw), x)


@pytest.mark.parametrize("size,pad,psize", [((16, 16), 3, 10), ((16, 16), 4, 7), ((20, 12), 4, 8),
                                            ((13, 18), 5, 6), ((256, 256), 24, 56)])
def test_round_trip_on_canvas_for_all_offsets(size, pad, psize):
    """psize need not divide S; every offset in [0, pad-1] covers the image exactly."""
    h, w = size
    ph, pw = check_grid(h, w, pad, psize)
    x = torch.rand(2, 1, h, w)
    canvas = torch.nn.functional.pad(x, (pad,) * 4)
    for a in {0, pad - 1, pad // 2}:
        for b in {0, pad - 1}:
            region = grid_region(canvas, a, b, ph, pw, psize)
            back = stitch_patches(extract_patches(region, psize), 2, ph, pw)
            assert torch.equal(back, region)
            assert torch.equal(back[:, :, pad - a:pad - a + h, pad - b:pad - b + w], x)


def test_paper_configuration_is_valid():
    assert check_grid(256, 256, 24, 56) == (5, 5)
    assert 56 in valid_psizes(256, 24)


def test_invalid_psize_lists_valid_values():
    with pytest.raises(ValueError, match=r"valid psize values .*\[") as err:
        check_grid(256, 256, 24, 64)
    assert "56" in str(err.value)
    with pytest.raises(ValueError, match="pad must be >= 1"):
        check_grid(16, 16, 0, 8)
    with pytest.raises(ValueError, match="psize=9"):
        PatchPrior(Identity(), pad=3, psize=9)(torch.rand(1, 1, 16, 16), 1.0, torch.Generator())


@pytest.mark.parametrize("size,pad,psize", [((16, 16), 4, 10), ((12, 20), 4, 8), ((16, 20), 4, 5)])
def test_identity_network_returns_input(size, pad, psize, generator):
    prior = PatchPrior(Identity(), pad, psize)
    x = torch.randn(3, 2, *size)
    for _ in range(4):
        assert torch.equal(prior(x, 0.5, generator), x)


def test_offset_redrawn_and_covers_range(generator):
    prior = PatchPrior(Identity(), pad=4, psize=10)
    offsets = [prior.draw_offset(generator) for _ in range(200)]
    assert {a for a, _ in offsets} == set(range(4)) == {b for _, b in offsets}
    # Same seed -> same offsets; the offset changes between calls of the prior itself.
    net = Identity()
    prior = PatchPrior(net, pad=4, psize=10)
    x = torch.rand(1, 1, 16, 16)
    for _ in range(8):
        prior(x, 1.0, generator)
    first_pos = {tuple(p[0, :, 0, 0].tolist()) for _, _, p in net.seen}
    assert len(first_pos) > 1
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert [prior.draw_offset(g1) for _ in range(5)] == [prior.draw_offset(g2) for _ in range(5)]


def test_one_batched_call_with_all_patches_and_position_crops():
    net = Identity()
    prior = PatchPrior(net, pad=4, psize=10)  # 16x16 -> P = 2, canvas 24
    x = torch.rand(3, 1, 16, 16)
    sigma = torch.tensor([0.1, 0.2, 0.3])
    prior(x, sigma, None, offset=(1, 3))
    assert prior.calls == 1 and len(net.seen) == 1
    patches, sig, pos = net.seen[0]
    assert patches.shape == (3 * 2 * 2, 1, 10, 10)
    assert torch.equal(sig, sigma.repeat_interleave(4))
    grid = position_grid(24, 24)
    for k, (row, col) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        top, left = 1 + row * 10, 3 + col * 10
        expected = grid[0, :, top:top + 10, left:left + 10]
        assert torch.equal(pos[k], expected)
        assert torch.equal(pos[4 + k], expected)  # second image: same positions
        canvas = torch.nn.functional.pad(x, (4,) * 4)
        assert torch.equal(patches[8 + k], canvas[2, :, top:top + 10, left:left + 10])
    prior.reset_calls()
    assert prior.calls == 0


def test_batch_chunking_gives_same_result(tiny_patch_net):
    x = torch.rand(2, 1, 16, 16)
    whole = PatchPrior(tiny_patch_net, pad=4, psize=10)
    chunked = PatchPrior(tiny_patch_net, pad=4, psize=10, batch=3)
    with torch.no_grad():
        out1 = whole(x, 0.5, torch.Generator().manual_seed(3))
        out2 = chunked(x, 0.5, torch.Generator().manual_seed(3))
    assert whole.calls == 1 and chunked.calls == 3  # 8 patches in chunks of 3
    torch.testing.assert_close(out1, out2, atol=1e-5, rtol=1e-5)
    assert out1.shape == x.shape and torch.isfinite(out1).all()


def test_gradient_flows_through_prior(tiny_patch_net):
    prior = PatchPrior(tiny_patch_net, pad=4, psize=10)
    x = torch.rand(1, 1, 16, 16, requires_grad=True)
    prior(x, 0.5, torch.Generator().manual_seed(0)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_overlap_average_identity_and_counts():
    net = Identity()
    prior = OverlapAveragePrior(net, psize=8, stride=4, pad=2)
    x = torch.randn(2, 1, 13, 18)
    out = prior(x, 0.3, None)
    torch.testing.assert_close(out, x)
    assert prior.calls == 1
    assert net.seen[0][0].shape[1:] == (1, 8, 8)
    with pytest.raises(ValueError, match="stride"):
        OverlapAveragePrior(net, psize=8, stride=9)


def test_overlap_average_real_net_and_chunks(tiny_patch_net):
    x = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        a = OverlapAveragePrior(tiny_patch_net, psize=8, stride=4)(x, 0.5)
        b = OverlapAveragePrior(tiny_patch_net, psize=8, stride=4, batch=2)(x, 0.5)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_whole_image_prior_pads_to_accepted_size(tiny_patch_net):
    x = torch.rand(2, 1, 15, 13)  # odd sides: the tiny U-Net needs even ones
    prior = WholeImagePrior(tiny_patch_net)
    with torch.no_grad():
        out = prior(x, torch.tensor([0.2, 0.4]), None)
    assert out.shape == x.shape and prior.calls == 1
    assert torch.equal(WholeImagePrior(Identity())(x, 1.0), x)


def test_patch_prior_on_real_net_rgb():
    torch.manual_seed(0)
    net = build_network("tiny", 32, 3).eval()
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        out = PatchPrior(net, pad=4, psize=10)(x, 0.1, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and torch.isfinite(out).all()


# ----------------------------------------------------------------------------------------
# Speed options: precision, channels-last, compile (issue 7)


@pytest.fixture
def busy_net():
    """The tiny net with every weight random (a fresh net's output convolution is zero, so its
    output would not depend on the precision at all)."""
    torch.manual_seed(0)
    net = build_network("tiny", img_resolution=32, image_channels=1).eval().requires_grad_(False)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.2)
    return net


def _noisy(seed=0):
    g = torch.Generator().manual_seed(seed)
    return 0.5 + 0.3 * torch.randn(2, 1, 32, 32, generator=g)


def test_bf16_on_cpu_is_finite_float32_and_close_to_fp32(busy_net):
    x = _noisy()
    ref = PatchPrior(busy_net, pad=4, psize=12)(x, 0.5, offset=(1, 2))
    with torch.inference_mode():
        out = PatchPrior(busy_net, pad=4, psize=12, precision="bf16")(x, 0.5, offset=(1, 2))
    assert out.dtype == torch.float32 and out.shape == x.shape and torch.isfinite(out).all()
    diff = (out - ref).abs().max().item()
    assert 0 < diff < 0.05 * ref.abs().max().item()  # bf16 really ran, and stayed close


def test_fp16_on_cpu_and_unknown_precision_are_clear_errors(busy_net):
    with pytest.raises(ValueError, match="fp16 needs a CUDA device.*use bf16 on CPU"):
        PatchPrior(busy_net, pad=4, psize=12, precision="fp16")
    with pytest.raises(ValueError, match=r"precision='int8'; expected one of \['bf16', 'fp16', 'fp32'\]"):
        WholeImagePrior(busy_net, precision="int8")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_reduced_precision_on_cuda(busy_net, precision):
    net = busy_net.to("cuda")
    x = _noisy().to("cuda")
    ref = PatchPrior(net, pad=4, psize=12)(x, 0.5, offset=(1, 2))
    out = PatchPrior(net, pad=4, psize=12, precision=precision)(x, 0.5, offset=(1, 2))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert (out - ref).abs().max().item() < 0.05 * ref.abs().max().item()


def test_channels_last_gives_the_same_result(busy_net):
    import copy
    x = _noisy()
    ref = PatchPrior(busy_net, pad=4, psize=12)(x, 0.5, offset=(3, 0))
    net = copy.deepcopy(busy_net)
    out = PatchPrior(net, pad=4, psize=12, channels_last=True)(x, 0.5, offset=(3, 0))
    assert net.model.enc["32x32_conv"].weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_compile_failure_falls_back_to_eager_with_one_warning(busy_net, monkeypatch):
    def broken_compile(model, **kwargs):
        def run(*args):
            raise RuntimeError("InductorError: no working C++ compiler\nlong details")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    x = _noisy()
    ref = PatchPrior(busy_net, pad=4, psize=12)(x, 0.5, offset=(0, 0))
    prior = PatchPrior(busy_net, pad=4, psize=12, compile=True)
    with pytest.warns(RuntimeWarning, match="torch.compile failed .*no working C\\+\\+ compiler.*without compiling"):
        out = prior(x, 0.5, offset=(0, 0))
    torch.testing.assert_close(out, ref)
    assert prior.forward.failure.startswith("RuntimeError: InductorError")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(prior(x, 0.5, offset=(0, 0)), ref)  # eager now, no new warning
    assert prior.calls == 2

    def refusing_compile(model, **kwargs):
        raise RuntimeError("Windows not yet supported for torch.compile")

    monkeypatch.setattr(torch, "compile", refusing_compile)
    with pytest.warns(RuntimeWarning, match="Windows not yet supported"):
        prior = WholeImagePrior(busy_net, compile=True)
    torch.testing.assert_close(prior(x, 0.5), WholeImagePrior(busy_net)(x, 0.5))


def test_prior_used_in_inference_mode_then_with_autograd(tiny_patch_net):
    """Cached canvas grid / overlap counts made under inference_mode must not break DPS's backward."""
    gen = torch.Generator().manual_seed(0)
    for prior in (PatchPrior(tiny_patch_net, pad=4, psize=12),
                  OverlapAveragePrior(tiny_patch_net, psize=12, stride=6, pad=4)):
        x = torch.rand(1, 1, 32, 32)
        with torch.inference_mode():
            prior(x, 0.3, gen)
        xg = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(prior(xg, 0.3, gen).square().sum(), xg)
        assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_chunked_dps_gradient_equals_one_autograd_pass(tiny_patch_net):
    """With batch, denoise_with_grad keeps one chunk's graph at a time; same x0 and gradient."""
    from inverse.operators import make_operator
    from inverse.samplers import denoise_with_grad, residual_norm, sample_dps

    torch.manual_seed(1)
    x = torch.rand(2, 1, 16, 16)
    op = make_operator("deblur_gauss", (16, 16), channels=1)
    y = op.A(torch.rand(2, 1, 16, 16))

    def loss(z):
        return residual_norm(op, y, z).sum()

    full = PatchPrior(tiny_patch_net, pad=4, psize=10)
    chunked = PatchPrior(tiny_patch_net, pad=4, psize=10, batch=3)  # 2 images x 4 patches: 3 chunks
    x0a, ga = denoise_with_grad(full, x, 0.7, torch.Generator().manual_seed(5), loss)
    x0b, gb = chunked.denoise_with_grad(x, 0.7, torch.Generator().manual_seed(5), loss)
    assert chunked.calls == 3 + 3  # the no-grad pass and the gradient pass, 3 chunks each
    torch.testing.assert_close(x0b, x0a, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gb, ga, rtol=1e-4, atol=1e-6)
    assert ga.abs().sum() > 0 and not x0b.requires_grad and not gb.requires_grad

    # the whole DPS solve is the same, and the random stream is consumed the same way
    sig = torch.tensor([2.0, 0.5, 0.1])
    xa = sample_dps(full, op, y, sig, torch.Generator().manual_seed(0), inner=2)
    xb = sample_dps(chunked, op, y, sig, torch.Generator().manual_seed(0), inner=2)
    torch.testing.assert_close(xb, xa, rtol=1e-4, atol=1e-5)


def test_choose_grid_keeps_the_paper_configuration_and_tiles_odd_sizes():
    assert choose_grid(256, 256, (16, 64), 4) == (24, 56)
    for h, w in [(48, 40), (40, 56), (33, 71), (100, 80), (16, 16)]:
        pad, psize = choose_grid(h, w, (16, 64), 4)
        assert 16 <= psize <= 64 and psize % 4 == 0
        check_grid(h, w, pad, psize)  # tiles: no error
    # 48x40 has no single pad with psize >= 16 (the sides differ by 8 < psize): one pad per axis.
    assert not [p for p in range(16, 65) for pd in range(1, 200)
                if p in valid_psizes(48, pd) and p in valid_psizes(40, pd)]
    pad, psize = choose_grid(48, 40, (16, 64), 4)
    assert isinstance(pad, tuple) and pad[0] != pad[1]
    # A given psize (or pad) is kept and only the other one chosen.
    assert choose_grid(256, 256, (16, 64), 4, psize=56) == (24, 56)
    assert choose_grid(40, 56, (16, 64), 4, pad=7)[0] == 7


def test_grid_candidates_are_ranked_by_the_paper_ratio():
    ranked = grid_candidates(256, 256, candidate_psizes((16, 64), 4))
    assert ranked[0] == (0.0, 24, 56)
    scores = [s for s, _, _ in ranked]
    assert scores == sorted(scores)
    for _, pad, psize in ranked:
        check_grid(256, 256, pad, psize)


def test_bad_pair_lists_working_pairs_and_prior_average():
    with pytest.raises(ValueError, match=r"working \(pad, psize\) pairs: \(") as err:
        check_grid(40, 56, 24, 56)
    assert "prior 'average'" in str(err.value)
    pairs = str(err.value).split("pairs: ")[1]
    assert "(7, 16)" in pairs


@pytest.mark.parametrize("size", [(48, 40), (40, 56)])
def test_per_axis_pads_stitch_exactly(size, generator):
    """Identity network: the chosen (per-axis) grid gives the input back at every offset."""
    net = Identity()
    prior = PatchPrior(net)  # pad/psize chosen per size
    x = torch.rand(2, 1, *size)
    pad, psize = prior.grid_for(*size)
    rows, cols = axis_pads(pad)
    offsets = {prior.draw_offset(generator, pad) for _ in range(300)}
    assert {a for a, _ in offsets} == set(range(rows)) and {b for _, b in offsets} == set(range(cols))
    for offset in [(0, 0), (rows - 1, cols - 1), (rows // 2, 0)]:
        assert torch.equal(prior(x, 0.3, offset=offset), x)
    patches = net.seen[-1][0]
    assert patches.shape[-1] == psize
