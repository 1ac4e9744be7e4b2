"""The public API: every exported name exists and is documented; subpackages import cleanly."""

import importlib
import inspect

import pytest

import insideout_jax

MODULES = ["insideout_jax", "insideout_jax.io", "insideout_jax.metrics", "insideout_jax.render",
           "insideout_jax.losses", "insideout_jax.fitting", "insideout_jax.evaluation",
           "insideout_jax.visual", "insideout_jax.train.rgb", "insideout_jax.train.xray",
           "insideout_jax.internal.train", "insideout_jax.internal.pseudo_gt",
           "insideout_jax.data.phantom", "insideout_jax.data.sfm", "insideout_jax.config",
           "insideout_jax.stacks", "insideout_jax.stacks.surface", "insideout_jax.stacks.evaluate",
           "insideout_jax.stacks.folded", "insideout_jax.stacks.train",
           "insideout_jax.render.xray", "insideout_jax.render.slices",
           "insideout_jax.render.pallas_additive", "insideout_jax.render.pallas_xray",
           "insideout_jax.render.pallas_rgb", "insideout_jax.render.pairs", "insideout_jax.render.tiles",
           "insideout_jax.render.additive", "insideout_jax.fitting.visible"]


@pytest.mark.parametrize("name", MODULES)
def test_exports_exist_and_are_documented(name):
    mod = importlib.import_module(name)
    assert mod.__doc__, f"{name} has no module docstring"
    for attr in getattr(mod, "__all__", []):
        obj = getattr(mod, attr)  # raises if __all__ names something missing
        if inspect.isfunction(obj) or inspect.isclass(obj):
            assert obj.__doc__, f"{name}.{attr} has no docstring"


def test_version():
    assert insideout_jax.__version__.count(".") == 2
