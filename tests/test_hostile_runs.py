"""Specifications for run and model folders from untrusted sources: a config.json or model.safetensors
that is wrong, damaged or built to exhaust memory is refused quickly, with one line naming the file and
the field or tensor, by `pixelforge info`, `pixelforge sample` and `pixelforge.load` alike; and every
error of the CLI ends in one line (the traceback only with --debug)."""

from __future__ import annotations

import contextlib
import errno
import json
import resource
import shutil
import struct
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import pixelforge
from pixelforge.cli import main
from pixelforge.models import FAMILIES
from pixelforge.train.runs import BUNDLED_MODELS_DIR

BUNDLED = BUNDLED_MODELS_DIR / "mnist-diffusion"


def _vm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


@contextlib.contextmanager
def bounded_memory(extra: int = 2 << 30):
    """Address space capped at what the process has plus `extra` bytes (2 GiB): building a model that
    a hostile config describes fails at once here, where otherwise it could take the machine's memory."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = _vm_bytes() + extra
    resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def copy_model(tmp_path: Path, name: str = "hostile") -> Path:
    run = tmp_path / name
    shutil.copytree(BUNDLED, run)
    return run


def edit_config(run: Path, family: str, model: dict) -> None:
    path = run / "config.json"
    cfg = json.loads(path.read_text())
    cfg["family"], cfg["model"] = family, model
    path.write_text(json.dumps(cfg))


def run_cli(capsys, *argv: str) -> tuple[int, str, float]:
    """(exit status, stderr, seconds) of one CLI call, under bounded_memory."""
    start = time.perf_counter()
    with bounded_memory():
        status = main(list(argv))
    seconds = time.perf_counter() - start
    return status, capsys.readouterr().err, seconds


def assert_one_line(err: str, command: str) -> None:
    """The error is one line of its own, the last (a progress bar it interrupted may come before)."""
    assert "Traceback" not in err
    assert err.endswith("\n") and ("\n" + err).count(f"\npixelforge {command}: error: ") == 1, err
    assert err.splitlines()[-1].startswith(f"pixelforge {command}: error: "), err


# Size fields of every family, each set to a value that is negative, zero, of the wrong type, or large
# enough to exhaust memory (num_res_blocks 10^7, num_classes 10^10, a DiT hidden_size of 4e6).
HOSTILE_FIELDS = [
    ("diffusion", {"image_size": -28}, "image_size"),
    ("diffusion", {"image_size": 0}, "image_size"),
    ("diffusion", {"num_res_blocks": 10**7}, "num_res_blocks"),
    ("diffusion", {"base_channels": 4096}, "base_channels"),
    ("diffusion", {"num_classes": 10**10}, "num_classes"),
    ("diffusion", {"channel_mult": [1] * 100_000}, "channel_mult"),
    ("diffusion", {"channel_mult": [1, 10**6]}, "channel_mult[1]"),
    ("diffusion", {"channel_mult": "12"}, "channel_mult"),
    ("diffusion", {"attn_resolutions": [-1]}, "attn_resolutions[0]"),
    ("diffusion", {"backbone": "dit", "hidden_size": 4e6}, "hidden_size"),
    ("diffusion", {"backbone": "dit", "hidden_size": 4_000_000}, "hidden_size"),
    ("diffusion", {"backbone": "dit", "depth": 10**7}, "depth"),
    ("diffusion", {"backbone": "dit", "num_heads": 0}, "num_heads"),
    ("diffusion", {"backbone": "dit", "patch_size": -2}, "patch_size"),
    ("gan", {"image_size": 10**5}, "image_size"),
    ("gan", {"z_dim": 10**9}, "z_dim"),
    ("gan", {"base_channels": 0}, "base_channels"),
    ("gan", {"num_classes": 10**10}, "num_classes"),
    ("gan", {"d_steps": 10**6}, "d_steps"),
    ("gan", {"r1_every": -1}, "r1_every"),
    ("vae", {"latent_dim": 10**8}, "latent_dim"),
    ("vae", {"base_channels": 10**5}, "base_channels"),
    ("vae", {"num_res_blocks": 10**7}, "num_res_blocks"),
    ("vae", {"channel_mult": [10**6]}, "channel_mult[0]"),
    ("vae", {"num_classes": -3}, "num_classes"),
    ("vae", {"image_size": True}, "image_size"),
    ("vqvae", {"codebook_size": 10**10}, "codebook_size"),
    ("vqvae", {"code_dim": 10**7}, "code_dim"),
    ("vqvae", {"downsample": 2**20}, "downsample"),
    ("vqvae", {"num_res_blocks": 10**6}, "num_res_blocks"),
    ("vqvae", {"base_channels": -1}, "base_channels"),
    ("vqvae", {"image_size": 4096}, "image_size"),
    ("pixelcnn", {"hidden_channels": 10**6}, "hidden_channels"),
    ("pixelcnn", {"num_layers": 10**7}, "num_layers"),
    ("pixelcnn", {"kernel_size": 100_001}, "kernel_size"),
    ("pixelcnn", {"n_mixtures": 10**6}, "n_mixtures"),
    ("pixelcnn", {"num_classes": 10**10}, "num_classes"),
    ("transformer", {"d_model": 10**6}, "d_model"),
    ("transformer", {"depth": 10**7}, "depth"),
    ("transformer", {"heads": 0}, "heads"),
    ("transformer", {"decode_steps": 10**9}, "decode_steps"),
    ("transformer", {"num_classes": 10**10}, "num_classes"),
    ("transformer", {"vq": {"codebook_size": 10**10}}, "vq: codebook_size"),
    ("autoencoder", {"latent_channels": 10**6}, "latent_channels"),
    ("autoencoder", {"channel_mult": [1, 10**6]}, "channel_mult[1]"),
    ("diffusion", {"autoencoder": {"base_channels": 10**7}}, "autoencoder: base_channels"),
]


def test_the_hostile_fields_cover_every_family():
    assert {family for family, _, _ in HOSTILE_FIELDS} == set(FAMILIES)


@pytest.mark.parametrize("family, fields, name", HOSTILE_FIELDS, ids=[f"{f}-{n}" for f, _, n in HOSTILE_FIELDS])
def test_a_hostile_size_field_is_refused_in_one_line_naming_the_file_and_field(tmp_path, capsys, family, fields, name):
    run = copy_model(tmp_path)
    edit_config(run, family, fields)
    for argv in (["info", str(run)], ["sample", str(run), "-n", "1", "--device", "cpu", "-o", str(tmp_path / "out")]):
        status, err, seconds = run_cli(capsys, *argv)
        assert status == 2, err
        assert_one_line(err, argv[0])
        assert str(run / "config.json") in err and name in err
        assert seconds < 5
    with bounded_memory(), pytest.raises(ValueError, match=r"config\.json") as info:
        pixelforge.load(run, device="cpu")
    assert name in str(info.value)
    assert not (tmp_path / "out").exists()


def test_info_exits_2_for_a_negative_image_size(tmp_path, capsys):
    run = copy_model(tmp_path)
    cfg = json.loads((run / "config.json").read_text())
    cfg["model"]["image_size"] = -28
    (run / "config.json").write_text(json.dumps(cfg))
    status, err, _ = run_cli(capsys, "info", str(run))
    assert status == 2 and "image_size" in err and "-28" in err


@pytest.mark.parametrize("section, fields, name", [
    ("data", {"image_size": 10**6}, "image_size"),
    ("train", {"batch_size": 10**9}, "train.batch_size"),
    ("train", {"sample_count": 10**9}, "train.sample_count"),
])
def test_hostile_data_and_train_sizes_are_refused(tmp_path, capsys, section, fields, name):
    run = copy_model(tmp_path)
    cfg = json.loads((run / "config.json").read_text())
    cfg[section].update(fields)
    (run / "config.json").write_text(json.dumps(cfg))
    status, err, _ = run_cli(capsys, "info", str(run))
    assert status == 2 and str(run / "config.json") in err and name in err


def test_a_config_within_every_bound_but_too_many_parameters_is_refused_before_building(tmp_path, capsys):
    run = copy_model(tmp_path)
    # each field is allowed, together they make ~10^13 parameters (~40 TB): counted on the meta device
    edit_config(run, "diffusion", {"image_size": 32, "channels": 1, "base_channels": 2048,
                                   "channel_mult": [16, 16, 16], "num_res_blocks": 8})
    for argv in (["info", str(run)], ["sample", str(run), "-n", "1", "--device", "cpu", "-o", str(tmp_path / "out")]):
        status, err, seconds = run_cli(capsys, *argv)
        assert status == 2, err
        assert_one_line(err, argv[0])
        assert "parameters" in err and "config.json" in err
        assert seconds < 10
    with bounded_memory(), pytest.raises(ValueError, match="parameters"):
        pixelforge.load(run, device="cpu")


def test_info_counts_parameters_without_building_the_model(monkeypatch, capsys):
    from pixelforge.models.diffusion import DiffusionModel

    def refuse(*args, **kwargs):
        raise AssertionError("info built the model")

    monkeypatch.setattr(DiffusionModel, "to", refuse)  # building for use means moving to a device
    monkeypatch.setattr(DiffusionModel, "load_state_dict", refuse)
    assert main(["info", str(BUNDLED)]) == 0
    out = capsys.readouterr().out
    assert "1.14 M parameters" in out and "sampling: sampler=heun" in out


def test_info_shows_only_the_fields_of_the_runs_backbone(tmp_path, capsys):
    from pixelforge.train.config import RunConfig

    run = copy_model(tmp_path)
    # as training writes it: every model field, the DiT's included, for a UNet run
    (run / "config.json").write_text(RunConfig.load(run / "config.json").resolved().to_json())
    assert main(["info", str(run)]) == 0
    model_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("model:"))
    assert "num_res_blocks=" in model_line and "channel_mult=" in model_line
    assert not any(f"{dit}=" in model_line for dit in ("patch_size", "depth", "num_heads", "hidden_size"))


# --- damaged weights ------------------------------------------------------------------------------


def _header(path: Path) -> tuple[int, dict, bytes]:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return n, json.loads(data[8:8 + n]), data


def huge_header_length(path: Path) -> None:
    _, _, data = _header(path)
    path.write_bytes(struct.pack("<Q", 2**62) + data[8:])


def truncated_header(path: Path) -> None:
    n, _, data = _header(path)
    path.write_bytes(data[: 8 + n // 2])


def overflowing_shape(path: Path) -> None:
    n, header, data = _header(path)
    header["net.conv_in.weight"]["shape"] = [2**40, 2**40]
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])


def wrong_shape(path: Path) -> None:
    tensors = load_file(str(path))
    tensors["net.conv_in.weight"] = torch.zeros(7, 1, 3, 3)
    save_file(tensors, str(path))


def missing_tensor(path: Path) -> None:
    tensors = load_file(str(path))
    del tensors["net.conv_in.weight"]
    save_file(tensors, str(path))


def extra_tensor(path: Path) -> None:
    tensors = load_file(str(path))
    tensors["net.smuggled"] = torch.zeros(3)
    save_file(tensors, str(path))


DAMAGE = [
    (huge_header_length, "header too large"),
    (truncated_header, "header"),
    (overflowing_shape, "overflow"),
    (wrong_shape, "net.conv_in.weight"),
    (missing_tensor, "net.conv_in.weight"),
    (extra_tensor, "net.smuggled"),
]


@pytest.mark.parametrize("damage, words", DAMAGE, ids=[d.__name__ for d, _ in DAMAGE])
def test_damaged_weights_are_refused_in_one_line_naming_the_file_and_tensor(tmp_path, capsys, damage, words):
    run = copy_model(tmp_path)
    damage(run / "model.safetensors")
    for argv in (["info", str(run)], ["sample", str(run), "-n", "1", "--device", "cpu", "-o", str(tmp_path / "out")]):
        status, err, seconds = run_cli(capsys, *argv)
        assert status == 2, err
        assert_one_line(err, argv[0])
        assert str(run / "model.safetensors") in err and words in err
        assert seconds < 10
    with bounded_memory(), pytest.raises(ValueError, match="model.safetensors") as info:
        pixelforge.load(run, device="cpu")
    assert words in str(info.value)


# --- every error ends in one line ------------------------------------------------------------------


def _broken_config(tmp_path: Path) -> Path:
    run = copy_model(tmp_path)
    edit_config(run, "diffusion", {"num_res_blocks": 10**7})
    return run


def test_debug_flag_and_environment_variable_show_the_traceback(tmp_path, capsys, monkeypatch):
    run = _broken_config(tmp_path)
    assert main(["info", str(run)]) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert main(["--debug", "info", str(run)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().splitlines()[-1].startswith("pixelforge info: error: ")
    monkeypatch.setenv("PIXELFORGE_DEBUG", "1")
    assert main(["info", str(run)]) == 2
    assert "Traceback" in capsys.readouterr().err


def _failing_generate(error: BaseException):
    def generate(self, *args, **kwargs):
        raise error
    return generate


@pytest.mark.parametrize("error, status, words", [
    (MemoryError(), 1, "out of memory"),
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB\nmore detail"), 1, "out of memory"),
    (OSError(errno.ENOSPC, "No space left on device", "out/seed000000.png"), 1, "disk full"),
    (PermissionError(errno.EACCES, "Permission denied", "out"), 1, "permission denied"),
    (RuntimeError("Error(s) in loading state_dict for UNet:\n\tsize mismatch for w"), 2, "size mismatch for w"),
    (KeyError("surprise"), 1, "--debug"),
], ids=["memory", "cuda-oom", "disk-full", "permission", "state-dict", "unexpected"])
def test_runtime_failures_end_in_one_line_and_a_nonzero_status(tmp_path, capsys, monkeypatch, error, status, words):
    from pixelforge.api import Generator

    monkeypatch.setattr(Generator, "generate", _failing_generate(error))
    assert main(["sample", str(BUNDLED), "-n", "1", "-o", str(tmp_path / "out")]) == status
    err = capsys.readouterr().err
    assert_one_line(err, "sample")
    assert words in err


def test_a_safetensors_error_from_any_reader_is_one_line(tmp_path, capsys, monkeypatch):
    from safetensors import SafetensorError

    from pixelforge.api import Generator

    monkeypatch.setattr(Generator, "generate", _failing_generate(SafetensorError("Error while deserializing header: header too small")))
    assert main(["sample", str(BUNDLED), "-n", "1", "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert_one_line(err, "sample")
    assert "header too small" in err


def test_sample_into_an_existing_file_is_one_line(tmp_path, capsys):
    target = tmp_path / "taken.png"
    target.write_bytes(b"not a folder")
    status = main(["sample", str(BUNDLED), "-n", "1", "--steps", "1", "-o", str(target)])
    err = capsys.readouterr().err
    assert status != 0
    assert_one_line(err, "sample")
    assert str(target) in err
    assert target.read_bytes() == b"not a folder"


def test_load_checks_the_weights_header_before_reading_any_tensor(tmp_path, monkeypatch):
    import pixelforge.api

    run = copy_model(tmp_path)
    wrong_shape(run / "model.safetensors")

    def refuse(run_dir):
        raise AssertionError("tensors read before their names and shapes were checked")

    monkeypatch.setattr(pixelforge.api, "load_weights", refuse)
    with pytest.raises(ValueError, match="net.conv_in.weight"):
        pixelforge.load(run, device="cpu")
