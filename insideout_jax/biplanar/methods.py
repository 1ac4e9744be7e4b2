"""The registration methods of the biplanar experiment, one case at a time.

- ``render_and_compare``: 2D/3D, the pre-operative splat model posed until its two X-ray renders
  match the X-rays (DiffPose-style baseline, no learning).
- ``radgs_per_case``: RadGS-Reg without networks — a two-view radiative reconstruction initialised
  from the pre-operative splat model, voxelized in the C-arm frame, then 3D/3D registration of
  the CT to it; ``rounds`` > 1 re-initialises the reconstruction from the model posed at the
  previous round's estimate (the first round shifts it to the triangulated centroid).
- ``fdk_then_3d``: the same 3D/3D registration onto the FDK of the two views (reconstruction
  baseline).

Every method starts from the same information: the case's start translation (the CT's attenuation
centroid to the centroid triangulated from the two X-rays,
:func:`~insideout_jax.biplanar.cases.triangulate_centroid`), and the same rotation starts (identity
and ±15° about each axis).
"""

from __future__ import annotations

import dataclasses
import time

import jax.numpy as jnp
import numpy as np

from insideout_jax.biplanar.cases import BiplanarConfig, Case, StructureCrop, centroid, field_grid
from insideout_jax.cameras import make_xray_geometry
from insideout_jax.data.ctobject import ct_volume_projections
from insideout_jax.fdk import fdk
from insideout_jax.metrics.image import psnr3d, ssim3d
from insideout_jax.registration.optimize import (
    ProjectionRegConfig,
    VolumeRegConfig,
    posed_splats,
    register_projections,
    register_volumes,
)
from insideout_jax.registration.pose import pose_matrix
from insideout_jax.registration.warp import grid_points, sample_volume, warp_volume
from insideout_jax.render.slices import make_voxel_grid, voxelize
from insideout_jax.splats import RadSplats
from insideout_jax.train.xray import XrayTrainConfig, train_xray

__all__ = ["MethodConfig", "preop_model", "rotation_starts", "render_and_compare",
           "radgs_per_case", "fdk_then_3d", "reconstruction_scores", "registered_ct", "METHODS"]

METHODS = ("render_and_compare", "radgs_per_case", "fdk_then_3d", "radgs_learned")


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    """Per-case constants. ``preop``: the pre-operative model's fit to circular DRRs of the crop;
    ``recon``: the two-view reconstruction (R²-Gaussian's λ_tv = 0.05, as RadGS-Reg [S §3.2])."""

    preop_views: int = 90
    preop: XrayTrainConfig = XrayTrainConfig(iterations=1500, n_init=6000, init="fdk", init_grid=64,
                                             densify_from=300, densify_until=1200, capacity_factor=1.5,
                                             backend="xla")
    recon: XrayTrainConfig = XrayTrainConfig(iterations=300, views_per_step=2, lambda_tv=0.05,
                                             tv_size=16, tv_spacing=4.0, densify_from=10**9,
                                             capacity_factor=1.0, backend="xla")
    volume_reg: VolumeRegConfig = VolumeRegConfig(steps=(40, 30))
    projection_reg: ProjectionRegConfig = ProjectionRegConfig(steps=100)
    rotation_start_deg: float = 15.0
    rounds: int = 2


def preop_model(crop: StructureCrop, cfg: BiplanarConfig, mcfg: MethodConfig, *, progress: bool = True) -> RadSplats:
    """Radiative splats fitted to the pre-operative CT crop: trained on ``preop_views`` circular
    cone-beam DRRs of it (the C-arm's DSO/DSD), FDK-initialised."""
    n = int(np.ceil(2 * crop.half_size * 1.3 * cfg.dsd / cfg.dso / cfg.pixel_mm))
    geom = make_xray_geometry(mode="cone", n_detector=(n, n), d_detector=(cfg.pixel_mm,) * 2, dso=cfg.dso,
                              dsd=cfg.dsd, angles=np.linspace(0, 2 * np.pi, mcfg.preop_views, endpoint=False),
                              offset_origin=-np.asarray(crop.centre))
    proj = ct_volume_projections(crop.data, crop.spacing_zyx, crop.origin_xyz, geom)
    half = crop.half_size
    splats, _ = train_xray(proj, geom, mcfg.preop, bbox=(crop.centre - half, crop.centre + half),
                           progress=progress)
    return splats


def rotation_starts(translation, deg: float) -> np.ndarray:
    """[7, 6] starts: identity and ±deg about x, y and z, all with ``translation``."""
    w = [np.zeros(3)] + [s * np.deg2rad(deg) * np.eye(3)[k] for k in range(3) for s in (1, -1)]
    return np.stack([np.concatenate([x, translation]) for x in w])


