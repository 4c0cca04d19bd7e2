"""The evaluation layer: pure metric functions on features (FID, KID, IS, precision/recall) and
clean resizing for feature extractors."""

from .features import DomainExtractor, ExtractorNotAvailable, InceptionExtractor, load_extractor
from .frechet import feature_stats, fid_from_features, frechet_distance
from .inception_score import inception_score, inception_score_from_logits
from .kid import kernel_inception_distance
from .precision_recall import precision_recall
from .resize import resize_for_features

__all__ = [
    "DomainExtractor",
    "ExtractorNotAvailable",
    "InceptionExtractor",
    "load_extractor",
    "feature_stats",
    "fid_from_features",
    "frechet_distance",
    "inception_score",
    "inception_score_from_logits",
    "kernel_inception_distance",
    "precision_recall",
    "resize_for_features",
]
