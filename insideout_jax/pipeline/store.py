"""The stages' disk format: each result type written (atomically) and read back in one place.

A run folder holds ``stages/`` (the stage results the next stages read) and the deliverables
(``unified.ply``, ``volume.tif``, ``mesh.ply``; docs/OUTPUTS.md). A splat set is saved twice: as
``<name>.npz``, every array of the pytree bit for bit (what the next stage reads, so a run from
disk gives the numbers of :func:`insideout_jax.pipeline.fuse` in memory), and as ``<name>.ply``
(3DGS fields, active splats) for viewers. Transforms and fit reports are JSON, volumes ``.npy``,
training curves ``<stage>_history.json``.
"""

from __future__ import annotations

import io as _io
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from insideout_jax import io as iio
from insideout_jax.fitting.procrustes import Similarity
from insideout_jax.io.checkpoint import atomic_write_bytes, checkpoint_meta, load_checkpoint, save_checkpoint
from insideout_jax.io.exports import write_gltf_splats, write_nifti, write_nrrd, write_obj
from insideout_jax.io.ply import write_mesh_ply, write_ply
from insideout_jax.pipeline.results import (
    EvaluationResult,
    FitResult,
    InternalResult,
    RGBResult,
    VisualResult,
    XGaussianModel,
    XrayResult,
    json_number,
)
from insideout_jax.render.slices import make_voxel_grid
from insideout_jax.splats import RadSplats, RGBSplats

__all__ = ["MissingStageOutput", "load_grid", "load_splats", "load_fit_levels", "load_transform",
           "load_xgaussian", "save_npy", "save_result", "save_splats"]


class MissingStageOutput(FileNotFoundError):
    """A stage's input from an earlier stage is not on disk (the message names the stage)."""


def save_npy(path: Path, array) -> Path:
    buf = _io.BytesIO()
    np.save(buf, np.asarray(array))
    atomic_write_bytes(path, buf.getvalue())
    return path


_SPLAT_TYPES = {"RGBSplats": RGBSplats, "RadSplats": RadSplats}


def save_splats(stage_dir: Path, name: str, splats) -> Path:
    """``<name>.npz`` (exact) and ``<name>.ply`` (for viewers) of a splat set."""
    import dataclasses as dc

    fields = {f.name: np.asarray(getattr(splats, f.name)) for f in dc.fields(splats)}
    meta = {"type": type(splats).__name__,
            "fields": {k: [list(v.shape), v.dtype.str] for k, v in fields.items()}}
    save_checkpoint(Path(stage_dir) / f"{name}.npz", splats, meta)
    return write_ply(Path(stage_dir) / f"{name}.ply", splats)


def _history(stage_dir: Path, name: str, history) -> None:
    if history is not None:
        atomic_write_bytes(stage_dir / f"{name}_history.json", json.dumps(history).encode())


def _similarity(d: dict) -> Similarity:
    """A :class:`Similarity` from its ``as_dict()`` form."""
    return Similarity(np.asarray(d["rotation"], np.float32), np.asarray(d["translation"], np.float32),
                      np.float32(d["scale"]))


