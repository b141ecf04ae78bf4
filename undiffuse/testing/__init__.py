"""Testing helpers that ship with the package: exact oracles for Gaussian-mixture data."""
from .oracle import GaussianMixture, OracleDenoiser

__all__ = ["GaussianMixture", "OracleDenoiser"]
