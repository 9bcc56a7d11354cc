"""Flow-matching schedule: warped timesteps, nearest-timestep sigma, add_noise, flow -> x0."""

import jax.numpy as jnp
import numpy as np
import torch

from pyramid_jax.sampling.schedule import FlowSchedule


def test_warped_default_steps():
    got = FlowSchedule(shift=5.0).warp([1000, 750, 500, 250])
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.array([1000.0, 937.5, 833.3333, 625.0], np.float32))


def test_sigmas_match_upstream_torch_float32():
    s = torch.linspace(1.0, 0.0, 1001)[:-1]
    s = 5.0 * s / (1 + 4.0 * s)
    sched = FlowSchedule()
    np.testing.assert_array_equal(sched.sigmas, s.numpy())
    np.testing.assert_array_equal(sched.timesteps, (s * 1000).numpy())


def test_nearest_sigma_and_noise_algebra():
    sched = FlowSchedule()
    t = jnp.array([[1000.0, 937.5], [625.0, 0.0]])
    sig = np.asarray(sched.sigma_at(t))
    assert sig[0, 0] == 1.0 and abs(sig[0, 1] - 0.9375) < 1e-6 and abs(sig[1, 0] - 0.625) < 1e-6
    assert abs(sig[1, 1] - sched.sigmas[-1]) < 1e-9  # t=0 -> nearest is the last (smallest) sigma
    rng = np.random.default_rng(0)
    x0 = jnp.asarray(rng.standard_normal((2, 2, 3, 4)), jnp.float32)
    eps = jnp.asarray(rng.standard_normal((2, 2, 3, 4)), jnp.float32)
    xt = sched.add_noise(x0, eps, t)
    # the flow target is eps - x0; converting it back recovers x0
    np.testing.assert_allclose(np.asarray(sched.flow_to_x0(xt, eps - x0, t)), np.asarray(x0), atol=1e-5)
