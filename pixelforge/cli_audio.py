"""The `pixelforge audio-encoder` command: train the audio encoder that spoken-digit conditioning uses, on a
spoken-digit set (scripts/make_spoken_digits.py), and report its accuracy on the voices held out (docs/audio.md)."""

from __future__ import annotations

from .cli import _Help


def cmd_audio_encoder(a) -> int:
    from .condition.audio import AudioEncoderConfig
    from .condition.audio_train import EncoderTrainConfig, train_encoder

    train = EncoderTrainConfig(steps=a.steps, batch_size=a.batch_size, lr=a.lr, seed=a.seed)
    card = train_encoder(a.audio_set, a.out, config=AudioEncoderConfig(embed_dim=a.embed_dim), train=train,
                         device=a.device, progress=not a.quiet)
    per = " ".join(f"{d}:{acc:.2f}" for d, acc in enumerate(card["held_out_accuracy_per_digit"]))
    print(f"training voices ({card['train_clips']} clips): accuracy {card['train_accuracy']:.4f}")
    print(f"held-out voices {', '.join(card['held_out_voices'])} ({card['test_clips']} clips): accuracy "
          f"{card['held_out_accuracy']:.4f}  per digit {per}")
    print(f"audio encoder written to {a.out} ({card['training']['seconds']:.0f} s of training)")
    return 0


def add_audio_encoder(sub) -> None:
    p = sub.add_parser(
        "audio-encoder", formatter_class=_Help,
        help="train the audio encoder of spoken-digit conditioning (--condition audio) on a spoken-digit set",
        description="Train a small CNN on log-mel spectrograms of the set's training voices as a spoken-digit "
        "classifier, report its accuracy on the voices the set holds out, and write DIR/config.json and "
        "DIR/model.safetensors. `pixelforge train mnist --condition audio --audio-encoder DIR --audio-set SET` then "
        "keeps a frozen copy of it. docs/audio.md")
    p.add_argument("audio_set", metavar="SET", help="a spoken-digit set: a folder with manifest.json "
                   "(python scripts/make_spoken_digits.py SET)")
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="the encoder folder to write")
    p.add_argument("--steps", type=int, default=1500, help="optimiser steps")
    p.add_argument("--batch-size", type=int, default=64, help="clips per step")
    p.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate (one-cycle schedule)")
    p.add_argument("--embed-dim", type=int, default=64, help="width of the embedding (Cond.audio)")
    p.add_argument("--seed", type=int, default=0, help="fixes the weights, the batches and the augmentation")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_audio_encoder)
