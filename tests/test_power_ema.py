"""EDM2's power-function EMA (`train.ema_std`): after n updates the average weights update t by the power profile's
mass on ((t-1)/n, t/n], (t/n)^(gamma+1) - ((t-1)/n)^(gamma+1), whose relative standard deviation is `ema_std`; a
resumed run goes on counting updates, so its EMA is the uninterrupted run's."""

from __future__ import annotations

import pytest
import torch

from potstill.core.config import ConfigError, load_config
from potstill.core.ema import EMA, power_exponent
from tests_support import CONFIGS, whole_and_resumed


@pytest.mark.parametrize("std", [0.01, 0.05, 0.1, 0.2])
def test_the_exponent_gives_the_profile_its_relative_standard_deviation(std):
    gamma = power_exponent(std)
    assert gamma > 0
    assert (gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)) == pytest.approx(std ** 2, rel=1e-9)


def test_the_average_weights_each_update_by_the_power_profile():
    torch.manual_seed(0)
    std, n = 0.1, 400
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, decay=0.5, std=std)
    history = []
    for t in range(1, n + 1):
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn_like(p))
        history.append(model.weight.detach().clone())
        ema.update(model, t)
    gamma = power_exponent(std)
    cumulative = (torch.arange(n + 1, dtype=torch.float64) / n) ** (gamma + 1)
    weights = cumulative[1:] - cumulative[:-1]
    expected = torch.einsum("t,tij->ij", weights, torch.stack(history).double())
    torch.testing.assert_close(ema.model.weight.double(), expected, atol=1e-5, rtol=1e-5)
    times = torch.arange(1, n + 1, dtype=torch.float64) - 0.5
    mean = (weights * times).sum()
    spread = ((weights * (times - mean) ** 2).sum()).sqrt() / n
    assert spread.item() == pytest.approx(std, rel=0.01)


def test_a_constant_decay_is_the_default():
    model = torch.nn.Linear(2, 2)
    ema = EMA(model, decay=0.9)
    assert ema.decay_at(1) == ema.decay_at(500) == 0.9


def test_the_power_average_resumes_exactly(tmp_path):
    overrides = ["train.progress=false", "train.batch_size=8", "train.sample_every=0", "eval.n_samples=16",
                 "eval.batch_size=16", "train.steps=4", "train.checkpoint_every=2", "train.generator_every=2",
                 "train.ema_std=0.1"]
    config = load_config(CONFIGS / "image" / "digits_sid.yaml", overrides)
    whole, resumed, resumed_from = whole_and_resumed(config, tmp_path, stop_after=3)
    assert resumed_from == 2
    for a, b in zip(whole.ema.model.parameters(), resumed.ema.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    online = dict(whole.generator.named_parameters())
    assert any(not torch.equal(p, online[name]) for name, p in whole.ema.model.named_parameters())


def test_an_impossible_spread_is_refused_by_key():
    with pytest.raises(ConfigError, match=r"train\.ema_std: must be in \(0, 0\.2887\)"):
        load_config(CONFIGS / "image" / "digits_sid.yaml", ["train.ema_std=0.3"])
