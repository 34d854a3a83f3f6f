"""Schedules, the wrapped-normal score and lambda_t against independent numerical references."""

import numpy as np
import pytest
import torch

from dao_core.diffusion import (
    DiffusionSchedule,
    cosine_betas,
    expected_squared_score,
    wrapped_normal_score,
)


def numpy_wrapped_density(x: np.ndarray, sigma: float) -> np.ndarray:
    n = np.arange(-30, 31)
    return np.exp(-((x[..., None] + n) ** 2) / (2 * sigma**2)).sum(-1) / (
        np.sqrt(2 * np.pi) * sigma
    )


@pytest.mark.parametrize("sigma", [0.005, 0.05, 0.2, 0.5])
def test_score_matches_finite_difference_of_log_density(sigma: float) -> None:
    x = np.linspace(-0.49, 0.49, 97) * min(1.0, 8 * sigma)
    h = 1e-6 * sigma
    reference = (
        np.log(numpy_wrapped_density(x + h, sigma)) - np.log(numpy_wrapped_density(x - h, sigma))
    ) / (2 * h)
    score = wrapped_normal_score(torch.tensor(x), torch.full((len(x),), sigma, dtype=torch.float64))
    np.testing.assert_allclose(score.numpy(), reference, rtol=1e-5, atol=1e-6 / sigma)


def test_score_is_periodic_and_odd() -> None:
    x = torch.linspace(-0.4, 0.4, 17, dtype=torch.float64)
    s = torch.full_like(x, 0.3)
    torch.testing.assert_close(wrapped_normal_score(x + 1, s), wrapped_normal_score(x, s))
    torch.testing.assert_close(wrapped_normal_score(-x, s), -wrapped_normal_score(x, s))


@pytest.mark.parametrize("sigma", [0.005, 0.03, 0.1, 0.3, 0.5])
def test_lambda_matches_monte_carlo(sigma: float) -> None:
    rng = np.random.default_rng(0)
    samples = rng.normal(0, sigma, 400_000)
    wrapped = (samples + 0.5) % 1 - 0.5
    score = wrapped_normal_score(torch.tensor(wrapped), torch.full((len(wrapped),), sigma).double())
    mc = float((score**2).mean())
    stderr = float((score**2).std()) / np.sqrt(len(wrapped))
    quad = float(expected_squared_score(torch.tensor([sigma], dtype=torch.float64))[0])
    assert abs(quad - mc) < 4 * stderr + 1e-3 * mc
    if sigma <= 0.03:  # unwrapped limit: E[(x/sigma^2)^2] = 1/sigma^2
        assert quad == pytest.approx(1 / sigma**2, rel=1e-6)


def test_schedules() -> None:
    sched = DiffusionSchedule(1000)
    betas = cosine_betas(1000)
    assert betas.min() >= 1e-4 and betas.max() <= 0.9999
    assert float(sched.alphas_cumprod[0]) == 1.0
    assert float(sched.alphas_cumprod[-1]) < 1e-4  # the lattice ends as pure noise
    sigmas = sched.sigmas[1:].double()
    assert float(sigmas[0]) == pytest.approx(0.005, rel=1e-5)
    assert float(sigmas[-1]) == pytest.approx(0.5, rel=1e-5)
    ratios = sigmas[1:] / sigmas[:-1]
    assert float(ratios.std()) < 1e-5  # geometric
