"""Procedural synthetic scenes: one object on a floor under a spot light, every latent factor known.

After the 3D-object dataset of Guillotine Regularization (Bordes et al., appendix A.1, Table 2 and
Figure 8): the object's yaw / pitch / roll, the floor hue, the spot's position on a sphere above the
object (theta from the vertical in [0, pi/4], azimuth phi in [0, 2 pi]) and the spot hue are uniform
latent variables; we add the object hue. GR renders 3D Warehouse models with Blender; here the objects
are analytic convex shapes (the classification label is the shape), each resting on the floor, with one
half (local x < 0) painted paler so that rotations about a symmetry axis stay visible. The renderer is a
vectorised ray caster in torch: one primary ray per (sub)pixel against the object and the floor,
Lambertian shading under a spot light with a smooth cone, a shadow ray from every floor point to the
light (the cast shadow shows where the light is), and a little ambient light. Rays that a cheap,
conservative test (a padded bounding ball) shows cannot meet the object are not traced against it: a
saving only, every pixel is the same as with every ray traced.

Determinism: image i is a pure function of (seed, split, i, resolution). The factors come from a
counter-based hash (splitmix64 of (seed, split, factor stream, index)), never from a sequential RNG, so an
image is the same alone or in any batch, in any order, on any machine. Per-image quantities (rotations,
colours, light position) are computed in float64 and rounded to float32; per-pixel work uses only
correctly rounded float32 operations (+ - * / sqrt, min/max, comparisons), so SIMD and scalar code paths
and any batch split give bit-identical pixels on CPU.

Modules: ``factors`` (factor names and ranges, splits, counter-based hashing, ``sample_factors``),
``shapes`` (the solids), ``renderer`` (``render``), ``dataset`` (``SyntheticScenes``, ``render_rate``).
"""

from rcdm_viz.data.synthetic.dataset import SyntheticScenes, render_rate
from rcdm_viz.data.synthetic.factors import (
    CIRCULAR,
    FACTOR_RANGES,
    FACTORS,
    Split,
    hash_uniform,
    parse_split,
    sample_factors,
    splitmix64,
    splitmix64_int,
)
from rcdm_viz.data.synthetic.renderer import render
from rcdm_viz.data.synthetic.shapes import SHAPES, Shape

__all__ = [
    "CIRCULAR",
    "FACTORS",
    "FACTOR_RANGES",
    "SHAPES",
    "Shape",
    "Split",
    "SyntheticScenes",
    "hash_uniform",
    "parse_split",
    "render",
    "render_rate",
    "sample_factors",
    "splitmix64",
    "splitmix64_int",
]
