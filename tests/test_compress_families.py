"""Compressed runs of the GAN, VAE and VQ-VAE families: ONNX parity with PyTorch for every network call each
declares, int8 and bf16 variants that load, sample, edit and evaluate through the normal loader, the CLI
and the server, and the clear refusal of the families that export nothing."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (pip install 'pixelforge[onnx]')")

import pixelforge  # noqa: E402
from pixelforge.cli import main  # noqa: E402
from pixelforge.compress.graph import declared_calls, input_names  # noqa: E402
from pixelforge.compress.onnx_export import export_onnx, parity  # noqa: E402
from pixelforge.compression import compress_run  # noqa: E402
from pixelforge.data import DataConfig  # noqa: E402
from pixelforge.models import FAMILIES, OptimConfig  # noqa: E402
from pixelforge.runs.checkpoint import atomic_save_tensors  # noqa: E402
from pixelforge.train import RunConfig, TrainConfig  # noqa: E402

# ONNX Runtime vs PyTorch in fp32, the same arithmetic in another order: measured 2e-7 to 1e-6 on these tiny
# networks (outputs of magnitude about 1; the diffusion tests measure 6e-6 at magnitude 9), so 1e-4 leaves
# room for other CPUs without hiding a bug.
PARITY_TOL = 1e-4
DIGITS = {"image_size": 8, "channels": 1}
TEXT = {"text_encoder": "all-MiniLM-L6-v2", "text_dim": 16, "text_tokens": 4}
GAN = {**DIGITS, "num_classes": 10, "base_channels": 8, "z_dim": 16}
VAE = {**DIGITS, "num_classes": 10, "base_channels": 8, "channel_mult": (1, 2), "num_res_blocks": 1, "latent_dim": 4}
VQVAE = {**DIGITS, "base_channels": 8, "downsample": 2, "codebook_size": 16, "code_dim": 4, "num_res_blocks": 1}
MODELS = {
    "gan-labels": ("gan", GAN),
    "gan-unconditional": ("gan", {**GAN, "num_classes": 0}),
    "gan-text": ("gan", {**GAN, "num_classes": 0, **TEXT}),
    "vae-labels": ("vae", VAE),
    "vae-unconditional": ("vae", {**VAE, "num_classes": 0}),
    "vae-text": ("vae", {**VAE, **TEXT}),
    "vqvae": ("vqvae", VQVAE),
}


def _model(name: str, randomize_zero_init):
    family, fields = MODELS[name]
    cls = FAMILIES[family]
    return randomize_zero_init(cls(cls.Config(**fields), seed=0)).eval()


@pytest.mark.parametrize("name", list(MODELS))
def test_every_network_call_of_each_family_matches_pytorch_in_onnx(name, tmp_path, randomize_zero_init):
    model = _model(name, randomize_zero_init)
    for call in declared_calls(model):
        export_onnx(model, tmp_path / f"{call.method}.onnx", call=call)
        assert parity(model, tmp_path / f"{call.method}.onnx", batch=5, call=call) < PARITY_TOL  # not the export's 2


def test_each_family_declares_the_calls_it_samples_and_edits_through(randomize_zero_init):
    calls = {name: [(c.method, input_names(_model(name, randomize_zero_init), c)) for c in
                    declared_calls(_model(name, randomize_zero_init))] for name in ("gan-labels", "vae-labels", "vqvae")}
    assert calls == {
        "gan-labels": [("synthesize", ["z", "labels"])],
        "vae-labels": [("decode", ["z", "labels"]), ("encode", ["x", "labels"])],
        "vqvae": [("decode_latents", ["e"]), ("encode", ["x"])],
    }


@pytest.mark.parametrize("family, fields, message", [
    ("pixelcnn", {**DIGITS, "hidden_channels": 8, "num_layers": 2}, "pixelcnn models cannot be compressed: its sampler runs "
     "the network once per pixel"),
    ("transformer", {**DIGITS, "d_model": 16, "depth": 1, "heads": 2, "vq": {"base_channels": 8, "downsample": 2,
                                                                            "codebook_size": 8, "code_dim": 4}},
     "transformer models cannot be compressed: its prior draws codes in a loop"),
])
def test_a_family_that_exports_nothing_says_why_from_the_cli(family, fields, message, tmp_path, capsys):
    run = _run_folder(tmp_path / "runs", "r", family, fields)
    assert main(["compress", str(run), "--export", "onnx", "-o", str(tmp_path / "c"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "c").exists()


# --- compressed runs through the normal loader ------------------------------------------------------


def _run_folder(runs, name: str, family: str, fields: dict):
    """A run folder (config.json + model.safetensors) of an untrained model on the 8x8 digits."""
    from tests.conftest import _randomize_zero_init

    run = runs / name
    run.mkdir(parents=True)
    cfg = RunConfig(family=family, model=fields,
                    data=DataConfig(source="digits", image_size=8, channels=1, val_fraction=0.05),
                    optim=OptimConfig(lr=1e-3), train=TrainConfig(steps=4, batch_size=16))
    cls = FAMILIES[family]
    model = _randomize_zero_init(cls(cfg.model_config(), seed=0))
    (run / "config.json").write_text(cfg.resolved().to_json())
    atomic_save_tensors(model.state_dict(), run / "model.safetensors")
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny GAN, VAE and VQ-VAE runs and their onnx-fp32, onnx-int8 and bf16 variants, in one runs folder:
    {"gan": run, "gan-onnx-int8": its int8 variant, ...}."""
    base = tmp_path_factory.mktemp("runs")
    out = {}
    for family, fields in (("gan", GAN), ("vae", VAE), ("vqvae", VQVAE)):
        out[family] = _run_folder(base, family, family, fields)
        for export, quantize in (("onnx", "none"), ("onnx", "int8"), ("none", "bf16")):
            info = compress_run(out[family], base / f"{family}-{export}-{quantize}", export=export, quantize=quantize,
                                calibration_images=8, device="cpu", progress=False)
            out[f"{family}-{info['variant']}"] = info["out"]
    return out


