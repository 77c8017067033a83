"""Evaluation: metric primitives and the code that runs them.

- inception.py  torch-fidelity's InceptionV3 from the weights registry: pool, logits and sFID spatial features
- metrics.py    FeatureStats (streaming, mergeable), Frechet distance, Inception Score, precision/recall,
                PSNR, SSIM, codebook usage/entropy
- npz.py        ADM sample and reference-batch .npz files
- backends.py   the same numbers through torch-fidelity's and clean-fid's own code paths
"""