def render_and_compare(case: Case, crop: StructureCrop, preop: RadSplats, mcfg: MethodConfig) -> dict:
    """2D/3D render-and-compare from the triangulated-centroid starts."""
    t0 = time.perf_counter()
    starts = rotation_starts(case.start[3:], mcfg.rotation_start_deg)
    res = register_projections(preop, case.geometry, case.projections, centre=crop.centre, radius=crop.radius,
                               starts=starts, config=mcfg.projection_reg)
    return dict(pose=res["pose"], seconds=time.perf_counter() - t0, volume=None)


def _register_onto(volume, crop, cfg, mcfg):
    shape, sp, org = field_grid(cfg, crop.centre)
    start_t = centroid(volume, sp, org) - crop.centroid
    res = register_volumes(crop.data, volume, centre=crop.centre, spacing_zyx=crop.spacing_zyx,
                           origin_xyz=crop.origin_xyz, radius=crop.radius,
                           starts=rotation_starts(start_t, mcfg.rotation_start_deg),
                           config=mcfg.volume_reg, fixed_spacing_zyx=sp, fixed_origin_xyz=org)
    return res["pose"]


def radgs_per_case(case: Case, crop: StructureCrop, preop: RadSplats, cfg: BiplanarConfig,
                   mcfg: MethodConfig, *, progress: bool = False) -> dict:
    """Two-view reconstruction from the shifted pre-operative model, voxelized, then 3D/3D."""
    t0 = time.perf_counter()
    shift = case.start[3:]
    init = preop.replace(means=preop.means + jnp.asarray(shift, jnp.float32))
    shape, sp, org = field_grid(cfg, crop.centre)
    half = 0.5 * shape[0] * sp[0]
    rounds, pose = [], None
    for r in range(max(int(mcfg.rounds), 1)):
        if r:
            init = posed_splats(preop, jnp.asarray(pose, jnp.float32), jnp.asarray(crop.centre, jnp.float32))
        splats, _ = train_xray(case.projections, case.geometry, mcfg.recon, init_splats=init,
                               bbox=(crop.centre - half, crop.centre + half), progress=progress)
        vol = np.asarray(voxelize(splats, make_voxel_grid(shape, sp, org), backend="xla"))
        pose = _register_onto(vol, crop, cfg, mcfg)
        rounds.append(pose)
    return dict(pose=pose, seconds=time.perf_counter() - t0, volume=vol, rounds=rounds)


def fdk_then_3d(case: Case, crop: StructureCrop, cfg: BiplanarConfig, mcfg: MethodConfig) -> dict:
    """FDK of the two views on the field grid (negative values clipped), then 3D/3D."""
    t0 = time.perf_counter()
    shape, sp, org = field_grid(cfg, crop.centre)
    vol = np.maximum(np.asarray(fdk(case.projections, case.geometry, shape, sp, org)), 0.0)
    pose = _register_onto(vol, crop, cfg, mcfg)
    return dict(pose=pose, seconds=time.perf_counter() - t0, volume=vol)


def reconstruction_scores(volume, crop: StructureCrop, pose_gt, cfg: BiplanarConfig, grid=None) -> dict:
    """PSNR / SSIM of a C-arm-frame reconstruction against the CT crop in the pose-corrected frame:
    the reconstruction sampled at T(x) for every crop voxel x, both min–max normalised.

    ``grid``: (shape, spacing_zyx, origin_xyz) of ``volume`` (default: the C-arm field grid).
    """
    shape, sp, org = field_grid(cfg, crop.centre) if grid is None else grid
    pts = grid_points(crop.data.shape, crop.spacing_zyx, crop.origin_xyz)
    rot, b = pose_matrix(jnp.asarray(pose_gt, jnp.float32), jnp.asarray(crop.centre, jnp.float32))
    rec = np.asarray(sample_volume(jnp.asarray(volume, jnp.float32), pts @ rot.T + b, sp, org), np.float64)

    def norm(x):
        return (x - x.min()) / max(float(np.ptp(x)), 1e-12)

    a, c = norm(rec), norm(np.asarray(crop.data, np.float64))
    return dict(psnr=psnr3d(a, c, data_range=1.0), ssim=ssim3d(a, c, data_range=1.0, form="valid"))


def registered_ct(crop: StructureCrop, pose, cfg: BiplanarConfig) -> np.ndarray:
    """The CT crop moved by ``pose`` onto the C-arm field grid (for figures)."""
    shape, sp, org = field_grid(cfg, crop.centre)
    return np.asarray(warp_volume(jnp.asarray(crop.data), jnp.asarray(pose, jnp.float32), crop.centre,
                                  crop.spacing_zyx, crop.origin_xyz, out_shape=shape, out_spacing_zyx=sp,
                                  out_origin_xyz=org))

