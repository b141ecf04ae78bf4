"""Measurement: SSIM and RMSE, feature-space FID / KID, precision / recall / density / coverage, class statistics
(with the feature network that stands in for Inception on the built-in datasets), the standard
Inception FID where the user has its weights, likelihoods in bits/dim, and rate–distortion."""
from .classes import class_agreement, class_statistics
from .features import (FeatureNet, extract_features, get_feature_net, load_feature_net, predict_labels,
                       save_feature_net, train_feature_net)
from .fid import feature_stats, fid_from_features, frechet_distance, kid
from .inception import UnavailableError, standard_fid
from .likelihood import (bits_per_dim, dequantized_bits_per_dim, ode_log_likelihood, quantize_8bit,
                         vlb_bits_per_dim)
from .prdc import knn_radii, prdc
from .rate_distortion import plot_rate_distortion, rate_distortion
from .ssim import rmse, ssim

__all__ = ["frechet_distance", "feature_stats", "fid_from_features", "kid", "prdc", "knn_radii",
           "class_statistics", "class_agreement", "FeatureNet", "train_feature_net", "get_feature_net", "extract_features",
           "predict_labels", "save_feature_net", "load_feature_net", "standard_fid", "UnavailableError",
           "vlb_bits_per_dim", "ode_log_likelihood", "dequantized_bits_per_dim", "quantize_8bit",
           "bits_per_dim", "rate_distortion", "plot_rate_distortion", "ssim", "rmse"]
