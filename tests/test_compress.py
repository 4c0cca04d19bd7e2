"""Compressed runs (pixelforge compress): ONNX parity with PyTorch for every backbone and condition the
diffusion family exports, int8 and bf16 variants that load, sample, edit and evaluate through the normal
loader, the variant recorded in config.json and in every image's settings, and the clear refusals."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (pip install 'pixelforge[onnx]')")

import pixelforge  # noqa: E402
from pixelforge.cli import main  # noqa: E402
from pixelforge.compress import CompressConfig  # noqa: E402
from pixelforge.compress.graph import OnnxCall, input_names  # noqa: E402
from pixelforge.compress.onnx_export import export_onnx, parity  # noqa: E402
from pixelforge.compression import compress_run  # noqa: E402
from pixelforge.condition import Cond  # noqa: E402
from pixelforge.models import DiffusionConfig, DiffusionModel, PixelCNNConfig, PixelCNNModel  # noqa: E402

# ONNX Runtime vs PyTorch in fp32: the same arithmetic in another order; measured 3e-6 to 6e-6 on the
# bundled models (outputs of magnitude up to 9), so 1e-4 leaves room for other CPUs without hiding a bug.
PARITY_TOL = 1e-4
TINY = {"image_size": 8, "channels": 1, "num_classes": 10, "base_channels": 8, "channel_mult": (1, 2),
        "num_res_blocks": 1}
TEXT = {"text_encoder": "all-MiniLM-L6-v2", "text_dim": 16, "text_tokens": 4}
BACKBONES = {
    "unet-labels": TINY,
    "unet-labels-attention": {**TINY, "attn_resolutions": (4,)},
    "unet-unconditional": {**TINY, "num_classes": 0},
    "unet-text": {**TINY, "num_classes": 0, **TEXT},
    "dit-labels": {**TINY, "backbone": "dit", "depth": 2, "num_heads": 2, "patch_size": 2},
    "dit-text": {**TINY, "backbone": "dit", "depth": 2, "num_heads": 2, "patch_size": 2, **TEXT},
}


def _model(fields: dict, randomize_zero_init) -> DiffusionModel:
    return randomize_zero_init(DiffusionModel(DiffusionConfig(**fields), seed=0)).eval()


@pytest.mark.parametrize("name", list(BACKBONES))
def test_onnx_graph_matches_pytorch(name, tmp_path, randomize_zero_init):
    model = _model(BACKBONES[name], randomize_zero_init)
    export_onnx(model, tmp_path / "m.onnx")
    assert parity(model, tmp_path / "m.onnx", batch=5) < PARITY_TOL  # batch 5: not the export's batch of 2


def test_the_graph_takes_exactly_the_conditions_the_model_takes(randomize_zero_init):
    assert input_names(_model(BACKBONES["unet-labels"], randomize_zero_init)) == ["x_in", "c_noise", "labels"]
    assert input_names(_model(BACKBONES["unet-unconditional"], randomize_zero_init)) == ["x_in", "c_noise"]
    assert input_names(_model(BACKBONES["unet-text"], randomize_zero_init)) == [
        "x_in", "c_noise", "text", "text_tokens", "text_mask", "present"]


def test_an_absent_condition_goes_through_the_graph_as_its_empty_value(tmp_path, randomize_zero_init):
    """cond None (the unconditional half of guidance) = NO_LABEL / the absent prompt, as in PyTorch."""
    for name in ("unet-labels", "unet-text"):
        model = _model(BACKBONES[name], randomize_zero_init)
        export_onnx(model, tmp_path / f"{name}.onnx")
        x, c_noise = torch.randn(3, 1, 8, 8), torch.tensor([-1.0, 0.0, 1.0])
        with torch.no_grad():
            ref = model.network(x, c_noise, None)
        out = OnnxCall(model, tmp_path / f"{name}.onnx")(x, c_noise, None)
        assert (out - ref).abs().max() < PARITY_TOL
        if name == "unet-labels":  # and it is not what a label gives
            labelled = OnnxCall(model, tmp_path / f"{name}.onnx")(x, c_noise, Cond(labels=torch.tensor([1, 2, 3])))
            assert (labelled - out).abs().max() > 1e-3


def test_the_dynamo_exporter_matches_pytorch_too(tmp_path, randomize_zero_init):
    pytest.importorskip("onnxscript")
    model = _model(BACKBONES["unet-labels"], randomize_zero_init)
    files = export_onnx(model, tmp_path / "m.onnx", exporter="dynamo")
    assert files[0].name == "m.onnx"
    assert parity(model, tmp_path / "m.onnx", batch=3) < PARITY_TOL


def test_a_family_without_a_network_call_is_refused_by_name(tmp_path):
    model = PixelCNNModel(PixelCNNConfig(image_size=8, channels=1, num_classes=0, hidden_channels=8, num_layers=2), seed=0)
    with pytest.raises(ValueError, match="pixelcnn models cannot be compressed: its sampler runs the network once per pixel"):
        export_onnx(model, tmp_path / "p.onnx")


# --- compressed runs through the normal loader ------------------------------------------------------


@pytest.fixture(scope="module")
def variants(tiny_unet_run, tmp_path_factory):
    """The tiny run's onnx-fp32, onnx-int8 and bf16 variants."""
    base = tmp_path_factory.mktemp("variants")
    out = {}
    for export, quantize in (("onnx", "none"), ("onnx", "int8"), ("none", "bf16")):
        info = compress_run(tiny_unet_run, base / f"{export}-{quantize}", export=export, quantize=quantize,
                            calibration_images=4, device="cpu", progress=False)
        out[info["variant"]] = info
    return out


