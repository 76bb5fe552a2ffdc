"""Networks: shapes at every resolution, conditioning, StyleGAN2's building blocks, export for the registry."""
import math

import pytest
import torch
import torch.nn.functional as F

from trainers.networks import PackedInputGenerator, build_generator, build_models, generate_images
from trainers.networks.stylegan2 import downsample2d, minibatch_std, modulated_conv2d, upsample2d, _fir
from trainers.spec import ModelSpec

MODELS = {
    "dcgan": ModelSpec(arch="dcgan", z_dim=8, channels=4, channels_max=32),
    "cond-dcgan": ModelSpec(arch="cond-dcgan", z_dim=8, channels=4, channels_max=32, conditioning="tags", embed_dim=4),
    "stylegan2": ModelSpec(arch="stylegan2", z_dim=8, channels=4, channels_max=32, mapping_layers=2),
    "stylegan2-tags": ModelSpec(arch="stylegan2", z_dim=8, channels=4, channels_max=32, mapping_layers=2,
                                conditioning="tags"),
}


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("resolution", [16, 32, 64])
def test_every_arch_maps_noise_to_images_and_images_to_logits(name, resolution):
    torch.manual_seed(0)
    g, d = build_models(MODELS[name], resolution, c_dim=5)
    c = torch.tensor([[1, 0, 1, 0, 0], [0, 1, 0, 0, 1], [0, 0, 0, 1, 0]], dtype=torch.float32)
    x = g(torch.randn(3, 8), c)
    assert x.shape == (3, 3, resolution, resolution) and torch.isfinite(x).all()
    logits, aux = d(x, c)
    assert logits.shape == (3,)
    assert (aux.shape == (3, 5)) if name == "cond-dcgan" else aux is None
    (logits.sum() + (aux.sum() if aux is not None else 0)).backward()
    assert all(p.grad is not None for p in g.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", ["dcgan", "stylegan2"])
def test_the_largest_resolution_builds_and_runs(name):
    # widths below the spec's minimum (model_copy skips validation) keep 1024x1024 cheap
    g, d = build_models(MODELS[name].model_copy(update={"channels": 1, "channels_max": 8}), 1024)
    x = generate_images(g, torch.randn(2, 8))
    assert x.shape == (2, 3, 1024, 1024) and d(x)[0].shape == (2,)


@pytest.mark.parametrize("resolution", [8, 48, 2048])
def test_resolution_outside_16_to_1024_powers_of_two_is_refused(resolution):
    with pytest.raises(ValueError, match="power of two from 16 to 1024"):
        build_models(MODELS["dcgan"], resolution)


@pytest.mark.parametrize("name", ["cond-dcgan", "stylegan2-tags"])
def test_conditional_generators_depend_on_the_tags(name):
    torch.manual_seed(0)
    g, _ = build_models(MODELS[name], 16, c_dim=4)
    z = torch.randn(2, 8)
    a = generate_images(g, z, torch.tensor([[1.0, 0, 0, 0]] * 2))
    b = generate_images(g, z, torch.tensor([[0, 0, 1.0, 1.0]] * 2))
    assert (a - b).abs().max() > 1e-3 * a.abs().max()  # relative: a fresh DCGAN's outputs are tiny
    with pytest.raises(ValueError, match="needs a tag vector|conditional"):
        g(z, None)


def test_conditioning_without_tags_in_the_dataset_is_an_error():
    with pytest.raises(ValueError, match="no tags"):
        build_models(MODELS["cond-dcgan"], 16, c_dim=0)


def test_generator_rebuilds_from_its_config():
    for name in MODELS:
        torch.manual_seed(1)
        g, _ = build_models(MODELS[name], 32, c_dim=3)
        g2 = build_generator(g.config)
        g2.load_state_dict(g.state_dict())
        c = torch.eye(3)[:2]
        torch.testing.assert_close(generate_images(g, torch.ones(2, 8), c if g.c_dim else None),
                                   generate_images(g2, torch.ones(2, 8), c if g.c_dim else None))


def test_modulated_conv_equals_per_sample_weights_with_demodulation():
    torch.manual_seed(0)
    x, w, s = torch.randn(3, 4, 8, 8), torch.randn(5, 4, 3, 3), torch.randn(3, 4)
    out = modulated_conv2d(x, w, s, demodulate=True, padding=1)
    for i in range(3):
        wi = w * s[i][None, :, None, None]
        wi = wi / wi.square().sum(dim=[1, 2, 3], keepdim=True).add(1e-8).sqrt()
        torch.testing.assert_close(out[i:i + 1], F.conv2d(x[i:i + 1], wi, padding=1), rtol=1e-4, atol=1e-4)


def test_fir_resampling_keeps_constants_and_halves_or_doubles():
    f = _fir()
    x = torch.full((1, 2, 8, 8), 3.0)
    up, down = upsample2d(x, f), downsample2d(x, f)
    assert up.shape == (1, 2, 16, 16) and down.shape == (1, 2, 4, 4)
    torch.testing.assert_close(up[..., 2:-2, 2:-2], torch.full_like(up[..., 2:-2, 2:-2], 3.0))
    torch.testing.assert_close(down[..., 1:-1, 1:-1], torch.full_like(down[..., 1:-1, 1:-1], 3.0))


def test_minibatch_std_appends_the_group_standard_deviation():
    torch.manual_seed(0)
    x = torch.randn(8, 3, 4, 4)
    y = minibatch_std(x, 4)
    assert y.shape == (8, 4, 4, 4)
    groups = x.reshape(4, 2, 3, 4, 4)  # group g holds samples g, g+2, g+4, g+6 (StyleGAN's layout)
    expected = groups.var(dim=0, unbiased=False).add(1e-8).sqrt().mean(dim=[1, 2, 3])
    torch.testing.assert_close(y[:2, 3, 0, 0], expected)
    assert minibatch_std(torch.randn(6, 3, 4, 4), 4).shape == (6, 4, 4, 4)  # group 3 divides 6


def test_stylegan2_truncation_pulls_toward_the_average_w():
    torch.manual_seed(0)
    g, _ = build_models(MODELS["stylegan2"], 16)
    z = torch.randn(4, 8)
    g.mapping(z, None, update_w_avg=True)
    assert g.mapping.w_avg.abs().sum() > 0
    ws = g.mapping(z, None, truncation_psi=0.0)
    torch.testing.assert_close(ws[0, 0], g.mapping.w_avg)
    assert g.num_ws == 2 * int(math.log2(16)) - 2


@pytest.mark.parametrize("name", list(MODELS))
def test_packed_generator_exports_with_a_dynamic_batch(name):
    torch.manual_seed(0)
    g, _ = build_models(MODELS[name], 16, c_dim=3)
    packed = PackedInputGenerator(g).eval()
    width = 8 + (3 if g.c_dim else 0)
    prog = torch.export.export(packed, (torch.zeros(2, width),), dynamic_shapes=[{0: torch.export.Dim.AUTO}])
    x = torch.randn(5, width)
    torch.testing.assert_close(prog.module()(x), packed(x))
    c = x[:, 8:] if g.c_dim else None
    torch.testing.assert_close(packed(x), generate_images(g, x[:, :8], c))
