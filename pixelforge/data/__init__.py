"""The data layer: find, check, prepare, cache, split and augment images for training."""

from .folder import (
    CheckReport,
    DataError,
    FolderScan,
    check_file,
    check_folder,
    format_report,
    scan_folder,
)
from .prepare import (
    augment,
    load_dataset,
    min_side,
    prepare_image,
    prepared_side,
    skipped_note,
    split_indices,
    to_model,
    validate_config,
)
from .source import describe_source
from .types import DataConfig, ImageSet

__all__ = [
    "CheckReport",
    "DataConfig",
    "DataError",
    "FolderScan",
    "ImageSet",
    "augment",
    "check_file",
    "check_folder",
    "describe_source",
    "format_report",
    "load_dataset",
    "min_side",
    "prepare_image",
    "prepared_side",
    "scan_folder",
    "skipped_note",
    "split_indices",
    "to_model",
    "validate_config",
]