def save_result(stage_dir: Path, out_dir: Path, result) -> list[Path]:
    """Write a stage result; returns the files written."""
    stage_dir, out_dir = Path(stage_dir), Path(out_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if isinstance(result, RGBResult):
        written.append(save_splats(stage_dir, "rgb_splats", result.splats))
        _history(stage_dir, "rgb", result.history)
    elif isinstance(result, XrayResult):
        written.append(save_splats(stage_dir, "xray_splats", result.splats))
        _history(stage_dir, "xray", result.history)
        if result.xgaussian is not None:
            written.append(save_splats(stage_dir, "xgaussian_splats", result.xgaussian.splats))
            written.append(iio.write_json_atomic(stage_dir / "xgaussian.json",
                                                 {"scale": float(result.xgaussian.scale)}))
            _history(stage_dir, "xgaussian", result.xgaussian.history)
    elif isinstance(result, FitResult):
        written.append(save_splats(stage_dir, "rgb_aligned", result.splats))
        written.append(iio.write_json_atomic(stage_dir / "fitting.json", {
            "transform": result.transform.as_dict(),
            "stages": [{"name": st.name, "accepted": st.accepted, "residual": json_number(st.residual),
                        "residual_before": json_number(st.residual_before),
                        "clusters": st.clusters, "displacement_mean": json_number(st.displacement_mean),
                        "seconds": st.seconds, "targets_dropped": st.targets_dropped,
                        "grid_coarsening": json_number(st.grid_coarsening),
                        "distortion": {k: json_number(v) for k, v in st.distortion.items()},
                        "transform": st.transform.as_dict()} for st in result.stages]}))
    elif isinstance(result, InternalResult):
        written.append(save_splats(stage_dir, "xray_internal", result.rad))
        written.append(save_splats(stage_dir, "rgb_internal", result.rgb))
        for name, h in result.histories.items():
            _history(stage_dir, name, h)
        written.append(iio.write_json_atomic(stage_dir / "internal.json", {"n_slices": result.n_slices}))
    elif isinstance(result, VisualResult):
        from insideout_jax.visual import write_unified_ply

        g = result.grid
        written.append(write_unified_ply(out_dir / "unified.ply", result.model))
        written.append(write_gltf_splats(out_dir / "unified.glb", result.model.splats,
                                         density=np.exp(np.asarray(result.model.log_densities)),
                                         radiative=np.asarray(result.model.radiative)))
        vol = iio.make_volume(result.density, np.asarray(g.spacing_zyx), np.asarray(g.origin_xyz),
                              quantity="attenuation")
        written.append(iio.write_volume(out_dir / "volume.tif", vol))
        written.append(write_nifti(out_dir / "volume.nii.gz", vol))
        written.append(write_nrrd(out_dir / "volume.nrrd", vol))
        written.append(save_npy(stage_dir / "volume_unified.npy", result.density))
        written.append(save_splats(stage_dir, "unified_splats", result.model.splats))
        written.append(save_npy(stage_dir / "unified_log_densities.npy", result.model.log_densities))
        written.append(save_npy(stage_dir / "unified_radiative.npy", result.model.radiative))
        written.append(iio.write_json_atomic(stage_dir / "visual.json", {
            "grid": {"shape_zyx": list(g.shape_zyx), "spacing_zyx": np.asarray(g.spacing_zyx).tolist(),
                     "origin_xyz": np.asarray(g.origin_xyz).tolist()}}))
        _history(stage_dir, "colour", result.history)
    elif isinstance(result, EvaluationResult):
        written.append(write_mesh_ply(out_dir / "mesh.ply", *result.mesh))
        written.append(write_obj(out_dir / "mesh.obj", *result.mesh))
        for name, vol in (result.volumes or {}).items():
            written.append(save_npy(stage_dir / f"volume_{name}.npy", vol))
    else:
        raise TypeError(f"not a stage result: {type(result).__name__}")
    return written


def _need(path: Path, stage: str) -> Path:
    if not path.is_file():
        raise MissingStageOutput(f"{path} is missing: run the '{stage}' stage first")
    return path


_MADE_BY = {"rgb_splats": "rgb", "xray_splats": "xray", "xgaussian_splats": "xray", "rgb_aligned": "fitting",
            "xray_internal": "internal", "rgb_internal": "internal", "unified_splats": "visual"}


def load_splats(stage_dir: Path, name: str):
    """A splat set a stage saved (``rgb_splats``, ``xray_splats``, ``rgb_aligned``, ...), exactly."""
    path = _need(Path(stage_dir) / f"{name}.npz", _MADE_BY.get(name, name))
    meta = checkpoint_meta(path)
    cls = _SPLAT_TYPES[meta["type"]]
    like = cls(**{k: np.zeros(shape, np.dtype(dt)) for k, (shape, dt) in meta["fields"].items()})
    tree, _ = load_checkpoint(path, like)
    return jax.tree_util.tree_map(jnp.asarray, tree)


def load_xgaussian(stage_dir: Path) -> XGaussianModel | None:
    """The X-Gaussian baseline the X-ray stage saved, or None where it trained none."""
    d = Path(stage_dir)
    if not (d / "xgaussian.json").is_file():
        return None
    return XGaussianModel(load_splats(d, "xgaussian_splats"),
                          float(iio.read_json(d / "xgaussian.json")["scale"]))


def load_transform(stage_dir: Path) -> Similarity:
    """The fitted RGB → CT similarity of the fitting stage."""
    return _similarity(iio.read_json(_need(Path(stage_dir) / "fitting.json", "fitting"))["transform"])


def load_fit_levels(stage_dir: Path) -> list:
    """[(level name, its RGB → CT Similarity)] of the fitting stage, in order."""
    levels = iio.read_json(_need(Path(stage_dir) / "fitting.json", "fitting"))["stages"]
    return [(lv["name"], _similarity(lv["transform"])) for lv in levels]


def load_unified(stage_dir: Path):
    """The unified model (:class:`insideout_jax.visual.UnifiedModel`) the visual stage saved."""
    from insideout_jax.visual import UnifiedModel

    d = Path(stage_dir)
    return UnifiedModel(load_splats(d, "unified_splats"),
                        jnp.asarray(np.load(_need(d / "unified_log_densities.npy", "visual"))),
                        jnp.asarray(np.load(_need(d / "unified_radiative.npy", "visual"))))


def load_grid(stage_dir: Path):
    """(grid, density) of the unified model, as the visual stage saved them."""
    g = iio.read_json(_need(Path(stage_dir) / "visual.json", "visual"))["grid"]
    grid = make_voxel_grid(tuple(g["shape_zyx"]), g["spacing_zyx"], g["origin_xyz"])
    return grid, np.load(_need(Path(stage_dir) / "volume_unified.npy", "visual"))
