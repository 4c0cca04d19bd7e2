"""What a data source is before preparing it: native side, channels and class count (for defaults)."""

from __future__ import annotations

from pathlib import Path

from .folder import DataError, scan_folder


def describe_source(source: str) -> dict:
    """{"image_size", "channels", "num_classes", "bundled"} for a bundled set name or a folder of images.

    Folders default to 32x32 RGB (what the default UNet is sized for); bundled sets to their native form.
    """
    from .bundled import BUNDLED, bundled_info

    if source in BUNDLED and not Path(source).exists():
        info = bundled_info(source)
        return {"image_size": info.side, "channels": info.channels, "num_classes": info.classes, "bundled": True}
    scan = scan_folder(source)
    if scan.error:
        raise DataError(f"{source}: {scan.error} (and not a bundled data set: {', '.join(BUNDLED)})")
    return {"image_size": 32, "channels": 3, "num_classes": len(scan.class_names), "bundled": False}
