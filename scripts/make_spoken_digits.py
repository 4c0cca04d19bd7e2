"""Synthesise a labelled spoken-digit set with espeak-ng: every digit word spoken by voices x variants x
speeds x pitches, written as mono 16-bit WAV files with a manifest that records the recipe.

No recording of spoken digits installs offline, so the set is made: espeak-ng (GPL-3.0) is called as a
library through the `espeakng-loader` wheel (which ships libespeak-ng and its data) with ctypes, its C API
used as published (espeak_Initialize, espeak_SetVoiceByName, espeak_SetParameter, espeak_Synth); no
espeak-ng code is copied here. The audio it makes is ours to use.

Whole voices (accents) are held out: their clips are the test split, never seen in training, so a
figure on them says how the system does on a voice it has not heard.

    python scripts/make_spoken_digits.py OUT [--rate 8000] [--voices ...] [--held-out ...]

OUT/manifest.json: {"format": 1, "recipe": {...}, "clips": [{"file", "digit", "voice", "variant", "speed",
"pitch", "split"}, ...]}; OUT/<split>/<digit>/<voice>+<variant>-s<speed>-p<pitch>.wav.
Running it again with the same settings gives the same files (espeak-ng is deterministic).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
from scipy.io import wavfile
from scipy.signal import resample_poly

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# espeak-ng's English voices (accents): 7 of them, the last two held out by default
VOICES = ("en-us", "en", "en-gb-x-rp", "en-gb-scotland", "en-gb-x-gbclan", "en-029", "en-gb-x-gbcwmd")
HELD_OUT = ("en-029", "en-gb-x-gbcwmd")
VARIANTS = ("m1", "m3", "m7", "f2", "f4")  # espeak-ng voice variants (voices/!v): three male, two female
SPEEDS = (130, 190)  # words per minute (espeak-ng's default is 175)
PITCHES = (35, 65)  # espeak-ng's 0..100 base pitch (default 50)

# espeak-ng's C API constants (speak_lib.h)
AUDIO_OUTPUT_SYNCHRONOUS = 2
ESPEAK_RATE, ESPEAK_PITCH = 1, 3
POS_CHARACTER = 1
ESPEAK_CHARS_UTF8 = 1
SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class Espeak:
    """libespeak-ng from the espeakng-loader wheel, in synchronous mode: speak(text) -> int16 samples."""

    def __init__(self):
        try:
            import espeakng_loader
        except ImportError:
            sys.exit("make_spoken_digits: needs the espeakng-loader wheel: pip install 'pixelforge[audio]'")
        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.lib.espeak_Initialize.restype = ctypes.c_int
        data = espeakng_loader.get_data_path().encode()
        self.sample_rate = self.lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, ctypes.c_char_p(data), 0)
        if self.sample_rate <= 0:
            sys.exit(f"make_spoken_digits: espeak_Initialize failed ({self.sample_rate}) with data {data.decode()}")
        self.lib.espeak_Info.restype = ctypes.c_char_p
        self.version = self.lib.espeak_Info(None).decode()
        self._chunks: list[np.ndarray] = []

        def collect(wav, n, _events):
            if wav and n > 0:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0  # 0: go on synthesising

        self._callback = SYNTH_CALLBACK(collect)  # kept referenced: the library calls it
        self.lib.espeak_SetSynthCallback(self._callback)

    def speak(self, text: str, voice: str, rate: int, pitch: int) -> np.ndarray:
        """text spoken by voice (e.g. "en-us+m3") at rate words/min and base pitch 0..100 -> (T,) int16."""
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"espeak-ng has no voice {voice!r}")
        self.lib.espeak_SetParameter(ESPEAK_RATE, rate, 0)
        self.lib.espeak_SetParameter(ESPEAK_PITCH, pitch, 0)
        self._chunks = []
        raw = text.encode() + b"\0"
        err = self.lib.espeak_Synth(ctypes.c_char_p(raw), ctypes.c_size_t(len(raw)), 0, POS_CHARACTER, 0,
                                    ESPEAK_CHARS_UTF8, None, None)
        if err != 0:
            raise RuntimeError(f"espeak_Synth failed ({err}) for {text!r} in voice {voice}")
        self.lib.espeak_Synchronize()
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)


def to_rate(samples: np.ndarray, src: int, dst: int) -> np.ndarray:
    """(T,) int16 at src Hz -> (T',) int16 at dst Hz (scipy's polyphase resampler, anti-aliased)."""
    if src == dst:
        return samples
    f = Fraction(dst, src)
    out = resample_poly(samples.astype(np.float64), f.numerator, f.denominator)
    return np.clip(np.round(out), -32768, 32767).astype(np.int16)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="folder to write the set into")
    ap.add_argument("--rate", type=int, default=8000, help="sample rate of the written clips in Hz (default 8000)")
    ap.add_argument("--voices", nargs="+", default=list(VOICES), help="espeak-ng voices (accents)")
    ap.add_argument("--held-out", nargs="*", default=list(HELD_OUT), help="voices kept for testing only")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), help="espeak-ng voice variants")
    ap.add_argument("--speeds", nargs="+", type=int, default=list(SPEEDS), help="words per minute")
    ap.add_argument("--pitches", nargs="+", type=int, default=list(PITCHES), help="base pitch 0..100")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.held_out) - set(args.voices))
    if unknown:
        ap.error(f"--held-out {', '.join(unknown)}: not among --voices")
    if not 4000 <= args.rate <= 48000:
        ap.error(f"--rate must be in [4000, 48000] Hz, got {args.rate}")

    from tqdm.auto import tqdm

    tts = Espeak()
    clips = []
    combos = [(d, v, var, s, p) for d in range(10) for v in args.voices for var in args.variants
              for s in args.speeds for p in args.pitches]
    for digit, voice, variant, speed, pitch in tqdm(combos, desc="speaking digits", unit="clip"):
        split = "test" if voice in args.held_out else "train"
        audio = to_rate(tts.speak(DIGIT_WORDS[digit], f"{voice}+{variant}", speed, pitch), tts.sample_rate, args.rate)
        rel = Path(split) / str(digit) / f"{voice}+{variant}-s{speed}-p{pitch}.wav"
        (args.out / rel).parent.mkdir(parents=True, exist_ok=True)
        wavfile.write(args.out / rel, args.rate, audio)
        clips.append({"file": rel.as_posix(), "digit": digit, "word": DIGIT_WORDS[digit], "voice": voice,
                      "variant": variant, "speed": speed, "pitch": pitch, "split": split,
                      "seconds": round(len(audio) / args.rate, 3)})
    from importlib.metadata import version

    recipe = {
        "synthesiser": f"espeak-ng {tts.version} (GPL-3.0), called as a library through espeakng-loader "
                       f"{version('espeakng-loader')}",
        "native_rate": tts.sample_rate, "rate": args.rate, "resampler": "scipy.signal.resample_poly",
        "words": list(DIGIT_WORDS), "voices": args.voices, "held_out_voices": args.held_out,
        "variants": args.variants, "speeds_wpm": args.speeds, "pitches": args.pitches,
        "command": "python scripts/make_spoken_digits.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    manifest = {"format": 1, "recipe": recipe, "clips": clips}
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    n_test = sum(c["split"] == "test" for c in clips)
    print(f"{len(clips)} clips ({len(clips) - n_test} train, {n_test} test from {', '.join(args.held_out)}) in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
