"""Optimizer per-field rates, moment remapping, densification (mass preserving for radiative)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from insideout_jax import splats as S
from insideout_jax.train.densify import (
    DensifyConfig,
    compact_train_state,
    densify_and_prune,
    initial_train_state,
    reset_opacity,
    slot_bucket,
)
from insideout_jax.train.optim import make_optimizer, mask_gradients, merge_params, split_params

RATES = dict(means=1e-2, log_scales=5e-3, quats=1e-3, opacity_logits=5e-2, sh=2.5e-3)


def _rgb(n=6, cap=8):
    pts = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    return S.rgb_splats_from_points(pts, sh_degree=1, capacity=cap)


def _mass(sp):
    a = np.asarray(sp.active)
    rho = np.exp(np.asarray(sp.log_densities, np.float64))
    vol = np.exp(np.asarray(sp.log_scales, np.float64)).prod(1)
    return float((rho * vol)[a].sum())


def test_adam_per_field_rates_and_frozen_fields():
    sp = _rgb()
    params, active = split_params(sp)
    opt = make_optimizer(RATES, frozen=("sh",))
    state = opt.init(params)
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    grads = mask_gradients(grads, active)
    upd, state = opt.update(grads, state, params)
    new = optax.apply_updates(params, upd)
    # Adam's first step moves each coordinate by −lr (unit gradient, bias-corrected)
    np.testing.assert_allclose(new["means"][:6] - params["means"][:6], -1e-2, atol=3e-6)
    np.testing.assert_allclose(new["opacity_logits"][:6] - params["opacity_logits"][:6], -5e-2,
                               rtol=1e-5)
    np.testing.assert_array_equal(new["sh"], params["sh"])  # frozen
    np.testing.assert_array_equal(new["means"][6:], params["means"][6:])  # inactive slots
    back = merge_params(sp, new, active)
    assert isinstance(back, S.RGBSplats)


def test_clone_split_prune_and_moment_remap():
    sp = _rgb(n=6, cap=8)
    sp = sp.replace(log_scales=jnp.full((8, 3), np.log(0.5)).at[1].set(np.log(2.0)),  # big → split
                    opacity_logits=sp.opacity_logits.at[5].set(-9.0))   # weak → prune
    params, active = split_params(sp)
    opt = make_optimizer(RATES)
    state = opt.init(params)
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    _, state = opt.update(grads, state, params)
    avg = np.zeros(8)
    avg[[0, 1]] = 1.0  # 0 clone (small), 1 split (big)
    out, state2, info = densify_and_prune(jax.random.key(0), sp, state, opt, avg, scene_extent=10.0,
                                          cfg=DensifyConfig(grad_threshold=0.5, percent_dense=0.1,
                                                                            max_scale_fraction=0.5))
    assert info == dict(cloned=1, split=1, pruned=1, skipped=0, capacity=8)
    assert S.num_active(out) == 6 + 2 - 1
    a = np.asarray(out.active)
    means = np.asarray(out.means)
    # the pruned splat is gone (its slot may be reused by a new one)
    assert not np.any(np.all(means[a] == np.asarray(sp.means[5]), axis=1))
    # the clone sits exactly on its parent; the split children moved and shrank by 1.6
    clones = [i for i in np.flatnonzero(a) if i != 0 and np.allclose(means[i], means[0])]
    assert len(clones) == 1
    kids = [i for i in np.flatnonzero(a) if np.isclose(out.log_scales[i, 0], np.log(2.0 / 1.6))]
    assert len(kids) == 2 and 1 in kids
    assert np.all(np.abs(means[kids] - np.asarray(sp.means[1])) < 5 * 2.0)
    mu = state2.inner_states["means"].inner_state[0].mu["means"]
    mu_old = state.inner_states["means"].inner_state[0].mu["means"]
    np.testing.assert_allclose(mu[0], mu_old[0])       # parent keeps its moments
    np.testing.assert_array_equal(mu[clones[0]], 0.0)  # new slot starts fresh
    np.testing.assert_array_equal(mu[1], 0.0)          # split child starts fresh


def test_radiative_densification_preserves_mass_and_grows_capacity():
    rng = np.random.default_rng(0)
    sp = S.rad_splats_from_points(rng.normal(size=(10, 3)) * 20, rng.uniform(0.01, 0.1, 10),
                                  capacity=10,
                                  log_scales=np.log(np.repeat([[0.8], [2.5]], 5, 0) * rng.uniform(0.8, 1, (10, 3))))
    params, _ = split_params(sp)
    opt = make_optimizer({k: 1e-3 for k in params})
    state = opt.init(params)
    m0 = _mass(sp)
    out, state, info = densify_and_prune(jax.random.key(1), sp, state, opt, np.ones(10),
                                         scene_extent=100.0,
                                         cfg=DensifyConfig(grad_threshold=0.5, percent_dense=0.015))
    assert info["pruned"] == 0 and info["cloned"] + info["split"] == 10 and info["skipped"] == 0
    assert info["cloned"] > 0 and info["split"] > 0
    assert info["capacity"] == 20 and S.num_active(out) == 20
    np.testing.assert_allclose(_mass(out), m0, rtol=1e-5)
    # at the capacity limit the largest gradients win and the rest are counted, never dropped
    grad = np.arange(20, dtype=float)
    out2, _, info2 = densify_and_prune(jax.random.key(2), out, state, opt, grad,
                                       scene_extent=100.0,
                                       cfg=DensifyConfig(grad_threshold=10.5, max_capacity=24))
    assert info2["capacity"] == 24 and info2["skipped"] == 9 - 4
    np.testing.assert_allclose(_mass(out2), m0, rtol=1e-5)


def test_quantile_densification_is_unit_free():
    # grad_quantile 0.9 and no absolute threshold: the top 10 % of the seen splats are densified,
    # and scaling every statistic by 10⁻⁶ (another object's loss scale) selects the same splats.
    rng = np.random.default_rng(0)
    sp = S.rad_splats_from_points(rng.normal(size=(50, 3)) * 20, np.full(50, 0.05), capacity=120,
                                  log_scales=np.full((50, 3), np.log(0.5)))
    params, _ = split_params(sp)
    opt = make_optimizer({k: 1e-3 for k in params})
    grad = np.zeros(120)
    grad[:50] = rng.permutation(np.arange(1.0, 51.0))
    grad[:5] = 0.0  # not seen since the last step: not counted in the quantile, never densified
    cfg = DensifyConfig(grad_threshold=0.0, grad_quantile=0.9, percent_dense=0.1)
    chosen = []
    for scale in (1.0, 1e-6):
        out, _, info = densify_and_prune(jax.random.key(0), sp, opt.init(params), opt, grad * scale,
                                         scene_extent=100.0, cfg=cfg)
        seen = grad[:50][grad[:50] > 0]
        assert info["cloned"] + info["split"] == int(np.sum(seen >= np.quantile(seen, 0.9))) == 5
        chosen.append(np.asarray(out.means)[np.asarray(out.active)])
    np.testing.assert_array_equal(chosen[0], chosen[1])
    # with an absolute threshold too, a splat must pass both
    _, _, info = densify_and_prune(jax.random.key(0), sp, opt.init(params), opt, grad, scene_extent=100.0,
                                   cfg=DensifyConfig(grad_threshold=49.5, grad_quantile=0.9, percent_dense=0.1))
    assert info["cloned"] + info["split"] == 1
    with pytest.raises(ValueError, match="grad_quantile"):
        DensifyConfig(grad_quantile=1.0)


def test_relative_density_pruning():
    # 100 splats: densities 1e-3 ... 1e-1 (log-spaced); the 99th percentile is known in closed form
    dens = np.geomspace(1e-3, 1e-1, 100)
    sp = S.rad_splats_from_points(np.random.default_rng(0).normal(size=(100, 3)) * 30, dens)
    params, _ = split_params(sp)
    opt = make_optimizer({k: 1e-3 for k in params})
    frac = 0.05
    floor = frac * np.percentile(dens, 99)
    out, _, info = densify_and_prune(jax.random.key(0), sp, opt.init(params), opt, np.zeros(100),
                                     scene_extent=1e6,
                                     cfg=DensifyConfig(grad_threshold=1.0, min_density=1e-6,
                                                       min_density_fraction=frac))
    assert info["pruned"] == int(np.sum(dens < floor)) > 0
    kept = np.exp(np.asarray(out.log_densities))[np.asarray(out.active)]
    np.testing.assert_allclose(np.sort(kept), dens[dens >= floor], rtol=1e-5)


def test_opacity_reset_caps_opacity_and_restarts_its_moments():
    sp = _rgb()
    params, _ = split_params(sp)
    opt = make_optimizer(RATES)
    state = opt.init(params)
    _, state = opt.update(jax.tree_util.tree_map(jnp.ones_like, params), state, params)
    sp = sp.replace(opacity_logits=jnp.full(8, 3.0))
    out, state2 = reset_opacity(sp, state, opt, max_opacity=0.01)
    np.testing.assert_allclose(jax.nn.sigmoid(out.opacity_logits), 0.01, rtol=1e-5)
    assert float(jnp.abs(state2.inner_states["opacity_logits"].inner_state[0].mu["opacity_logits"]).max()) == 0
    assert float(jnp.abs(state2.inner_states["means"].inner_state[0].mu["means"]).max()) > 0


def test_slot_bucket_ladder():
    assert [slot_bucket(n) for n in (0, 64, 65, 100, 1000, 1025, 191_000)] == \
        [64, 64, 72, 104, 1024, 1152, 196_608]
    for n in range(1, 5000, 37):
        assert n <= slot_bucket(n) <= max(64, n * 1.125 + 1)


def test_compaction_keeps_active_splats_and_their_moments_in_order():
    rng = np.random.default_rng(3)
    sp = _rgb(n=6, cap=8)
    active = np.zeros(200, bool)
    active[rng.choice(200, 70, replace=False)] = True
    sp = S.rgb_splats_from_points(rng.normal(size=(200, 3)), sh_degree=1).replace(
        active=jnp.asarray(active))
    params, _ = split_params(sp)
    opt = make_optimizer(RATES)
    state = initial_train_state(sp, opt)
    grads = jax.tree_util.tree_map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), params)
    _, opt_state = opt.update(grads, state["opt_state"], params)
    state = dict(state, opt_state=opt_state, grad_acc=jnp.arange(200.0), step=500)
    out = compact_train_state(state, opt)
    idx = np.flatnonzero(active)
    assert out["params"]["means"].shape == (slot_bucket(70), 3) == (72, 3)
    np.testing.assert_array_equal(np.asarray(out["active"]), np.arange(72) < 70)
    for k, v in params.items():
        np.testing.assert_array_equal(np.asarray(out["params"][k])[:70], np.asarray(v)[idx])
    mu = lambda st: np.asarray(st.inner_states["means"].inner_state[0].mu["means"])  # noqa: E731
    np.testing.assert_array_equal(mu(out["opt_state"])[:70], mu(opt_state)[idx])
    np.testing.assert_array_equal(mu(out["opt_state"])[70:], 0.0)
    np.testing.assert_array_equal(np.asarray(out["grad_acc"])[:70], idx)
    assert float(jax.nn.sigmoid(out["params"]["opacity_logits"][70:]).max()) < 1e-4  # unused
    assert compact_train_state(out, opt) is out  # already compact: unchanged
