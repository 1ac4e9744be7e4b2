"""Atomic pytree checkpoints: exact round trip, clear errors, no torn files."""

import os

import numpy as np
import pytest

from insideout_jax import splats as S
from insideout_jax.io.checkpoint import checkpoint_meta, load_checkpoint, save_checkpoint


def test_roundtrip_is_bit_identical(tmp_path):
    sp = S.rgb_splats_from_points(np.random.default_rng(0).normal(size=(7, 3)), capacity=9)
    tree = {"splats": sp, "step": np.int32(12), "lr": [np.float32(1e-3)]}
    save_checkpoint(tmp_path / "c.npz", tree, {"stage": "rgb", "iteration": 12})
    back, meta = load_checkpoint(tmp_path / "c.npz", tree)
    assert meta == {"stage": "rgb", "iteration": 12} == checkpoint_meta(tmp_path / "c.npz")
    for a, b in zip(np.asarray(back["splats"].means), np.asarray(sp.means), strict=True):
        np.testing.assert_array_equal(a, b)
    assert type(back["splats"]) is S.RGBSplats
    np.testing.assert_array_equal(back["splats"].active, sp.active)
    assert back["step"] == 12


def test_errors_name_file_and_key(tmp_path):
    sp = S.rgb_splats_from_points(np.zeros((3, 3)) + np.arange(3)[:, None], capacity=4)
    save_checkpoint(tmp_path / "c.npz", {"s": sp})
    bigger = S.pad_to_capacity(sp, 8)
    with pytest.raises(ValueError, match=r"c\.npz: entry 's/means' has shape \(4, 3\), expected \(8, 3\)"):
        load_checkpoint(tmp_path / "c.npz", {"s": bigger})
    with pytest.raises(ValueError, match="has no entry 't/means'"):
        load_checkpoint(tmp_path / "c.npz", {"t": sp})
    with pytest.raises(ValueError, match="checkpoint file not found"):
        load_checkpoint(tmp_path / "missing.npz", {"s": sp})


def test_failed_write_keeps_previous_checkpoint(tmp_path):
    target = tmp_path / "c.npz"
    save_checkpoint(target, {"x": np.arange(3)})

    class Boom:  # np.asarray of this raises halfway through building the archive
        def __array__(self, *a, **k):
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        save_checkpoint(target, {"x": np.arange(3), "y": Boom()})
    back, _ = load_checkpoint(target, {"x": np.arange(3)})
    np.testing.assert_array_equal(back["x"], np.arange(3))
    assert [p for p in os.listdir(tmp_path) if p.endswith(".tmp")] == []


def test_keep_snapshots_saves_start_middle_end(tmp_path):
    """Snapshots land at the first block reaching 0, ½ and 1 of the iterations, hold that
    block's params, and are kept only inside the context."""
    import jax.numpy as jnp

    from insideout_jax.train.loop import keep_snapshots, load_snapshot, run_training

    def run_block(state, n):  # params count the iterations done
        p = {"means": state["params"]["means"] + n, "sh": state["params"]["sh"]}
        return dict(state, params=p), np.zeros(n)

    state = dict(step=0, params={"means": jnp.zeros((4, 3)), "sh": jnp.ones((4, 1, 3))},
                 active=jnp.asarray([True, True, False, True]))
    with keep_snapshots(tmp_path / "snap") as folder:
        run_training(state, n_iters=10, block=3, run_block=run_block, after_block=lambda s: s,
                     template=None, desc="rgb 3DGS", progress=False)
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["rgb_3dgs.step000003.npz", "rgb_3dgs.step000006.npz", "rgb_3dgs.step000010.npz"]
    params, active, meta = load_snapshot(folder / names[1])
    np.testing.assert_array_equal(params["means"], np.full((4, 3), 6.0))
    np.testing.assert_array_equal(active, [True, True, False, True])
    assert meta == {"desc": "rgb 3DGS", "step": 6, "n_iters": 10}
    run_training(state, n_iters=4, block=2, run_block=run_block, after_block=lambda s: s,
                 template=None, desc="other", progress=False)
    assert len(list(folder.iterdir())) == 3  # outside the context: nothing kept
    with keep_snapshots(folder, (1.0,)):  # a second run of one label keeps the first's files
        for _ in range(2):
            run_training(state, n_iters=4, block=2, run_block=run_block,
                         after_block=lambda s: s, template=None, desc="rgb 3DGS", progress=False)
    assert sorted(p.name for p in folder.iterdir()) == [
        "rgb_3dgs.run2.step000004.npz", "rgb_3dgs.step000003.npz", "rgb_3dgs.step000004.npz",
        "rgb_3dgs.step000006.npz", "rgb_3dgs.step000010.npz"]
    with pytest.raises(ValueError, match="fractions"):
        with keep_snapshots(tmp_path / "x", (0.5, 1.5)):
            pass
