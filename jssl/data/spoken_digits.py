"""Spoken digits synthesised offline with Debian's ``espeak-ng``, as a TFDS array_record dataset.

Every clip is one English digit word, "zero" … "nine", spoken by an espeak-ng *voice*: an
accent (``ACCENTS``, e.g. ``en-gb-scotland``) combined with a voice variant (``VARIANTS``,
espeak-ng's ``+m1`` … ``+f5`` timbres), at a random speed (words per minute) and pitch, with
white noise added at a random signal-to-noise ratio. The 22.05 kHz synthesis is resampled
to 16 kHz (polyphase, ``scipy.signal.resample_poly``), silence is trimmed, and the word is
placed at a random offset in a 1-second clip (int16, 16 000 samples).

The ``strings`` configs hold *short digit strings* instead: 2 to 4 random digits read as
one utterance ("seven zero two"), placed the same way in a 3-second clip (48 000 samples),
with the digits as text. They have no class label: they are continuous speech for
pretraining (wav2vec 2.0 crops 1-second windows that cut across word boundaries, as it
does on LibriSpeech), while the single words carry the probes' labels.

Split **by voice** (fixed, no seed): a voice is in ``test`` iff its variant is in
``TEST_VARIANTS`` or its accent is in ``TEST_ACCENTS``, so the test speakers are never heard
in training. ``SpokenDigitsLocal`` (``spoken_digits_local``) has two configs:

=========  =========================  ================  =====  ================
config     voices (train / test)      takes per digit   clips  build (2 cores)
=============  =========================  ================  =====  ================
default        70 / 26 (8 accents × 12)   4                 3 840  ~1 min
tiny           2 / 1                      1                    30  < 1 s
strings        70 / 26                    10 strings/voice    960  ~1 min
strings_tiny   2 / 1                      2 strings/voice       6  < 1 s
=============  =========================  ================  =====  ================

Features: ``audio`` int16 [16000] (16 kHz), ``label`` (ClassLabel of ``WORDS``), ``voice``
(text), ``speed`` and ``pitch`` (int32); the ``strings`` configs have ``audio`` int16
[48000] and ``digits`` (text, e.g. "702") instead of ``label``. The draws of a clip are
seeded by its voice, digit (or "string") and take, so a rebuild gives the same bytes.
Building needs only ``espeak-ng`` (apt); neither building nor reading imports TensorFlow.

Command line (prepare once per machine)::

  python -m jssl.data.spoken_digits [--data_dir DIR] [--config tiny|strings|strings_tiny]
  python -m jssl.data.spoken_digits --wav_dir /tmp/wavs --voice en-gb+f3   # listen to some
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import wave
import zlib
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from scipy.signal import resample_poly

from jssl.data.fashion_mnist import _prepare_locked, default_data_dir

NAME = "spoken_digits_local"
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SAMPLE_RATE = 16_000
CLIP_SAMPLES = 16_000
STRING_SAMPLES = 48_000
STRING_DIGITS = (2, 4)
CONFIGS = ("default", "tiny", "strings", "strings_tiny")
ESPEAK_RATE = 22_050
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp",
           "en-gb-x-gbcwmd", "en-029", "en-us-nyc")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")
TEST_VARIANTS = ("m3", "f2")
TEST_ACCENTS = ("en-029",)
SPEED_WPM = (120, 220)
PITCH = (25, 75)
SNR_DB = (10.0, 30.0)
INSTALL_HELP = ("espeak-ng is not installed; the spoken digits are synthesised with it:\n"
                "  apt-get update && apt-get install -y espeak-ng")


def voices(config: str = "default") -> dict[str, list[str]]:
    """{"train": [...], "test": [...]} voice names ``accent+variant`` of a builder config."""
    if config in ("tiny", "strings_tiny"):
        return {"train": ["en-us+m1", "en-gb+f1"], "test": ["en-029+m3"]}
    every = [f"{a}+{v}" for a in ACCENTS for v in VARIANTS]
    test = [n for n in every
            if n.split("+")[0] in TEST_ACCENTS or n.split("+")[1] in TEST_VARIANTS]
    return {"train": [n for n in every if n not in test], "test": test}


def synthesize(word: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """float32 waveform in [-1, 1] at ``ESPEAK_RATE`` of ``word`` spoken by espeak-ng."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise FileNotFoundError(INSTALL_HELP)
    out = subprocess.run([exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout",
                          word], capture_output=True, check=False)
    if out.returncode != 0 or len(out.stdout) < 44:
        raise RuntimeError(f"espeak-ng -v {voice} {word!r} failed (exit {out.returncode}): "
                           f"{out.stderr.decode(errors='replace').strip()}")
    with wave.open(io.BytesIO(out.stdout)) as w:
        if w.getframerate() != ESPEAK_RATE or w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise RuntimeError(f"espeak-ng gave {w.getframerate()} Hz, {w.getsampwidth()}-byte "
                               f"{w.getnchannels()}-channel audio; expected 22050 Hz mono int16")
        # --stdout leaves the header's length unset: read every byte after the header.
        data = out.stdout[44:]
    return np.frombuffer(data[: len(data) // 2 * 2], "<i2").astype(np.float32) / 32768.0


def trim(x: np.ndarray, threshold: float = 0.01) -> np.ndarray:
    """``x`` without leading/trailing samples below ``threshold`` × max |x|."""
    loud = np.flatnonzero(np.abs(x) >= threshold * max(float(np.max(np.abs(x))), 1e-9))
    return x[loud[0]: loud[-1] + 1] if len(loud) else x


def _render(text: str, voice: str, rng: np.random.Generator,
            samples: int) -> tuple[np.ndarray, int, int]:
    """(int16 [samples] clip, speed, pitch): ``text`` at a drawn speed, pitch and SNR, trimmed
    and placed at a drawn offset, with white noise; draws in that order from ``rng``."""
    speed = int(rng.integers(SPEED_WPM[0], SPEED_WPM[1] + 1))
    pitch = int(rng.integers(PITCH[0], PITCH[1] + 1))
    snr_db = float(rng.uniform(*SNR_DB))
    x = trim(resample_poly(synthesize(text, voice, speed, pitch), 320, 441).astype(np.float32))
    if len(x) > samples:
        if " " in text:  # cropping a string would drop digits its text still names
            raise RuntimeError(f"espeak-ng -v {voice} -s {speed} {text!r} lasts "
                               f"{len(x) / SAMPLE_RATE:.2f} s > the {samples / SAMPLE_RATE:g} "
                               f"s clip; raise STRING_SAMPLES or lower STRING_DIGITS")
        start = (len(x) - samples) // 2  # a slow long word: keep its middle
        x = x[start:start + samples]
    clip = np.zeros(samples, np.float32)
    offset = int(rng.integers(0, samples - len(x) + 1))
    clip[offset:offset + len(x)] = x
    noise_power = np.mean(np.square(x)) / 10.0 ** (snr_db / 10.0)
    clip += rng.normal(0.0, np.sqrt(noise_power), samples).astype(np.float32)
    peak = float(np.max(np.abs(clip)))
    clip *= 0.9 / peak if peak > 0.9 else 1.0
    return np.round(clip * 32767.0).astype(np.int16), speed, pitch


def make_clip(word: str, voice: str, take: int) -> tuple[np.ndarray, int, int]:
    """(int16 [CLIP_SAMPLES] clip, speed, pitch) of one take; seeded by (voice, word, take)."""
    rng = np.random.default_rng(zlib.crc32(f"{voice}|{word}|{take}".encode()))
    return _render(word, voice, rng, CLIP_SAMPLES)


def make_string_clip(voice: str, take: int) -> tuple[np.ndarray, str, int, int]:
    """(int16 [STRING_SAMPLES] clip, digits e.g. "702", speed, pitch) of one digit string of
    ``STRING_DIGITS`` digits drawn uniformly; seeded by (voice, "string", take)."""
    rng = np.random.default_rng(zlib.crc32(f"{voice}|string|{take}".encode()))
    digits = rng.integers(0, 10, int(rng.integers(STRING_DIGITS[0], STRING_DIGITS[1] + 1)))
    clip, speed, pitch = _render(" ".join(WORDS[d] for d in digits), voice, rng,
                                 STRING_SAMPLES)
    return clip, "".join(str(d) for d in digits), speed, pitch


class SpokenDigitsConfig(tfds.core.BuilderConfig):
    def __init__(self, *, takes: int, strings: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.takes, self.strings = takes, strings


class SpokenDigitsLocal(tfds.core.GeneratorBasedBuilder):
    """Digit words zero…nine (or short digit strings) by espeak-ng; split by voice."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "espeak-ng digits, 16 kHz, 1 s clips, split by voice."}
    BUILDER_CONFIGS = [
        SpokenDigitsConfig(name="default", takes=4, description="96 voices, 4 takes a digit"),
        SpokenDigitsConfig(name="tiny", takes=1, description="3 voices, 1 take (tests)"),
        SpokenDigitsConfig(name="strings", takes=10, strings=True,
                           description="96 voices, 10 strings of 2-4 digits, 3 s clips"),
        SpokenDigitsConfig(name="strings_tiny", takes=2, strings=True,
                           description="3 voices, 2 strings (tests)"),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        # a plain int16 tensor: tfds.features.Audio would import TensorFlow
        if self.builder_config.strings:
            content = {"audio": tfds.features.Tensor(shape=(STRING_SAMPLES,), dtype=np.int16),
                       "digits": tfds.features.Text()}
        else:
            content = {"audio": tfds.features.Tensor(shape=(CLIP_SAMPLES,), dtype=np.int16),
                       "label": tfds.features.ClassLabel(names=list(WORDS))}
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__.splitlines()[0],
            features=tfds.features.FeaturesDict({
                **content, "voice": tfds.features.Text(), "speed": np.int32,
                "pitch": np.int32}),
            supervised_keys=None if self.builder_config.strings else ("audio", "label"),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        if shutil.which("espeak-ng") is None:
            raise FileNotFoundError(INSTALL_HELP)
        split_voices = voices(self.builder_config.name)
        return {split: self._generate_examples(names) for split, names in split_voices.items()}

    def _generate_examples(self, names: list[str]):
        takes = range(self.builder_config.takes)
        for voice in names:
            if self.builder_config.strings:
                for take in takes:
                    clip, digits, speed, pitch = make_string_clip(voice, take)
                    yield f"{voice}|string|{take}", {"audio": clip, "digits": digits,
                                                     "voice": voice, "speed": speed,
                                                     "pitch": pitch}
                continue
            for label, word in enumerate(WORDS):
                for take in takes:
                    clip, speed, pitch = make_clip(word, voice, take)
                    yield f"{voice}|{word}|{take}", {"audio": clip, "label": label,
                                                     "voice": voice, "speed": speed,
                                                     "pitch": pitch}


def prepare_spoken_digits(data_dir: str | os.PathLike | None = None,
                          config: str = "default") -> tfds.core.DatasetBuilder:
    """Build ``spoken_digits_local/<config>`` as array_record in ``data_dir`` once."""
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    if config not in CONFIGS:
        raise ValueError(f"spoken digits config={config!r}; use one of {CONFIGS}")
    return _prepare_locked(f"{NAME}/{config}", data_dir)


def write_wavs(out_dir: str | os.PathLike, voice_names: list[str], takes: int = 1,
               strings: bool = False) -> list[Path]:
    """Write ``<voice>_<word>_<take>.wav`` (or ``<voice>_string<take>_<digits>.wav``) 16 kHz
    mono int16 clips, the dataset's bytes."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clips = []
    for voice in voice_names:
        stem = voice.replace("+", "_")
        for take in range(takes):
            if strings:
                clip, digits, _, _ = make_string_clip(voice, take)
                clips.append((out / f"{stem}_string{take}_{digits}.wav", clip))
            else:
                clips += [(out / f"{stem}_{word}_{take}.wav", make_clip(word, voice, take)[0])
                          for word in WORDS]
    for path, clip in clips:
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(SAMPLE_RATE)
            w.writeframes(clip.astype("<i2").tobytes())
    return [path for path, _ in clips]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=None,
                        help="default: $TFDS_DATA_DIR or ~/tensorflow_datasets")
    parser.add_argument("--config", default="default", choices=CONFIGS)
    parser.add_argument("--wav_dir", default=None,
                        help="instead of building, write the clips of --voice as WAV files here")
    parser.add_argument("--voice", action="append", default=None,
                        help="with --wav_dir: an accent+variant voice (repeatable)")
    args = parser.parse_args(argv)
    if args.wav_dir:
        names = args.voice or voices(args.config)["test"][:1]
        chosen = next(c for c in SpokenDigitsLocal.BUILDER_CONFIGS if c.name == args.config)
        paths = write_wavs(args.wav_dir, names, chosen.takes, chosen.strings)
        print(f"wrote {len(paths)} WAV files to {args.wav_dir}")
        return 0
    builder = prepare_spoken_digits(args.data_dir, args.config)
    splits = {k: v.num_examples for k, v in builder.info.splits.items()}
    print(f"{builder.name}/{args.config} ready in {builder.data_dir}: {splits}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