def test_each_variant_records_itself_in_config_json_and_in_every_image(variants, tiny_unet_run):
    for variant, info in variants.items():
        config = json.loads((info["out"] / "config.json").read_text())
        assert CompressConfig(**config["compress"]).variant == variant
        assert config["compress"]["source_checkpoint"] == pixelforge.load(tiny_unet_run).checkpoint_hash
        g = pixelforge.load(info["out"], device="cpu")
        (im,) = g.generate(1, label=2, steps=2)
        assert im.info["pixelforge"]["variant"] == variant
    plain = json.loads((tiny_unet_run / "config.json").read_text())
    assert "compress" not in plain  # a plain run carries no compress section


def test_onnx_fp32_samples_what_pytorch_samples(variants, tiny_unet_run):
    ref, _ = pixelforge.load(tiny_unet_run, device="cpu").generate_tensor(4, labels=[0, 1, 2, None], steps=3, guidance=2.0)
    out, _ = pixelforge.load(variants["onnx-fp32"]["out"], device="cpu").generate_tensor(
        4, labels=[0, 1, 2, None], steps=3, guidance=2.0)
    assert (out - ref).abs().max() < 1e-4


def test_the_int8_graph_is_quantised_smaller_and_samples_close_to_fp32(variants, tiny_unet_run, assert_unsaturated):
    import onnx

    graph = onnx.load(str(variants["onnx-int8"]["out"] / "model.onnx"))
    ops = {n.op_type for n in graph.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert variants["onnx-int8"]["files"]["model.onnx"] < variants["onnx-fp32"]["files"]["model.onnx"]
    ref, _ = pixelforge.load(tiny_unet_run, device="cpu").generate_tensor(4, label=3, steps=3)
    out, _ = pixelforge.load(variants["onnx-int8"]["out"], device="cpu").generate_tensor(4, label=3, steps=3)
    assert_unsaturated(out)
    assert 0 < (out - ref).abs().mean() < 0.1  # quantised (not identical), yet the same images


def test_a_quantised_run_evaluates_and_edits(variants, pixelforge_cache):
    from pixelforge.evaluate import evaluate_run

    run = variants["onnx-int8"]["out"]
    result = evaluate_run(str(run), n=20, extractor="mnist-classifier", device="cpu", progress=False, report=False,
                          steps=2)
    assert result["fid"] >= 0
    g = pixelforge.load(run, device="cpu")
    x = torch.zeros(1, 1, 8, 8)
    (im,) = g.edit([pixelforge.images.to_pil(x)[0]], strength=0.5, steps=2)
    assert im.info["pixelforge"]["variant"] == "onnx-int8"


def test_bf16_runs_in_bfloat16_and_stays_close(variants, tiny_unet_run):
    from pixelforge.compress.graph import bf16_available

    if not bf16_available(torch.device("cpu")):
        pytest.skip("this CPU has no native bfloat16")
    g = pixelforge.load(variants["bf16"]["out"], device="cpu")
    assert g.model.net.conv_in.weight.dtype == torch.bfloat16
    ref, _ = pixelforge.load(tiny_unet_run, device="cpu").generate_tensor(4, label=3, steps=3)
    out, _ = g.generate_tensor(4, label=3, steps=3)
    assert 0 < (out - ref).abs().mean() < 0.05  # rounded (not identical), yet the same images


def test_bf16_falls_back_to_fp32_with_a_message_where_it_is_not_native(variants, monkeypatch):
    monkeypatch.setattr("pixelforge.compress.graph.bf16_available", lambda device: False)
    with pytest.warns(UserWarning, match="no native bfloat16.*running in fp32"):
        g = pixelforge.load(variants["bf16"]["out"], device="cpu")
    assert g.model.net.conv_in.weight.dtype == torch.float32
    (im,) = g.generate(1, label=1, steps=2)
    assert im.info["pixelforge"]["variant"] == "bf16"


def test_a_missing_or_damaged_graph_is_a_clear_error(variants, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(variants["onnx-fp32"]["out"], broken)
    (broken / "model.onnx").write_bytes(b"not a graph")
    with pytest.raises(ValueError, match="model.onnx: not a loadable ONNX model"):
        pixelforge.load(broken, device="cpu")
    (broken / "model.onnx").unlink()
    with pytest.raises(FileNotFoundError, match="without its graph model.onnx"):
        pixelforge.load(broken, device="cpu")


# --- the command ------------------------------------------------------------------------------------


def test_cli_compress_writes_a_run_that_sample_takes(tiny_unet_run, tmp_path, capsys):
    out = tmp_path / "c"
    assert main(["compress", str(tiny_unet_run), "--export", "onnx", "-o", str(out), "--quiet"]) == 0
    assert "onnx-fp32 variant" in capsys.readouterr().out
    assert main(["sample", str(out), "-n", "2", "--steps", "2", "-o", str(tmp_path / "s")]) == 0
    assert len(list((tmp_path / "s").glob("seed*.png"))) == 2


@pytest.mark.parametrize("args, message", [
    (["--prune", "1.5"], "compress.prune must be a share of channels in [0, 1)"),
    (["--quantize", "int8"], "int8 needs export onnx"),
    (["--export", "onnx", "--quantize", "bf16"], "bf16 needs export none"),
    (["--export", "onnx", "--opset", "9"], "opset must be a whole number in 17..23"),
])
def test_cli_compress_refuses_bad_options_in_one_line(tiny_unet_run, tmp_path, capsys, args, message):
    assert main(["compress", str(tiny_unet_run), "-o", str(tmp_path / "c"), "--quiet", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "c").exists()


def test_info_names_the_variant(variants, capsys):
    assert main(["info", str(variants["onnx-int8"]["out"])]) == 0
    assert "compressed: onnx-int8 variant of" in capsys.readouterr().out


def test_a_compressed_run_is_not_compressed_again(variants, tmp_path, capsys):
    src = variants["onnx-fp32"]["out"]
    assert main(["compress", str(src), "--export", "onnx", "-o", str(tmp_path / "c"), "--quiet"]) == 2
    assert "already a compressed run (onnx-fp32)" in capsys.readouterr().err


@pytest.mark.slow  # runs the bench script end to end: ~8 s
def test_bench_reports_each_variant_against_fp32_eager(tiny_unet_run, tmp_path):
    from pixelforge.compression import bench_run

    rows = bench_run(tiny_unet_run, variants=("onnx-fp32",), n=2, steps=2, batch_size=2, repeats=1, device="cpu",
                     work_dir=tmp_path, progress=False)
    assert [r["variant"] for r in rows] == ["fp32", "onnx-fp32"]
    assert rows[0]["ratio"] == 1.0 and rows[1]["images_per_s"] > 0 and rows[1]["peak_mib"] > 50
    assert rows[1]["bytes"] == (tmp_path / "onnx-fp32" / "model.onnx").stat().st_size + \
        (tmp_path / "onnx-fp32" / "model.safetensors").stat().st_size


def test_bench_refuses_an_unknown_variant(tiny_unet_run):
    from pixelforge.compression import bench_run

    with pytest.raises(ValueError, match="unknown variant.*int4.*choose from: fp32"):
        bench_run(tiny_unet_run, variants=("int4",))
