"""Spoken-digit (audio) conditioning: reading and resampling clips, log-mel features, the audio encoder, the
Cond field in a diffusion model, training with clips paired by digit, sampling with --audio and the server's
upload checks. Everything runs on a synthetic "tone digits" set (digit d is a tone of its own pitch), so the
tests need no speech synthesiser and run in seconds."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import wavfile

import pixelforge
from pixelforge.cli import main
from pixelforge.condition import Cond
from pixelforge.condition.audio import (AudioEncoder, AudioEncoderConfig, TrainingClips, fit_length, hz_to_mel,
                                        load_encoder, mel_filter_bank, prepare_clip, read_wav, save_encoder)
from pixelforge.condition.audio_train import EncoderTrainConfig, train_encoder
from pixelforge.images import read_settings
from pixelforge.models import DiffusionModel
from pixelforge.models.diffusion import DiffusionConfig
from pixelforge.train import train
from pixelforge.train.checkpoint import list_checkpoints, load_checkpoint

RATE = 4000
TINY_ENC = AudioEncoderConfig(sample_rate=RATE, clip_seconds=0.5, n_fft=128, hop=64, n_mels=16, channels=(4,), embed_dim=8)
TINY = ["--image-size", "8", "--base-channels", "8", "--channel-mult", "1,2", "--num-res-blocks", "1",
        "--batch-size", "16", "--steps", "4", "--ckpt-every", "2", "--val-every", "2", "--log-every", "1",
        "--sample-every", "4", "--warmup", "2", "--lr", "1e-3", "--device", "cpu", "--quiet"]


def tone(freq: float, seconds: float = 0.3, rate: int = RATE, amp: float = 0.5, phase: float = 0.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t + phase)).astype(np.float32)


def digit_freq(d: int) -> float:
    return 300.0 + 150.0 * d  # 300..1650 Hz, under the 2 kHz Nyquist of 4 kHz


def wav_bytes(x: np.ndarray, rate: int = RATE) -> bytes:
    buf = io.BytesIO()
    wavfile.write(buf, rate, np.clip(np.round(x * 32767), -32768, 32767).astype(np.int16))
    return buf.getvalue()


@pytest.fixture(scope="module")
def tone_set(tmp_path_factory) -> Path:
    """A set in make_spoken_digits.py's layout: digit d a tone of its own pitch, three "voices" (phase and
    loudness) for training and one held out."""
    root = tmp_path_factory.mktemp("tones")
    clips = []
    for d in range(10):
        for v, (amp, phase) in enumerate([(0.5, 0.0), (0.3, 1.0), (0.7, 2.0), (0.4, 0.5)]):
            split = "test" if v == 3 else "train"
            rel = f"{split}/{d}/v{v}.wav"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(wav_bytes(tone(digit_freq(d), 0.2 + 0.03 * v, amp=amp, phase=phase)))
            clips.append({"file": rel, "digit": d, "voice": f"v{v}", "split": split})
    (root / "manifest.json").write_text(json.dumps({"format": 1, "recipe": {"kind": "tones"}, "clips": clips}))
    return root


@pytest.fixture(scope="module")
def encoder_dir(tone_set, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("enc") / "encoder"
    card = train_encoder(tone_set, out, config=TINY_ENC, train=EncoderTrainConfig(steps=60, batch_size=16, lr=1e-2),
                         device="cpu", progress=False)
    return out, card


# --- reading, resampling, features ------------------------------------------------------------------


def test_a_clip_of_another_rate_is_resampled_with_a_warning_naming_both_rates(tmp_path):
    path = tmp_path / "tone16k.wav"
    path.write_bytes(wav_bytes(tone(1000.0, 0.4, rate=16000), rate=16000))
    with pytest.warns(UserWarning, match="16000 Hz.*4000 Hz"):
        wave, digest = prepare_clip(path, TINY_ENC)
    assert wave.shape == (TINY_ENC.length,)
    spectrum = np.abs(np.fft.rfft(wave.numpy()))
    assert abs(np.argmax(spectrum) * RATE / TINY_ENC.length - 1000.0) < 10  # the tone kept its pitch
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the encoder's own rate: no warning
        prepare_clip(wav_bytes(tone(1000.0)), TINY_ENC)


def test_stereo_is_mixed_to_mono_and_every_pcm_format_reads_alike(tmp_path):
    x = tone(500.0, 0.1)
    stereo = np.stack([x, 0.5 * x], axis=1)  # (T, 2)
    buf = io.BytesIO()
    wavfile.write(buf, RATE, (stereo * 32767).astype(np.int16))
    mono, rate, _ = read_wav(buf.getvalue())
    assert rate == RATE and mono.shape == x.shape
    assert np.allclose(mono, 0.75 * x, atol=1e-3)
    forms = {"uint8": (x * 127 + 128).round().astype(np.uint8), "int32": (x * 2**31 * 0.999).astype(np.int32),
             "float32": x}
    for name, data in forms.items():
        b = io.BytesIO()
        wavfile.write(b, RATE, data)
        got, _, _ = read_wav(b.getvalue(), name)
        assert np.allclose(got, x, atol=0.02), name


def test_hostile_files_are_one_clear_error_naming_the_file(tmp_path):
    cases = {"empty.wav": b"", "png.wav": Image.new("L", (4, 4)).tobytes() + b"\x89PNG",
             "truncated.wav": wav_bytes(tone(500.0))[:30]}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=name):
            read_wav(tmp_path / name)


def test_fit_length_trims_silence_and_centres_the_sound():
    x = np.concatenate([np.zeros(400, np.float32), tone(700.0, 0.1), np.zeros(1200, np.float32)])
    out = fit_length(x, 1000)
    loud = np.nonzero(np.abs(out) > 1e-3)[0]
    assert out.shape == (1000,)
    assert abs((loud[0] + loud[-1]) / 2 - 500) < 50  # centred, whatever the silence around it
    assert not fit_length(np.zeros(50, np.float32), 100).any()


def test_log_mel_has_bands_by_frames_and_a_tone_lands_in_its_own_mel_band():
    enc = AudioEncoder(TINY_ENC)
    waves = torch.stack([torch.from_numpy(fit_length(tone(f, 0.5), TINY_ENC.length)) for f in (400.0, 1500.0)])
    logmel = enc.log_mel(waves)
    assert logmel.shape == (2, TINY_ENC.n_mels, TINY_ENC.frames)
    bank = mel_filter_bank(RATE, TINY_ENC.n_fft, TINY_ENC.n_mels)
    centres = [float(np.argmax(row)) * RATE / TINY_ENC.n_fft for row in bank.numpy()]  # Hz of each filter's peak
    for i, f in enumerate((400.0, 1500.0)):
        band = int(logmel[i].mean(dim=1).argmax())
        assert abs(centres[band] - f) <= 2 * RATE / TINY_ENC.n_fft, (f, centres[band])
    # Slaney's mel scale: linear under 1 kHz, 15 mels at 1 kHz
    assert hz_to_mel(1000.0) == pytest.approx(15.0) and hz_to_mel(500.0) == pytest.approx(7.5)


# --- the encoder ----------------------------------------------------------------------------------------


def test_the_encoder_learns_the_digits_and_reports_held_out_voices(encoder_dir):
    _, card = encoder_dir
    assert card["held_out_voices"] == ["v3"] and card["test_clips"] == 10
    assert card["held_out_accuracy"] >= 0.9  # chance is 0.1


def test_encoder_save_load_round_trip_and_a_damaged_folder_is_a_clear_error(encoder_dir, tmp_path):
    folder, _ = encoder_dir
    enc = load_encoder(folder)
    waves = torch.stack([torch.from_numpy(fit_length(tone(digit_freq(d)), TINY_ENC.length)) for d in range(3)])
    again = tmp_path / "again"
    save_encoder(enc, again)
    assert torch.equal(load_encoder(again)(enc.log_mel(waves)), enc(enc.log_mel(waves)))
    meta = json.loads((again / "config.json").read_text())
    meta["encoder"]["n_mels"] = 5000
    (again / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"config.json.*n_mels"):
        load_encoder(again)


# --- the condition in a model -----------------------------------------------------------------------


def tiny_audio_config(**fields) -> DiffusionConfig:
    return DiffusionConfig(image_size=8, channels=1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                           audio_net=dataclasses.asdict(TINY_ENC), **fields)


def test_the_network_tells_a_clip_from_no_clip_and_guidance_contrasts_them(randomize_zero_init):
    model = randomize_zero_init(DiffusionModel(tiny_audio_config()))
    assert model.takes() == ("audio",)
    x, sigma = torch.randn(2, 1, 8, 8), torch.full((2,), 1.0)
    heard = Cond(audio=torch.randn(2, 8))
    with torch.no_grad():
        d_clip, d_none = model.denoise(x, sigma, heard), model.denoise(x, sigma, heard.empty())
        d_plain = model.denoise(x, sigma, None)
    assert not torch.allclose(d_clip, d_none)
    assert torch.equal(d_none, d_plain)  # no clip: the learned "no audio" vector, as an absent condition
    with pytest.raises(ValueError, match=r"Cond.audio must be \(B, 8\)"):
        model.denoise(x, sigma, Cond(audio=torch.randn(2, 5)))
    plain = DiffusionModel(dataclasses.replace(tiny_audio_config(), audio_net=None))
    assert set(model.state_dict()) - set(plain.state_dict()) == {
        k for k in model.state_dict() if k.startswith(("audio_net.", "audio_cond."))}


def audio_run_config(make_run_config, tone_set, encoder_dir, **train_fields):
    from pixelforge.condition.audio import audio_fields

    return make_run_config(model={"num_classes": 0, **audio_fields(str(encoder_dir[0]), str(tone_set))}, **train_fields)


def test_training_clips_pair_each_image_with_a_clip_of_its_digit(make_run_config, tone_set, encoder_dir):
    cfg = audio_run_config(make_run_config, tone_set, encoder_dir)
    clips = TrainingClips(cfg.model_config(), [str(d) for d in range(10)], progress=False)
    labels = torch.tensor([0, 3, 3, 9, 9, 9])
    idx = torch.arange(6)
    drawn = clips.draw(labels, idx, 6, step=5, seed=1)
    for d, row in zip(labels, drawn):
        own = clips.embeddings[clips.digits == d]
        assert any(torch.equal(row, r) for r in own)  # a clip of the image's own digit
    assert torch.equal(drawn, clips.draw(labels, idx, 6, step=5, seed=1))  # stateless: the same for (seed, step)
    steps = torch.stack([clips.draw(labels, idx, 6, step=s, seed=1) for s in range(8)])
    assert not all(torch.equal(steps[0], s) for s in steps[1:])  # other steps, other clips
    with pytest.raises(ValueError, match="classes must be named 0..9"):
        TrainingClips(cfg.model_config(), ["cat", "dog"], progress=False)


@pytest.fixture(scope="module")
def resume_pair(tmp_path_factory, make_run_config, tone_set, encoder_dir):
    root = tmp_path_factory.mktemp("audio-resume")
    cfg = audio_run_config(make_run_config, tone_set, encoder_dir, steps=6, ckpt_every=3, val_every=3, sample_every=6)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PIXELFORGE_CACHE", str(root / "cache"))
        full = train(cfg, root / "full", device="cpu", progress=False, cache_dir=root / "cache")
        train(cfg, root / "resumed", device="cpu", progress=False, cache_dir=root / "cache", stop_at=3)
        second = train(cfg, root / "resumed", device="cpu", progress=False, cache_dir=root / "cache")
    return root, full, second


def test_an_audio_run_trains_with_a_frozen_encoder_and_resumes_exactly(resume_pair, encoder_dir):
    root, full, second = resume_pair
    for step in range(3, 6):
        assert second.losses[step] == full.losses[step], step
    a, _ = load_checkpoint(list_checkpoints(root / "full" / "checkpoints")[-1])
    b, _ = load_checkpoint(list_checkpoints(root / "resumed" / "checkpoints")[-1])
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    enc = load_encoder(encoder_dir[0]).state_dict()
    for name, value in enc.items():  # the encoder was copied in at the start and stayed frozen
        assert torch.equal(a["model"][f"audio_net.{name}"], value), name
    assert a["model"]["audio_cond.proj.2.weight"].abs().sum() > 0
    assert (root / "full" / "samples" / "step_0000006.png").is_file()


# --- the command, the API and the server -------------------------------------------------------------


@pytest.fixture(scope="module")
def audio_run(tmp_path_factory, tone_set, encoder_dir):
    root = tmp_path_factory.mktemp("audio-cli")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PIXELFORGE_CACHE", str(root / "cache"))
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(["train", "digits", "--name", "heard", "--runs-dir", str(root / "runs"), "--condition", "audio",
                         "--audio-encoder", str(encoder_dir[0]), "--audio-set", str(tone_set), "--no-labels", *TINY])
        assert code == 0, out.getvalue()
        assert main(["train", "digits", "--name", "plain", "--runs-dir", str(root / "runs"), *TINY]) == 0
    return root / "runs"


def test_sample_audio_is_deterministic_per_seed_and_sample_from_regenerates(audio_run, tmp_path, capsys):
    clip = tmp_path / "seven.wav"
    clip.write_bytes(wav_bytes(tone(digit_freq(7), rate=8000), rate=8000))
    runs = ["--runs-dir", str(audio_run), "--device", "cpu"]
    out, twin = tmp_path / "out", tmp_path / "twin"
    assert main(["sample", "heard", "--audio", str(clip), "-n", "2", "--steps", "2", "-o", str(out), *runs]) == 0
    assert "8000 Hz: resampled to the audio encoder's 4000 Hz" in capsys.readouterr().err
    assert main(["sample", "heard", "--audio", str(clip), "-n", "1", "--seed", "1", "--steps", "2", "-o", str(twin), *runs]) == 0
    png = lambda p: np.asarray(Image.open(p))  # noqa: E731
    assert np.array_equal(png(out / "seed000001.png"), png(twin / "seed000001.png"))  # seed 1 alike, whatever n
    s = read_settings(out / "seed000001.png")
    import hashlib

    assert s["audio_sha256"] == hashlib.sha256(clip.read_bytes()).hexdigest()
    assert (out / s["audio"]).read_bytes() == clip.read_bytes()  # the copy beside the images
    again = tmp_path / "again"
    assert main(["sample", "--from", str(out / "seed000001.png"), "-o", str(again), *runs]) == 0
    assert np.array_equal(png(again / "seed000001.png"), png(out / "seed000001.png"))
    (out / s["audio"]).write_bytes(wav_bytes(tone(digit_freq(2), rate=8000), rate=8000))
    capsys.readouterr()
    assert main(["sample", "--from", str(out / "seed000001.png"), "-o", str(tmp_path / "x"), *runs]) == 2
    assert "SHA-256 differs" in capsys.readouterr().err


def test_the_clip_steers_the_image_and_a_folder_gives_n_images_per_clip(audio_run, tmp_path):
    g = pixelforge.load("heard", runs_dir=audio_run, device="cpu")
    with torch.no_grad():
        for p in g.model.audio_cond.parameters():  # a tiny run barely moves them: make the condition matter
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) * 0.5)
    low, high = wav_bytes(tone(digit_freq(0))), wav_bytes(tone(digit_freq(9)))
    a, _ = g.generate_tensor(1, audio=low, steps=2)
    b, _ = g.generate_tensor(1, audio=high, steps=2)
    assert not torch.equal(a, b)
    folder = tmp_path / "clips"
    folder.mkdir()
    (folder / "a.wav").write_bytes(low)
    (folder / "b.wav").write_bytes(high)
    assert main(["sample", "heard", "--audio", str(folder), "-n", "2", "--steps", "1", "-o", str(tmp_path / "o"),
                 "--runs-dir", str(audio_run), "--device", "cpu"]) == 0
    assert len(list((tmp_path / "o").glob("seed*.png"))) == 4


def test_audio_given_to_a_model_without_audio_is_one_clear_error(audio_run, tmp_path, capsys):
    clip = tmp_path / "c.wav"
    clip.write_bytes(wav_bytes(tone(500.0)))
    assert main(["sample", "plain", "--audio", str(clip), "--runs-dir", str(audio_run), "--device", "cpu",
                 "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "plain takes no audio (it was not trained with --condition audio)" in err
    g = pixelforge.load("plain", runs_dir=audio_run, device="cpu")
    with pytest.raises(ValueError, match="takes no audio"):
        g.generate(1, audio=clip.read_bytes())


def test_train_condition_audio_without_its_folders_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "digits", "--name", "x", "--runs-dir", str(tmp_path), "--condition", "audio", *TINY]) == 2
    assert "--condition audio needs both --audio-encoder" in capsys.readouterr().err


# --- the server --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def serve_client(audio_run, tmp_path_factory):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from pixelforge.serve import create_app
    from pixelforge.serve.limits import ServerLimits

    app = create_app(["heard", "plain"], runs_dir=audio_run, device="cpu", allowed_hosts=["testserver"],
                     db_path=tmp_path_factory.mktemp("db") / "ratings.sqlite", max_body_bytes=200_000,
                     limits=ServerLimits(max_upload_bytes=20_000))
    with TestClient(app) as c:
        yield c


def b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


def test_models_list_audio_as_an_input_of_the_models_that_take_it(serve_client):
    models = {m["name"]: {i["name"]: i for i in m["inputs"]} for m in serve_client.get("/api/v1/models").json()["models"]}
    assert models["heard"]["audio"]["supported"] and models["heard"]["audio"]["max_bytes"] == 20_000
    assert not models["plain"]["audio"]["supported"]
    assert "not trained with --condition audio" in models["plain"]["audio"]["note"]


def test_an_audio_job_records_the_clip_hash_and_draws_what_the_api_draws(serve_client, tmp_path):
    import hashlib

    from serve_jobs import run_job

    clip = wav_bytes(tone(digit_freq(4), rate=8000), rate=8000)
    job = run_job(serve_client, {"model": "heard", "audio": "data:audio/wav;base64," + b64(clip), "seed": 3,
                                 "options": {"steps": 2}})
    (url,) = job["images"]
    content = serve_client.get(url).content
    s = read_settings(io.BytesIO(content))
    assert s["audio_sha256"] == hashlib.sha256(clip).hexdigest() and s["seed"] == 3
    same = serve_client.app.state.generators["heard"].generate(1, audio=clip, seeds=[3], steps=2)[0]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(content))), np.asarray(same))


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, "PNG")
    return buf.getvalue()


HOSTILE = [
    ({"audio": ""}, 422, ["body", "audio"], "the audio: the file is empty"),
    ({"audio": "not base64!"}, 422, ["body", "audio"], "the audio is not valid base64"),
    ({"audio": b64(_png())}, 422, ["body", "audio"], "not a WAV file (RIFF/WAVE header missing)"),
    ({"audio": b64(wav_bytes(tone(500.0))[:40])}, 422, ["body", "audio"], "the audio: not a readable WAV file"),
    ({"audio": "data:image/png;base64," + b64(_png())}, 422, ["body", "audio"], "a data: URL of another kind"),
    ({"audio": b64(wav_bytes(tone(500.0, 3.0)))}, 422, ["body", "audio"], "over this server's limit of 20000 bytes"),
    ({"model": "plain", "audio": b64(wav_bytes(tone(500.0)))}, 422, ["body", "audio"], "plain takes no audio"),
    ({"audio": b64(wav_bytes(tone(500.0))), "image": b64(_png())}, 422, ["body"], "give audio or an image, not both"),
    ({"audio": "A" * 300_000}, 413, None, "request body over the limit"),
]


@pytest.mark.parametrize("body, status, where, message", HOSTILE, ids=[m[:30] for *_, m in HOSTILE])
def test_hostile_audio_uploads_get_4xx_naming_the_field_and_queue_nothing(serve_client, monkeypatch, body, status,
                                                                          where, message):
    def no_queue(*args, **kwargs):
        raise AssertionError("a bad upload was queued")

    monkeypatch.setattr(serve_client.app.state.queue, "submit", no_queue)
    r = serve_client.post("/api/v1/jobs", json={"model": "heard", **body})
    assert r.status_code == status, r.text
    if where is None:
        assert message in r.json()["detail"]
        return
    (error,) = r.json()["detail"]
    assert error["loc"] == where and message in error["msg"], error


# --- the data recipe and the shipped clips ---------------------------------------------------------------


def test_make_spoken_digits_writes_mono_16_bit_clips_and_a_manifest_with_the_recipe(tmp_path):
    pytest.importorskip("espeakng_loader", reason="the audio extra is not installed (scripts/setup.sh installs it)")
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_spoken_digits", Path(__file__).parent.parent / "scripts" /
                                                  "make_spoken_digits.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "set"
    assert script.main([str(out), "--voices", "en-us", "en-029", "--held-out", "en-029", "--variants", "m3",
                        "--speeds", "150", "--pitches", "40", "60"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    recipe = manifest["recipe"]
    assert recipe["held_out_voices"] == ["en-029"] and recipe["pitches"] == [40, 60] and "espeak-ng" in recipe["synthesiser"]
    clips = manifest["clips"]
    assert len(clips) == 10 * 2 * 2 and {c["split"] for c in clips if c["voice"] == "en-029"} == {"test"}
    rate, samples = wavfile.read(out / clips[0]["file"])
    assert rate == 8000 and samples.dtype == np.int16 and samples.ndim == 1 and np.abs(samples).max() > 1000
    a, b = (wavfile.read(out / c["file"])[1] for c in clips[:2])  # two pitches of one word differ
    assert a.shape != b.shape or not np.array_equal(a, b)


def test_the_shipped_held_out_clips_are_small_and_one_per_digit():
    folder = Path(pixelforge.__file__).parent / "assets" / "audio" / "spoken-digits"
    wavs = sorted(folder.glob("*.wav"))
    assert [int(p.name[0]) for p in wavs] == list(range(10))
    assert sum(p.stat().st_size for p in wavs) < 500_000
    for p in wavs:
        x, rate, _ = read_wav(p)
        assert rate == 8000 and 0.2 < len(x) / rate < 1.0


# --- the page, in a real browser (slow: a tiny training and a browser) ----------------------------------


from test_browser import page  # noqa: E402,F401  (the browser fixture)


@pytest.mark.slow
def test_the_page_offers_an_audio_picker_for_audio_models_and_sends_the_chosen_clip(audio_run, page, tmp_path):
    import hashlib

    from test_browser import _gallery_settings, _sent_jobs, _serve, wait_until

    clip = tmp_path / "four.wav"
    clip.write_bytes(wav_bytes(tone(digit_freq(4))))
    for url, _ in _serve(tmp_path, models=("plain", "heard"), runs_dir=audio_run):
        sent = _sent_jobs(page)
        page.goto(url)
        wait_until(page, "document.querySelectorAll('#model option').length === 2")
        assert page.is_hidden("#audio-box")  # plain takes labels, no audio
        page.select_option("#model", "heard")
        assert page.is_visible("#audio-file")
        page.set_input_files("#audio-file", str(clip))
        wait_until(page, "document.querySelector('#status').textContent.startsWith('Clip loaded')")
        page.fill("#n", "1")
        page.click("#generate")
        wait_until(page, "document.querySelectorAll('#gallery img').length === 1", timeout=120)
        assert sent[-1]["audio"].startswith("data:audio/wav;base64,")
        (s,) = _gallery_settings(page)
        assert s["audio_sha256"] == hashlib.sha256(clip.read_bytes()).hexdigest()
