"""One shared decoder for K layers vs K separate decoders: training wall time and what the samples keep.

Both train in this process on the same cached features of a tiny freshly initialised encoder (the setup of
``benchmarks/sampling.py``), the same number of steps each (batch mixes layers for the shared one). Then
both sample the same held-out grid per layer (DDIM, same seeds) and the representation consistency
(docs/DESIGN.md, "Invariance scores") of each layer is printed for both. Ends with ``ratio: X`` =
shared time / separate time (goal X <= 0.4).

    python benchmarks/shared_decoder.py [--quick]
"""

from __future__ import annotations

import argparse

import torch
from sampling import heldout, representation_consistency, setup, tiny_config, train  # benchmarks/

from rcdm_viz.decoder.sampling import sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter training, smaller grid (< 1 minute)")
    args = parser.parse_args()
    steps, n_images, n = (40, 4, 2) if args.quick else (1500, 8, 8)
    cfg = tiny_config(args.quick, f"decoder.steps={steps}")
    encoder, images, feats = setup(cfg)
    layers = list(encoder.layer_names)
    # untimed warm-up (first-call allocations and kernel selection would otherwise land on one side)
    train(tiny_config(args.quick, "decoder.steps=2"), encoder, images, feats, layers)
    shared, shared_secs = train(cfg, encoder, images, feats, layers)
    separate, separate_secs = {}, 0.0
    for layer in layers:
        separate[layer], secs = train(cfg, encoder, images, feats, [layer])
        separate_secs += secs
    print(f"K = {len(layers)} layers {layers}, {steps} steps each, batch {cfg.decoder.batch_size}")
    print(f"shared decoder: {shared_secs:7.1f} s   separate decoders: {separate_secs:7.1f} s")
    val = heldout(cfg, encoder, n_images)
    with torch.inference_mode():
        reps = encoder(val, layers=layers)
    print(f"representation consistency ({n_images} images x {n} samples, ddim 25 steps):")
    means = {"shared": [], "separate": []}
    for layer in layers:
        row = []
        for kind, dec in (("shared", shared), ("separate", separate[layer])):
            out = sample(dec, reps[layer], n=n, steps=25, sampler="ddim", seed=0, layer=layer)
            means[kind].append(representation_consistency(encoder, layer, val, out))
            row.append(f"{kind} {means[kind][-1]:6.3f}")
        print(f"  {layer:<8} " + "   ".join(row))
    print("  mean     " + "   ".join(f"{k} {sum(v) / len(v):6.3f}" for k, v in means.items()))
    print(f"ratio: {shared_secs / separate_secs:.2f}")


if __name__ == "__main__":
    main()