@pytest.mark.parametrize("family", ["gan", "vae", "vqvae"])
def test_onnx_fp32_samples_and_edits_what_pytorch_does(runs, family):
    ref, onnx = (pixelforge.load(runs[k], device="cpu") for k in (family, f"{family}-onnx-fp32"))
    labels = [0, 1, None, 3] if family != "vqvae" else None
    a, _ = ref.generate_tensor(4, labels=labels, seed=5)
    b, _ = onnx.generate_tensor(4, labels=labels, seed=5)
    assert (a - b).abs().max() < PARITY_TOL
    if family != "gan":  # the autoencoders edit through their encoder's graph too
        x = torch.rand(2, 1, 8, 8) * 2 - 1
        a = ref.model.edit(x, strength=0.5, seed=1)
        b = onnx.model.edit(x, strength=0.5, seed=1)
        assert (a - b).abs().max() < PARITY_TOL


@pytest.mark.parametrize("family", ["vae", "vqvae"])
def test_an_autoencoder_variant_holds_a_graph_for_the_decoder_and_the_encoder(runs, family):
    import onnx

    files = sorted(p.name for p in runs[f"{family}-onnx-int8"].glob("*.onnx"))
    assert files == ["model.encode.onnx", "model.onnx"]
    for name in files:  # both calibrated and quantised: the encoder's calls came from editing real digits
        ops = {n.op_type for n in onnx.load(str(runs[f"{family}-onnx-int8"] / name)).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops, name


def test_int8_calibration_records_the_prior_and_real_images_through_each_call(runs):
    from pixelforge.compression import _calibration_feeds

    g = pixelforge.load(runs["vae"], device="cpu")
    feeds = _calibration_feeds(g, 6, None, 0, False)
    assert sum(len(f["z"]) for f in feeds["decode"]) == 6 + 2 * 6  # the prior's draws, then an edit's two decodes
    assert sum(len(f["x"]) for f in feeds["encode"]) == 6
    real = feeds["encode"][0]["x"]
    assert real.min() == -1.0 and len({round(float(v), 4) for v in real.flatten()}) <= 17  # 8-bit digits, 17 levels
    assert "decode" not in g.model.__dict__ and "encode" not in g.model.__dict__  # the family's own methods again


@pytest.mark.parametrize("family", ["gan", "vae"])
def test_the_int8_variant_is_quantised_and_samples_close_to_fp32(runs, family, assert_unsaturated):
    ref, _ = pixelforge.load(runs[family], device="cpu").generate_tensor(8, label=3, seed=2)
    out, _ = pixelforge.load(runs[f"{family}-onnx-int8"], device="cpu").generate_tensor(8, label=3, seed=2)
    assert_unsaturated(out)
    assert 0 < (out - ref).abs().mean() < 0.1  # quantised (not identical), yet the same images


@pytest.mark.parametrize("family", ["gan", "vae", "vqvae"])
def test_bf16_variant_runs_in_bfloat16_and_stays_close(runs, family):
    from pixelforge.compress.graph import bf16_available

    if not bf16_available(torch.device("cpu")):
        pytest.skip("this CPU has no native bfloat16")
    g = pixelforge.load(runs[f"{family}-bf16"], device="cpu")
    module = {"gan": "G", "vae": "decoder", "vqvae": "decoder"}[family]
    assert next(getattr(g.model, module).parameters()).dtype == torch.bfloat16
    ref, _ = pixelforge.load(runs[family], device="cpu").generate_tensor(4, seed=2)
    out, _ = g.generate_tensor(4, seed=2)
    assert out.dtype == torch.float32 and 0 < (out - ref).abs().mean() < 0.05


def test_bf16_falls_back_to_fp32_for_every_call_where_it_is_not_native(runs, monkeypatch):
    monkeypatch.setattr("pixelforge.compress.graph.bf16_available", lambda device: False)
    with pytest.warns(UserWarning, match="no native bfloat16.*running in fp32"):
        g = pixelforge.load(runs["vae-bf16"], device="cpu")
    assert g.model.encoder.conv_in.weight.dtype == torch.float32 and "encode" not in g.model.__dict__
    (im,) = g.generate(1, label=1)
    assert im.info["pixelforge"]["variant"] == "bf16"


def test_a_missing_encoder_graph_is_a_clear_error(runs, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(runs["vae-onnx-fp32"], broken)
    (broken / "model.encode.onnx").unlink()
    with pytest.raises(FileNotFoundError, match="without its graph model.encode.onnx"):
        pixelforge.load(broken, device="cpu")


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """$PIXELFORGE_CACHE in a temporary folder shared by this module's evaluations: the digits and the
    classifier's reference features are prepared once, never in the home folder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PIXELFORGE_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.mark.parametrize("family", ["gan", "vae"])
def test_a_quantised_run_samples_and_evaluates_from_the_cli(runs, family, tmp_path, capsys, shared_cache):
    run = runs[f"{family}-onnx-int8"]
    assert main(["sample", str(run), "-n", "2", "--label", "4", "-o", str(tmp_path / "s"), "--device", "cpu"]) == 0
    pngs = sorted((tmp_path / "s").glob("seed*.png"))
    assert len(pngs) == 2
    from pixelforge.images import read_settings

    assert read_settings(pngs[0])["variant"] == "onnx-int8"
    capsys.readouterr()
    assert main(["evaluate", str(run), "-n", "20", "--extractor", "mnist-classifier", "--json", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n_fake"] == 20 and result["fid"] >= 0


def test_a_quantised_vae_edits_from_the_cli(runs, tmp_path):
    from pixelforge.images import save_png, to_pil

    save_png(to_pil(torch.rand(1, 1, 8, 8) * 2 - 1)[0], tmp_path / "in.png")
    assert main(["edit", str(runs["vae-onnx-int8"]), "--image", str(tmp_path / "in.png"), "--strength", "0.5",
                 "-o", str(tmp_path / "out"), "--device", "cpu"]) == 0
    assert len(list((tmp_path / "out").glob("*.png"))) >= 1


def test_the_server_serves_compressed_gan_and_vae_runs(runs, tmp_path):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from pixelforge.serve import create_app
    from tests.serve_jobs import b64, encoded, run_job

    names = ["gan-onnx-int8", "vae-onnx-int8"]
    app = create_app(names, runs_dir=runs["gan"].parent, device="cpu", db_path=tmp_path / "ratings.sqlite",
                     allowed_hosts=["testserver"])
    with TestClient(app) as client:
        for name in names:
            job = run_job(client, {"model": name, "n": 2, "seed": 3, "label": 2})
            assert len(job["images"]) == 2
            assert client.get(job["images"][0]).status_code == 200
        image = encoded(pixelforge.images.to_pil(torch.zeros(1, 1, 8, 8))[0])
        job = run_job(client, {"model": "vae-onnx-int8", "seed": 1, "image": b64(image), "options": {"strength": 0.5}})
        assert len(job["images"]) == 1


@pytest.mark.slow  # two fresh processes, each importing torch and onnxruntime: a minute on a loaded 2-core machine
def test_bench_measures_a_gan_and_refuses_sampler_steps_it_does_not_have(runs, tmp_path):
    from pixelforge.compression import bench_run

    rows = bench_run(runs["gan"], variants=("onnx-int8",), n=2, batch_size=2, repeats=1, device="cpu",
                     work_dir=tmp_path, progress=False)
    assert [r["variant"] for r in rows] == ["fp32", "onnx-int8"] and rows[1]["steps"] is None
    assert rows[1]["images_per_s"] > 0 and rows[1]["peak_mib"] > 50
    with pytest.raises(ValueError, match="samples without sampler steps.*truncation"):
        bench_run(runs["gan"], steps=4, device="cpu", work_dir=tmp_path / "b", progress=False)


@pytest.mark.slow  # torch.export of two graphs: most of a minute on a loaded 2-core machine
def test_a_dynamo_export_loads_from_the_folder_it_was_moved_to(runs, tmp_path):
    """The dynamo exporter keeps the weights in NAME.onnx.data, whose name the graph holds: the variant's
    folder must have it under that name, for both of a VAE's graphs."""
    pytest.importorskip("onnxscript")
    out = compress_run(runs["vae"], tmp_path / "dyn", export="onnx", exporter="dynamo", device="cpu", progress=False)
    assert {"model.onnx.data", "model.encode.onnx.data"} <= set(out["files"])
    g = pixelforge.load(out["out"], device="cpu")
    ref = pixelforge.load(runs["vae"], device="cpu")
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    assert (g.model.edit(x, strength=0.5, seed=1) - ref.model.edit(x, strength=0.5, seed=1)).abs().max() < PARITY_TOL


@pytest.mark.slow  # a fresh process importing torch: ~9 s
def test_a_measured_peak_is_the_child_process_own_not_its_parent_size():
    """bench's fresh process per measurement reports its own peak memory, even when its parent is larger."""
    import subprocess
    import sys

    ballast = bytearray(1_500 * 2**20)  # 1.5 GiB resident in this process (bytearray writes every byte)
    done = subprocess.run([sys.executable, "-c", "from pixelforge.compression import peak_rss_mib; print(peak_rss_mib())"],
                          capture_output=True, text=True, check=True)
    assert len(ballast) and float(done.stdout) < 1_000  # torch imported: a few hundred MiB
