"""Rigid 3D registration (RadGS-Reg): poses, a differentiable volume warp, 3D similarity losses,
registration metrics and the optimisers that use them."""
