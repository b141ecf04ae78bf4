"""Latent diffusion (Rombach et al. 2022): a KL autoencoder (``autoencoder.py``) trained by
`undiffuse train-autoencoder` (``objective.py``), and Gaussian diffusion on its scaled latents
(``diffusion.py``: `undiffuse train --autoencoder RUN`), sampled and decoded by ``LatentPipeline``.
Nothing is imported here, so that ``undiffuse.nets`` can register the autoencoder without a cycle."""
