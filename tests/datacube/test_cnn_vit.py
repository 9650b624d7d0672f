"""CNN-ViT emulator: longitude-roll equivariance, latitude weights, the energy-balance term on hand-made fields."""

from __future__ import annotations

import torch

from trainer.models.cnn_vit import CNNViT, energy_imbalance, energy_term, lat_weighted_mse, latitude_weights

LAT = torch.linspace(-85.76, 85.76, 32)


def test_rolling_the_inputs_by_whole_patches_rolls_the_prediction():
    torch.manual_seed(0)
    model = CNNViT(3, 5, 7, 32, 64, patch=4, dim=32, depth=2, heads=4, stem=8).eval()
    fields, params = torch.randn(2, 3, 32, 64), torch.randn(2, 5)
    with torch.no_grad():
        out = model(fields, params)
        for k in (4, 12, 60):  # whole patches of 4 longitudes
            rolled = model(torch.roll(fields, k, dims=-1), params)
            torch.testing.assert_close(rolled, torch.roll(out, k, dims=-1), atol=1e-5, rtol=1e-4)
        # the prediction does depend on where the forcing is (not a constant in longitude)
        assert (out - out.mean(dim=-1, keepdim=True)).abs().max() > 1e-3
        assert out.shape == (2, 7, 32, 64)


def test_latitude_weights_sum_to_one_and_favour_the_equator():
    w = latitude_weights(LAT)
    assert abs(float(w.sum()) - 1.0) < 1e-6
    assert w[15] > w[0] and torch.allclose(w, w.flip(0))


def test_lat_weighted_mse_is_area_weighted():
    w = latitude_weights(LAT)
    target = torch.zeros(1, 1, 32, 64)
    polar = target.clone()
    polar[..., 0, :] = 1.0  # error only in the northernmost row
    assert abs(float(lat_weighted_mse(polar, target, w)) - float(w[0])) < 1e-7
    assert abs(float(lat_weighted_mse(target + 2.0, target, w)) - 4.0) < 1e-5


def test_energy_term_on_a_hand_made_field():
    w = latitude_weights(LAT)
    sw = torch.full((1, 32, 64), 240.0)
    lw = torch.full((1, 32, 64), -230.0)
    assert abs(float(energy_imbalance(sw, lw, w)) - 10.0) < 1e-4
    # absorbed short-wave only on the day side (half the longitudes): the global mean halves
    day = sw.clone()
    day[..., 32:] = 0.0
    assert abs(float(energy_imbalance(day, lw, w)) - (120.0 - 230.0)) < 1e-3
    assert abs(float(energy_term(sw, lw, torch.tensor([4.0]), w)) - 36.0) < 1e-3
    assert float(energy_term(sw, lw, torch.tensor([10.0]), w)) < 1e-6
