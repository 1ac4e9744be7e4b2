"""RadGS-Reg learned (patient-specific, stage P3): training data, losses, resumable training of
RecM and RegM (module-wise, then jointly) and one forward pass per case.

Frames. A sample is a case (:func:`~insideout_jax.biplanar.cases.make_case`) seen relative to its
start translation t_s (from the X-rays alone): the C-arm frame shifted by −t_s, in which the
structure sits at T_res(p) = R(p − c) + c + t − t_s on the CT crop grid. RecM reconstructs there
(the views shifted by −t_s), RegM predicts T_res from (V_rec, V_CT) on the crop grid, and the
estimate is T̂ = (ω̂, t̂_res + t_s).

Losses (RadGS-Reg Eqs. 2–4): L_rec = L1(I, I_m) + 0.2·(1 − SSIM) + 0.05·TV(V) for the factual and
the counterfactual-effect Gaussians; L_reg = (1 − NCC) + (1 − SSIM₃D) of the CT warped by T̂
against V_rec, + 0.02·geodesic(T_res, T̂) in mm; joint: L_reg + L_rec.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import functools
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from insideout_jax.biplanar.cases import BiplanarConfig, Case, StructureCrop, make_case, move_view_poses
from insideout_jax.biplanar.nets import RecNet, RegNet, anchor_grid, head_scale, head_to_splats
from insideout_jax.io.checkpoint import load_checkpoint, save_checkpoint
from insideout_jax.losses import ssim as ssim2d
from insideout_jax.losses import tv_3d
from insideout_jax.registration.pose import compose_poses, geodesic_distance, invert_pose, pose_matrix, random_poses
from insideout_jax.registration.similarity import ncc3d, ssim3d
from insideout_jax.registration.warp import warp_volume
from insideout_jax.render.slices import make_voxel_grid, voxelize
from insideout_jax.render.xray import render_xray

__all__ = ["LearnedConfig", "Samples", "make_samples", "refinement_samples", "init_params", "train_learned",
           "predict", "statics", "load_learned", "trained_config"]


@dataclasses.dataclass(frozen=True)
class LearnedConfig:
    """Schedule, network size and inference.

    SEED_SYSTEMS §1.7 proposes 13³ anchors and RecM 1,500, RegM 1,500, joint 1,000 steps at batch
    4 (Adam 1e-3 [D], the paper's 0.1 being a likely typo). Measured on the 2-core CPU (Stanford
    crop, uncontended, median after warm-up): 0.97 / 0.35 / 1.67 s per RecM / RegM / joint step,
    61 minutes in all. To fit the 30-minute budget: 9³ anchors and 2,000 / 1,200 / 400 steps
    (14.7 minutes of steps on the Stanford head with 1,000 RecM steps; the seconds per step are in
    ``benchmarks/bench_biplanar.py``). ``reg_passes``: RegM applied that many times at inference,
    each pass on the reconstruction moved back by the estimate so far (RegM trained on ground-truth
    volumes only: 1.79 / 1.25 / 1.00 mm mTRE after 1 / 2 / 3 passes on 30 held-out poses).
    ``pixel_aligned``: the Gaussian head also reads each anchor's features at its projections in
    the two X-rays (:class:`~insideout_jax.biplanar.nets.RecNet`). ``lambda_volume`` [D]: RecM's
    loss adds that × the mean |V − V_posed| / the crop's maximum, V_posed the training pair's posed
    CT (3-D supervision, which the released code has as a Chamfer term to a fitted model; Eq. 2
    alone leaves the two views' depth ambiguous). Measured on the Stanford head, RecM alone, its
    reconstructions of 30 held-out poses registered by one trained RegM (3 passes): mTRE 3.64 mm at
    λ 0 (2,000 steps), 2.74 / 2.39 mm at λ 1 / 5 (1,000 steps); NCC to the posed CT 0.87 / 0.95 /
    0.96. ``rounds`` [D]: RecM → RegM applied that many times, each later round on the same two
    X-rays with the views moved by the inverse of the estimate so far (the frame in which the
    structure sits near its CT pose; images unchanged); for it the networks also train on a copy of
    every pair in such a frame, the structure at δ⁻¹ with δ from U(±``refine_rot_deg``°) ×
    U(±``refine_trans_mm``) (:func:`refinement_samples`). Stanford head, 30 cases, same schedule:
    one round of networks trained without such frames 2.36 mm mTRE / SR 43 %; a second round with
    them 3.12 mm (the frame is new to them); trained with the copies 2.03 / 67 % after one round
    and 1.87 / 83 % after two (δ from U(±10°) × U(±6 mm) instead: 2.25 / 63 %, a prototype run).
    On the TIGRE head the copies cost the first round more than the second recovers: 2.39 / 47 %
    → 3.95 / 0 % after one round and 2.91 / 17 % after two (RecM's loss over its last 100 steps
    0.40 → 0.50: its RecM, whose loss is 3 × Stanford's, is short of steps for twice the pairs);
    on the skull they gain (one round, no copies: 5.30 / 13 %; with them 4.38 / 33 % after one
    round, 4.77 / 20 % after two). Hence one round by default; ``train --rounds 2`` trains for two,
    and :func:`load_learned` runs as many as the weights were trained for (DESIGN.md: pairs, steps)."""

    n_train: int = 400
    image: int = 64
    anchors_side: int = 9
    rec_steps: int = 2000
    reg_steps: int = 1200
    joint_steps: int = 400
    reg_passes: int = 3
    rounds: int = 1
    refine_rot_deg: float = 6.0
    refine_trans_mm: float = 4.0
    pixel_aligned: bool = True
    batch: int = 4
    lr: float = 1e-3
    checkpoint_every: int = 100
    lambda_ssim: float = 0.2
    lambda_tv: float = 0.05
    lambda_geo: float = 0.02
    lambda_volume: float = 5.0
    seed: int = 1000  # training cases come from another seed stream than the test cases


@dataclasses.dataclass(frozen=True, eq=False)
class Samples:
    """Stacked training samples (host NumPy): X-rays [N, 2, n, n] (line integrals at the networks'
    size), view poses [N, 2, 5, 3] shifted by −t_s, posed CT [N, m, m, m] on the crop grid,
    residual poses [N, 6] and start translations [N, 3]."""

    xrays: np.ndarray
    poses: np.ndarray
    v_posed: np.ndarray
    pose_res: np.ndarray
    t_start: np.ndarray


def _downsample(p, f):
    v, h, w = p.shape
    return p.reshape(v, h // f, f, w // f, f).mean((2, 4))


def case_sample(case: Case, crop: StructureCrop, cfg: BiplanarConfig, lcfg: LearnedConfig) -> tuple:
    """(xrays [2, n, n], poses [2, 5, 3], pose_res [6], t_start [3]) of one case."""
    f = cfg.n_detector // lcfg.image
    if f * lcfg.image != cfg.n_detector:
        raise ValueError(f"the detector ({cfg.n_detector}) must be a multiple of the network image size ({lcfg.image})")
    t_s = np.asarray(case.start[3:], np.float64)
    poses = np.asarray(case.geometry.poses, np.float64).copy()
    poses[:, 3] -= t_s
    res = np.asarray(case.pose, np.float64).copy()
    res[3:] -= t_s
    return _downsample(np.asarray(case.projections, np.float32), f), poses.astype(np.float32), res, t_s


def make_samples(crop: StructureCrop, cfg: BiplanarConfig, lcfg: LearnedConfig, n: int, *, seed: int,
                 progress: bool = True) -> Samples:
    """``n`` samples from the case stream ``seed`` (poses from the training distribution)."""
    from tqdm.auto import tqdm

    xs, ps, vs, rs, ts = [], [], [], [], []
    for k in tqdm(range(int(n)), desc="DRR pairs", disable=not progress):
        x, p, r, t = case_sample(make_case(crop, cfg, seed, k), crop, cfg, lcfg)
        v = warp_volume(jnp.asarray(crop.data), jnp.asarray(r, jnp.float32), crop.centre, crop.spacing_zyx,
                        crop.origin_xyz)
        xs.append(x), ps.append(p), vs.append(np.asarray(v)), rs.append(r), ts.append(t)
    return Samples(*(np.stack(a).astype(np.float32) for a in (xs, ps, vs, rs, ts)))


def refinement_samples(samples: Samples, crop: StructureCrop, lcfg: LearnedConfig) -> Samples:
    """A copy of every sample in a refinement frame: the C-arm frame moved by A = (T_res ∘ δ)⁻¹, δ
    drawn from U(±``refine_rot_deg``°) × U(±``refine_trans_mm``) (stream (seed, 1)), so the
    structure sits at A ∘ T_res = δ⁻¹: the same X-rays, the views moved by A, the CT posed by δ⁻¹
    and the residual pose δ⁻¹. It is what a later round of :func:`predict` sees when the estimate
    so far is T_res ∘ δ."""
    rng = np.random.default_rng([lcfg.seed, 1])
    d = random_poses(rng, len(samples.xrays), max_rot_deg=lcfg.refine_rot_deg, max_trans_mm=lcfg.refine_trans_mm)
    c = jnp.asarray(crop.centre, jnp.float32)
    ct = jnp.asarray(crop.data)

    def one(a):
        res, poses, dl = a
        rot, b = pose_matrix(invert_pose(compose_poses(res, dl)), c)
        inv = invert_pose(dl)
        return (move_view_poses(poses, rot, b, jnp), inv,
                warp_volume(ct, inv, crop.centre, crop.spacing_zyx, crop.origin_xyz))

    poses, res, vols = jax.jit(lambda *a: jax.lax.map(one, a))(
        jnp.asarray(samples.pose_res), jnp.asarray(samples.poses), jnp.asarray(d, jnp.float32))
    return Samples(samples.xrays, np.asarray(poses), np.asarray(vols), np.asarray(res), samples.t_start)


@dataclasses.dataclass(frozen=True)
class _Static:
    """What the losses need besides parameters and data (hashable for jit)."""

    cfg: BiplanarConfig
    lcfg: LearnedConfig
    centre: tuple
    half: float
    spacing: tuple
    origin: tuple
    shape: int
    x_scale: float
    density_scale: float
    density_unit: float


def _geometry(st: _Static, poses):
    from insideout_jax.cameras import make_xray_geometry

    px = st.cfg.pixel_mm * st.cfg.n_detector / st.lcfg.image
    g = make_xray_geometry(mode="cone", n_detector=(st.lcfg.image,) * 2, d_detector=(px, px), dso=st.cfg.dso,
                           dsd=st.cfg.dsd, poses=np.asarray(_identity_poses(), np.float64))
    return g.replace(poses=poses)


def _anchor_uv(st: _Static, poses):
    """[B, 2, K, 2] pixel coordinates of the anchor grid's points (crop frame, before the
    learnable offsets) in both network-size X-rays of every sample; None without pixel alignment."""
    if not st.lcfg.pixel_aligned:
        return None
    from insideout_jax.xray_geometry import xray_project

    pts = jnp.asarray(st.centre, jnp.float32) + st.half * jnp.asarray(anchor_grid(st.lcfg.anchors_side))

    def one(p):
        g = _geometry(st, p)
        return jnp.stack([xray_project(g, p[v], pts)[0] for v in range(2)])

    return jax.vmap(one)(poses)


def _identity_poses():
    return np.array([[[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0], [0, 0, 0]]] * 2, np.float32)


def _recon(st: _Static, out, poses, target, v_target):
    s = head_to_splats(out, st.centre, st.half, st.density_unit)
    img = render_xray(s, _geometry(st, poses), backend="xla") / st.x_scale
    vol = voxelize(s, make_voxel_grid((st.shape,) * 3, st.spacing, st.origin), backend="xla")
    t = target / st.x_scale
    l1 = jnp.mean(jnp.abs(img - t))
    ss = jnp.mean(jax.vmap(lambda a, b: ssim2d(a[..., None], b[..., None]))(img, t))
    loss = l1 + st.lcfg.lambda_ssim * (1 - ss) + st.lcfg.lambda_tv * tv_3d(vol / st.density_scale)
    if st.lcfg.lambda_volume:
        loss = loss + st.lcfg.lambda_volume * jnp.mean(jnp.abs(vol - v_target)) / st.density_scale
    return loss, vol


def _reg(st: _Static, params, v_rec, v_ct, pose_res):
    raw = RegNet().apply(params, v_rec, v_ct)
    pose = jnp.concatenate([raw[:, :3], raw[:, 3:] * st.half], -1)
    def one(ct_b, pose_b, rec_b):
        moved = warp_volume(ct_b, pose_b, st.centre, st.spacing, st.origin)
        dr = jnp.maximum(jnp.max(rec_b) - jnp.min(rec_b), 1e-6)
        return (1 - ncc3d(moved, rec_b)) + (1 - ssim3d(moved, rec_b, dr))

    loss = jnp.mean(jax.vmap(one)(v_ct, pose, v_rec))
    geo = jnp.mean(geodesic_distance(pose_res, pose, st.half))
    return loss + st.lcfg.lambda_geo * geo, pose


def init_params(key, lcfg: LearnedConfig, n_vox: int) -> dict:
    """{"rec": RecNet parameters, "reg": RegNet parameters}."""
    return _init_jit(lcfg.image, lcfg.anchors_side, int(n_vox), lcfg.pixel_aligned)(key)


@functools.lru_cache(maxsize=8)
def _init_jit(image: int, anchors_side: int, n_vox: int, pixel_aligned: bool):
    """The networks' initialisation compiled once (eager flax initialisation compiles every
    convolution separately: 23 s against 11 s at the test's sizes)."""
    def init(key):
        x = jnp.zeros((1, image, image, 1))
        v = jnp.zeros((1,) + (n_vox,) * 3)
        uv = jnp.zeros((1, 2, anchors_side ** 3, 2)) if pixel_aligned else None
        k1, k2, k3 = jax.random.split(key, 3)
        return {"rec": RecNet(n_anchors_side=anchors_side).init(k1, x, x, k3, uv), "reg": RegNet().init(k2, v, v)}

    return jax.jit(init)


def _losses(stage, st: _Static, params, batch, key, ct):
    xr, poses, v_posed, pose_res = batch
    b = xr.shape[0]
    inp = xr / st.x_scale
    total = 0.0
    v_rec = v_posed
    if stage in ("rec", "joint"):
        net = RecNet(n_anchors_side=st.lcfg.anchors_side)
        fact, eff = net.apply(params["rec"], inp[:, 0, ..., None], inp[:, 1, ..., None], key, _anchor_uv(st, poses))
        # the factual and effect Gaussians of every sample through one compiled renderer (lax.map)
        both = (jnp.concatenate([fact, eff]), jnp.concatenate([poses, poses]), jnp.concatenate([xr, xr]),
                jnp.concatenate([v_posed, v_posed]))
        losses, vols = jax.lax.map(lambda a: _recon(st, *a), both)
        total = total + jnp.sum(losses) / b
        v_rec = vols[:b]
    if stage in ("reg", "joint"):
        v_ct = jnp.broadcast_to(ct, v_rec.shape)
        lr_, _ = _reg(st, params["reg"], v_rec, v_ct, pose_res)
        total = total + lr_
    return total


def train_learned(crop: StructureCrop, samples: Samples, cfg: BiplanarConfig, lcfg: LearnedConfig,
                  checkpoint: str | Path, *, progress: bool = True) -> dict:
    """Train RecM, then RegM, then both (Eq. 4), resuming from ``checkpoint`` (saved atomically
    every ``checkpoint_every`` steps; step k's batch depends on (seed, k) only, so a resumed run
    draws what an uninterrupted one would). Each stage starts a fresh Adam state: optax's bias
    correction counts the steps of all parameters together, so a module that had no gradient in
    the previous stage would start with moments of a few steps corrected as if from thousands,
    i.e. steps of up to 6.5 × the learning rate over its first hundred (on the TIGRE head, after
    2,000 RecM steps, RegM stayed at its initial loss, 1.1, through its 1,200 steps; trained alone
    from the same start it reaches 0.30 in 200). With ``rounds`` > 1 the samples are doubled by
    their :func:`refinement_samples`. Returns the parameters; the loss history and the seconds
    spent in training steps (compilation included) are in the checkpoint's metadata.

    Raises:
      ValueError: when ``checkpoint`` holds a training of another configuration.
    """
    from tqdm.auto import tqdm

    x_scale = float(np.percentile(samples.xrays, 99.5)) or 1.0
    if lcfg.rounds > 1:
        ref = refinement_samples(samples, crop, lcfg)
        samples = Samples(*(np.concatenate([getattr(samples, f.name), getattr(ref, f.name)])
                            for f in dataclasses.fields(Samples)))
    st = statics(crop, cfg, lcfg, x_scale)
    ct = jnp.asarray(crop.data)
    opt = optax.adam(lcfg.lr)
    params = init_params(jax.random.key(lcfg.seed), lcfg, crop.data.shape[0])
    plan = [("rec", lcfg.rec_steps), ("reg", lcfg.reg_steps), ("joint", lcfg.joint_steps)]
    total = sum(n for _, n in plan)
    meta = dict(step=0, history=[], x_scale=x_scale, config=repr(lcfg), seconds=0.0)
    ck = Path(checkpoint)
    if ck.is_file():
        tree, meta = load_checkpoint(ck, {"params": params, "opt": opt.init(params)})
        if meta.get("config") != repr(lcfg):
            raise ValueError(f"{ck}: a checkpoint of another training configuration ({meta.get('config')}), not"
                             f" {lcfg!r}; delete it to train anew")
        params = jax.tree_util.tree_map(jnp.asarray, tree["params"])
        opt_state = jax.tree_util.tree_map(jnp.asarray, tree["opt"])
    else:
        opt_state = opt.init(params)

    steps = {}
    for stage, _ in plan:
        def step(params, opt_state, batch, key, stage=stage):
            loss, g = jax.value_and_grad(lambda p: _losses(stage, st, p, batch, key, ct))(params)
            up, opt_state = opt.update(g, opt_state, params)
            return optax.apply_updates(params, up), opt_state, loss
        steps[stage] = jax.jit(step)
    data = (samples.xrays, samples.poses, samples.v_posed, samples.pose_res)
    bar = tqdm(total=total, initial=int(meta["step"]), desc="RadGS-Reg training", disable=not progress)
    start = 0
    for stage, n in plan:
        for k in range(start, start + n):
            if k < meta["step"]:
                continue
            if k == start:  # a fresh Adam state per stage (see the docstring)
                opt_state = opt.init(params)
            idx = np.random.default_rng([lcfg.seed, k]).integers(0, len(samples.xrays), lcfg.batch)
            batch = tuple(jnp.asarray(a[idx]) for a in data)
            t0 = time.perf_counter()
            params, opt_state, loss = steps[stage](params, opt_state, batch, jax.random.key(k))
            meta["history"].append([stage, k, float(loss)])
            meta["seconds"] = float(meta.get("seconds", 0.0)) + time.perf_counter() - t0
            meta["step"] = k + 1
            bar.update(1)
            bar.set_postfix(stage=stage, loss=f"{float(loss):.4f}")
            if meta["step"] % lcfg.checkpoint_every == 0 or meta["step"] == total:
                save_checkpoint(ck, {"params": params, "opt": opt_state}, meta)
        start += n
    bar.close()
    return params


def statics(crop: StructureCrop, cfg: BiplanarConfig, lcfg: LearnedConfig, x_scale: float) -> _Static:
    """The fixed quantities of the losses: crop grid, the X-ray scale (the training X-rays' 99.5th
    percentile, saved in the checkpoint), the density scale (the crop's maximum; TV is taken on the
    field over it) and the density unit: a Gaussian's density per unit of softplus, chosen so the
    untrained head (raw outputs 0: softplus ln 2, σ = h/8 at sigmoid ½) fills the cube with the
    crop's mean attenuation, K·ρ·(2π)^{3/2}σ³ = mean·(2h)³. Started from the crop's maximum
    instead, the first steps drive every density towards 0, where softplus has no gradient left."""
    mean = float(np.mean(np.clip(crop.data, 0, None))) or 1.0
    sigma = float(head_scale(0.0, crop.half_size))
    rho0 = mean * (2 * crop.half_size) ** 3 / (lcfg.anchors_side ** 3 * (2 * np.pi) ** 1.5 * sigma ** 3)
    return _Static(cfg, lcfg, tuple(float(c) for c in crop.centre), float(crop.half_size), tuple(crop.spacing_zyx),
                   tuple(crop.origin_xyz), int(crop.data.shape[0]), float(x_scale), float(crop.data.max()) or 1.0,
                   float(rho0 / np.log(2.0)))


def trained_config(text: str) -> dict:
    """The fields a training configuration's repr (``training.json`` / checkpoint metadata) states;
    fields it lacks (older trainings) or whose value is not a literal (nothing is evaluated) are
    absent, so that callers choose what such a training meant. Not such a repr: {}."""
    try:
        call = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        return {}
    if not (isinstance(call, ast.Call) and getattr(call.func, "id", None) == "LearnedConfig"):
        return {}
    out = {}
    for k in call.keywords:
        with contextlib.suppress(ValueError):
            out[k.arg] = ast.literal_eval(k.value)
    return out


def load_learned(path: str | Path, crop: StructureCrop, cfg: BiplanarConfig, lcfg: LearnedConfig) -> tuple:
    """(parameters, statics) of a finished training checkpoint (all the steps its own training
    configuration planned, whatever ``lcfg``'s step counts); the statics' config runs as many
    rounds as the weights were trained for (the ``rounds`` of the training configuration: later
    rounds need networks that saw refinement frames, and weights that did are meant for them).

    Raises:
      ValueError: naming the file, when it is missing or its training has not finished.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no trained networks; train them first with"
                         " `python -m insideout_jax.biplanar train ...` (same CT and options)")
    opt = optax.adam(lcfg.lr)
    like = init_params(jax.random.key(0), lcfg, crop.data.shape[0])
    tree, meta = load_checkpoint(path, {"params": like, "opt": opt.init(like)})
    trained = trained_config(meta.get("config", ""))
    total = sum(int(trained.get(k, getattr(lcfg, k))) for k in ("rec_steps", "reg_steps", "joint_steps"))
    lcfg = dataclasses.replace(lcfg, rounds=int(trained.get("rounds", 1)))
    if int(meta["step"]) < total:
        raise ValueError(f"{path}: training stopped at step {meta['step']} of {total}; rerun the training"
                         " command to resume it")
    params = jax.tree_util.tree_map(jnp.asarray, tree["params"])
    return params, statics(crop, cfg, lcfg, meta["x_scale"])


def predict(params, case: Case, crop: StructureCrop, cfg: BiplanarConfig, lcfg: LearnedConfig,
            st: _Static) -> dict:
    """Forward passes of RecM → voxelize → RegM (``reg_passes`` times, each on the reconstruction
    moved back by the estimate so far), in ``rounds`` rounds (each later one with the views moved by
    the inverse of the estimate so far) for a case: pose, the first round's reconstruction (the C-arm
    frame, from the X-rays alone), the pose after each round, seconds."""
    t0 = time.perf_counter()
    x, poses, _, t_s = case_sample(case, crop, cfg, lcfg)
    res, vol = _predict_jit(st)(params, jnp.asarray(x), jnp.asarray(poses), jnp.asarray(crop.data))
    rounds = np.asarray(res, np.float64)
    rounds[:, 3:] += t_s
    vol = np.asarray(vol)
    return dict(pose=rounds[-1], rounds=list(rounds), volume_crop=vol, seconds=time.perf_counter() - t0)


@functools.lru_cache(maxsize=4)
def _predict_jit(st: _Static):
    def recon(params, inp, poses):
        net = RecNet(n_anchors_side=st.lcfg.anchors_side)
        fact, _ = net.apply(params["rec"], inp[None, 0, ..., None], inp[None, 1, ..., None], None,
                            _anchor_uv(st, poses[None]))
        s = head_to_splats(fact[0], st.centre, st.half, st.density_unit)
        return voxelize(s, make_voxel_grid((st.shape,) * 3, st.spacing, st.origin), backend="xla")

    def run(params, x, poses, ct):
        inp = x / st.x_scale
        total, first, totals = jnp.zeros(6), None, []
        for _ in range(st.lcfg.rounds):
            rot, b = pose_matrix(invert_pose(total), jnp.asarray(st.centre, jnp.float32))
            vol = recon(params, inp, move_view_poses(poses, rot, b, jnp))
            first = vol if first is None else first
            est = jnp.zeros(6)
            for _ in range(st.lcfg.reg_passes):
                back = warp_volume(vol, invert_pose(est), st.centre, st.spacing, st.origin)
                raw = RegNet().apply(params["reg"], back[None], ct[None])[0]
                est = compose_poses(est, jnp.concatenate([raw[:3], raw[3:] * st.half]))
            total = compose_poses(total, est)
            totals.append(total)
        return jnp.stack(totals), first

    return jax.jit(run)
