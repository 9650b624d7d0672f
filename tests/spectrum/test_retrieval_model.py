"""The conditional flows (affine coupling, spline coupling, spline autoregressive) are normalised densities with
exact inverses, and every parameter depends on the spectrum; an ensemble of networks is their mixture."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from trainer.models.retrieval import FLOWS, ConditionalFlow, RetrievalEnsemble, RetrievalModel, SplineFlow

FlowFactory = Callable[..., torch.nn.Module]
FLOW_FACTORIES: dict[str, FlowFactory] = {
    "affine": ConditionalFlow,
    "spline-coupling": lambda **kw: SplineFlow(**kw, coupling=True),
    "spline-autoregressive": lambda **kw: SplineFlow(**kw, coupling=False),
}
each_flow = pytest.mark.parametrize("make_flow", list(FLOW_FACTORIES.values()), ids=list(FLOW_FACTORIES))


def randomised(flow: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in flow.parameters():
            p.normal_(0, 0.3)  # the output layers start at zero (identity); make the map non-trivial
    return flow


@each_flow
def test_log_density_integrates_to_one_in_1d(make_flow: FlowFactory) -> None:
    flow = randomised(make_flow(dim=1, context=4, hidden=16, layers=4))
    c = torch.randn(3, 4)
    grid = torch.linspace(-40, 40, 40001, dtype=torch.float64)
    flow = flow.double()
    for k in range(3):
        logp = flow.log_prob(grid[:, None], c[k:k + 1].double().expand(len(grid), 4))
        total = torch.trapezoid(logp.exp(), grid)
        assert abs(total.item() - 1.0) < 1e-3


@each_flow
def test_the_widened_flow_is_a_density_and_its_samples_follow_it(make_flow: FlowFactory) -> None:
    """base_scale > 1 (the wider importance-sampling proposal): log_prob still integrates to 1, and the samples
    drawn with the same scale have the quantiles of that density."""
    flow = randomised(make_flow(dim=1, context=4, hidden=16, layers=4)).double()
    c = torch.randn(1, 4, dtype=torch.float64)
    grid = torch.linspace(-60, 60, 60001, dtype=torch.float64)
    with torch.no_grad():
        p = flow.log_prob(grid[:, None], c.expand(len(grid), 4), base_scale=1.5).exp()
        narrow = flow.log_prob(grid[:, None], c.expand(len(grid), 4)).exp()
    assert abs(torch.trapezoid(p, grid).item() - 1.0) < 1e-3
    cdf = torch.cumulative_trapezoid(p, grid)
    samples = flow.sample(c, 20000, torch.Generator().manual_seed(0), base_scale=1.5)[0, :, 0]
    for q in (0.05, 0.5, 0.95):
        expected = grid[1:][torch.searchsorted(cdf, torch.tensor(q, dtype=torch.float64))]
        assert abs(torch.quantile(samples, q).item() - expected.item()) < 0.05 * (1 + abs(expected.item()))

    def spread(density: torch.Tensor) -> float:
        mean = torch.trapezoid(density * grid, grid)
        return float(torch.sqrt(torch.trapezoid(density * (grid - mean) ** 2, grid)))

    assert spread(p) > 1.2 * spread(narrow)


@each_flow
def test_log_density_integrates_to_one_in_2d_and_inverse_is_exact(make_flow: FlowFactory) -> None:
    flow = randomised(make_flow(dim=2, context=3, hidden=16, layers=4)).double()
    c = torch.randn(1, 3, dtype=torch.float64)
    axis = torch.linspace(-20, 20, 501, dtype=torch.float64)
    xx, yy = torch.meshgrid(axis, axis, indexing="ij")
    pts = torch.stack([xx.ravel(), yy.ravel()], dim=1)
    p = flow.log_prob(pts, c.expand(len(pts), 3)).exp().reshape(501, 501)
    total = torch.trapezoid(torch.trapezoid(p, axis, dim=1), axis)
    assert abs(total.item() - 1.0) < 5e-3
    samples = flow.sample(c, 2000, torch.Generator().manual_seed(1))[0]
    assert torch.isfinite(flow.log_prob(samples, c.expand(2000, 3))).all()


@each_flow
def test_every_parameter_depends_on_the_spectrum(make_flow: FlowFactory) -> None:
    """Each parameter must be transformed by some coupling, or its posterior is the prior for every spectrum:
    the same base draw under two contexts moves every coordinate of the sample."""
    for dim, layers in ((7, 6), (7, 10), (3, 2), (2, 4)):
        flow = randomised(make_flow(dim=dim, context=4, hidden=16, layers=layers))
        contexts = torch.randn(2, 4)
        a = flow.sample(contexts[:1], 50, torch.Generator().manual_seed(0))
        b = flow.sample(contexts[1:], 50, torch.Generator().manual_seed(0))
        moved = (a - b).abs().amax(dim=(0, 1))
        still = torch.nonzero(moved <= 1e-3).ravel().tolist()
        assert not still, f"dim={dim} layers={layers}: parameters {still} ignore the context"


@pytest.mark.parametrize("flow", FLOWS)
def test_masked_bins_do_not_change_the_output(flow: str) -> None:
    model = randomised(RetrievalModel(n_bins=20, n_params=3, channels=4, context=8, hidden=8, layers=2, flow=flow))
    x = torch.randn(2, 3, 20)
    x[:, 2] = 1.0
    x[:, 2, 10:] = 0.0
    theta = torch.randn(2, 3)
    a = model(x, theta)
    assert torch.isfinite(a).all() and a.shape == (2,)
    junk = x.clone()
    junk[:, :2, 10:] = 7.0  # whatever sits in a masked bin is ignored
    torch.testing.assert_close(model(junk, theta), a)
    x[:, 0, 3] += 1.0  # an observed bin is not
    assert (model(x, theta) - a).abs().min() > 1e-6


def test_encoder_separates_the_mean_level_from_the_features() -> None:
    """A constant added to every observed depth (a larger radius) moves only the level input; the relative
    features the convolutions see are unchanged and scaled by relative_gain."""
    encoder = RetrievalModel(n_bins=12, n_params=2, channels=4, context=8, hidden=8, layers=2,
                             relative_gain=5.0).encoder
    x = torch.randn(3, 3, 12)
    x[:, 2] = (torch.arange(12) < 9).float()
    level, features = encoder.split_level(x)
    shifted_level, shifted = encoder.split_level(torch.cat([x[:, :1] + 0.8, x[:, 1:]], dim=1))
    torch.testing.assert_close(shifted, features)
    torch.testing.assert_close(shifted_level, level + 0.8)
    torch.testing.assert_close(features[:, 0, :9], 5.0 * (x[:, 0, :9] - x[:, 0, :9].mean(dim=1, keepdim=True)))
    assert features[:, :, 9:].abs().max() == 0


@each_flow
def test_log_prob_is_the_change_of_variables_of_sample(make_flow: FlowFactory) -> None:
    """log p(theta) from log_prob equals log N(z) - log|det d theta / d z| computed by autograd through the
    sampling map, at the base draws sample() used; the same generator seed gives the same samples."""
    flow = randomised(make_flow(dim=3, context=4, hidden=16, layers=3)).double()
    c = torch.randn(2, 4, dtype=torch.float64)
    a = flow.sample(c, 8, torch.Generator().manual_seed(5))
    torch.testing.assert_close(flow.sample(c, 8, torch.Generator().manual_seed(5)), a)
    z = torch.randn(16, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    cc = c.repeat_interleave(8, dim=0)
    torch.testing.assert_close(flow.from_base(z, cc), a.reshape(16, 3))
    for k in (0, 9):
        jac = torch.autograd.functional.jacobian(lambda t, k=k: flow.from_base(t, cc[k:k + 1]), z[k:k + 1])
        log_det = torch.linalg.slogdet(jac.reshape(3, 3))[1]
        log_base = -0.5 * (z[k] ** 2).sum() - 1.5 * torch.log(torch.tensor(2 * torch.pi, dtype=torch.float64))
        torch.testing.assert_close(flow.log_prob(a.reshape(16, 3)[k:k + 1], cc[k:k + 1])[0], log_base - log_det)


def test_unknown_flow_is_refused() -> None:
    with pytest.raises(ValueError, match="flow must be one of"):
        RetrievalModel(n_bins=4, n_params=2, flow="planar")


def small_ensemble(members: int, n_params: int = 1) -> RetrievalEnsemble:
    torch.manual_seed(0)
    ensemble = RetrievalEnsemble(members, n_bins=6, n_params=n_params, channels=3, context=4, hidden=8, layers=2,
                                 flow="spline-coupling")
    with torch.no_grad():
        for member in ensemble.members:
            for p in member.flow.parameters():
                p.add_(torch.randn_like(p) * 0.3)  # members start apart anyway; make each map non-trivial
    return ensemble.double()


def spectrum_input(batch: int, n_bins: int = 6) -> torch.Tensor:
    x = torch.randn(batch, 3, n_bins, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x[:, 2] = 1.0
    return x


def test_ensemble_members_start_apart_and_train_as_their_mean_log_density() -> None:
    ensemble = small_ensemble(3, n_params=2)
    first, second = (dict(m.encoder.named_parameters()) for m in ensemble.members[:2])
    assert any(not torch.equal(first[k], second[k]) for k in first)  # each member draws its own weights
    x, theta = spectrum_input(4), torch.randn(4, 2, dtype=torch.float64)
    torch.testing.assert_close(ensemble(x, theta), torch.stack([m(x, theta) for m in ensemble.members]).mean(0))
    mixture = torch.logsumexp(torch.stack([m(x, theta) for m in ensemble.members]), 0) - math.log(3)
    torch.testing.assert_close(ensemble.log_prob(x, theta), mixture)
    with pytest.raises(ValueError, match="at least 2 members"):
        RetrievalEnsemble(1, n_bins=6, n_params=2)


def test_ensemble_mixture_is_a_density_and_its_samples_follow_it() -> None:
    """The mixture's log_prob integrates to 1 (also widened), and sample() draws from that mixture: its quantiles
    match the mixture's CDF, which differs from either member's; the draws are shuffled across members."""
    ensemble = small_ensemble(2)
    x = spectrum_input(1)
    grid = torch.linspace(-40, 40, 40001, dtype=torch.float64)[:, None]
    with torch.no_grad():
        for scale in (1.0, 1.5):
            total = torch.trapezoid(ensemble.log_prob(x, grid, base_scale=scale).exp(), grid[:, 0])
            assert abs(total.item() - 1.0) < 1e-3
        density = ensemble.log_prob(x, grid).exp()
        member_medians = []
        for m in ensemble.members:
            cdf = torch.cumulative_trapezoid(m.log_prob(x, grid).exp(), grid[:, 0])
            member_medians.append(grid[1:, 0][torch.searchsorted(cdf, torch.tensor(0.5, dtype=torch.float64))])
    assert abs(member_medians[0] - member_medians[1]) > 1.0  # the members disagree: the mixture is neither
    cdf = torch.cumulative_trapezoid(density, grid[:, 0])
    samples = ensemble.sample(x, 20001, torch.Generator().manual_seed(0))
    assert samples.shape == (1, 20001, 1)
    for q in (0.1, 0.5, 0.9):
        expected = grid[1:, 0][torch.searchsorted(cdf, torch.tensor(q, dtype=torch.float64))]
        assert abs(torch.quantile(samples[0, :, 0], q).item() - expected.item()) < 0.05 * (1 + abs(expected.item()))
    # any prefix mixes both members: the first 2,000 draws have about the mixture's median too
    cut = (member_medians[0] + member_medians[1]) / 2
    share_low = (samples[0, :2000, 0] < cut).double().mean().item()
    assert 0.3 < share_low < 0.7
    again = ensemble.sample(x, 20001, torch.Generator().manual_seed(0))
    torch.testing.assert_close(again, samples)
