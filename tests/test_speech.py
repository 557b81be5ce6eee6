"""Speech end to end: espeak-ng spoken digits as TFDS, the audio loader, log-mel features, the
wav2vec 2.0 method (1 vs 8 devices, Gumbel schedule) and its tiny preset through ``run``."""
from __future__ import annotations

import json
import shutil
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from scipy.signal import resample_poly
from test_engine import ROOT, _build, _one_step, _prepared, assert_same_step, load_experiment

from jssl.data import spoken_digits as sd
from jssl.data.speech import CropAudio, eval_arrays, train_loader, window
from jssl.evaluate.logmel import log_mel, logmel_features, mel_filterbank
from jssl.methods import get_method
from jssl.train.mesh import make_mesh
from jssl.train.run import run

# One xdist worker runs this module, so its module-scoped fixtures (compiled train steps)
# are built once, not once per worker (`pytest -n 2 --dist loadgroup`).
pytestmark = pytest.mark.xdist_group("speech")

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="Debian espeak-ng not installed")
EXPERIMENT = ROOT / "experiments" / "wav2vec2.py"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        pytest.skip("Debian espeak-ng not installed")
    root = tmp_path_factory.mktemp("tfds")
    sd.prepare_spoken_digits(root, "tiny")
    sd.prepare_spoken_digits(root, "strings_tiny")
    return root


def test_voice_split_is_disjoint_and_covers_every_voice():
    v = sd.voices("default")
    assert not set(v["train"]) & set(v["test"])
    assert len(v["train"]) + len(v["test"]) == len(sd.ACCENTS) * len(sd.VARIANTS) == 96
    for name in v["test"]:
        accent, variant = name.split("+")
        assert accent in sd.TEST_ACCENTS or variant in sd.TEST_VARIANTS
    assert len(v["test"]) == 26


@needs_espeak
def test_spoken_digits_build_reads_back_as_tfds(data_dir):
    builder = tfds.builder(f"{sd.NAME}/tiny", data_dir=data_dir)
    assert {k: s.num_examples for k, s in builder.info.splits.items()} == {"train": 20,
                                                                         "test": 10}
    test = tfds.data_source(f"{sd.NAME}/tiny", split="test", data_dir=data_dir)
    records = [test[i] for i in range(len(test))]
    assert sorted(r["label"] for r in records) == list(range(10))
    assert {r["voice"].decode() for r in records} == {"en-029+m3"}
    for r in records:
        a = r["audio"]
        assert a.dtype == np.int16 and a.shape == (sd.CLIP_SAMPLES,)
        assert 0.05 * 32767 < np.abs(a).max() <= 0.9 * 32767 + 1  # a word, peak-limited
        assert sd.SPEED_WPM[0] <= r["speed"] <= sd.SPEED_WPM[1]
    # A rebuild of one take gives the same samples: the draws are seeded by voice|word|take.
    clip, speed, pitch = sd.make_clip("three", "en-029+m3", 0)
    three = next(r for r in records if r["label"] == 3)
    np.testing.assert_array_equal(clip, three["audio"])
    assert (speed, pitch) == (three["speed"], three["pitch"])


@needs_espeak
def test_clip_snr_matches_the_drawn_noise_level():
    """The noise added to a clip has the power its drawn SNR asks for: clip − the clean word
    (re-synthesised with the same draws) has power mean(word²) / 10^(snr / 10)."""
    word, voice, take = "seven", "en-us+m1", 0
    rng = np.random.default_rng(zlib.crc32(f"{voice}|{word}|{take}".encode()))
    speed, pitch = int(rng.integers(120, 221)), int(rng.integers(25, 76))
    snr_db = float(rng.uniform(10.0, 30.0))
    x = sd.trim(resample_poly(sd.synthesize(word, voice, speed, pitch), 320, 441))
    offset = int(rng.integers(0, sd.CLIP_SAMPLES - len(x) + 1))
    clip, _, _ = sd.make_clip(word, voice, take)
    assert np.abs(clip).max() < 0.9 * 32767  # not peak-limited, so nothing was rescaled
    clean = np.zeros(sd.CLIP_SAMPLES)
    clean[offset:offset + len(x)] = x
    noise = clip / 32767.0 - clean
    measured = 10 * np.log10(np.mean(x.astype(np.float64) ** 2) / np.mean(noise ** 2))
    assert abs(measured - snr_db) < 0.3, (measured, snr_db)


@needs_espeak
def test_digit_strings_hold_the_spoken_digits_of_their_text(data_dir):
    """A string clip is its digits read by espeak-ng: clip − the clean utterance (synthesised
    here from draws re-made with the clip's seed) is noise at the drawn SNR, and the record
    names those digits; strings are 2–4 digits, 3 s, and the split is by voice."""
    test = tfds.data_source(f"{sd.NAME}/strings_tiny", split="test", data_dir=data_dir)
    train = tfds.data_source(f"{sd.NAME}/strings_tiny", split="train", data_dir=data_dir)
    assert (len(train), len(test)) == (4, 2)
    assert {train[i]["voice"].decode() for i in range(4)} == {"en-us+m1", "en-gb+f1"}
    voice, take = "en-029+m3", 1
    record = test[take]
    assert record["voice"].decode() == voice and record["audio"].shape == (48_000,)
    rng = np.random.default_rng(zlib.crc32(f"{voice}|string|{take}".encode()))
    digits = rng.integers(0, 10, int(rng.integers(2, 5)))
    assert record["digits"].decode() == "".join(map(str, digits)) and 2 <= len(digits) <= 4
    speed, pitch = int(rng.integers(120, 221)), int(rng.integers(25, 76))
    snr_db = float(rng.uniform(10.0, 30.0))
    text = " ".join(sd.WORDS[d] for d in digits)
    x = sd.trim(resample_poly(sd.synthesize(text, voice, speed, pitch), 320, 441))
    longest_word = max(len(sd.trim(sd.synthesize(sd.WORDS[d], voice, speed, pitch)))
                       for d in set(digits)) * 320 / 441
    assert len(x) > 1.5 * longest_word  # several words, not one
    offset = int(rng.integers(0, 48_000 - len(x) + 1))
    clean = np.zeros(48_000)
    clean[offset:offset + len(x)] = x
    clip = record["audio"] / 32767.0
    scale = 1.0 if np.abs(record["audio"]).max() < 0.9 * 32767 else float(
        np.dot(clip, clean) / np.dot(clean, clean))  # peak-limited: the clip was rescaled
    noise = clip / scale - clean
    measured = 10 * np.log10(np.mean(x.astype(np.float64) ** 2) / np.mean(noise ** 2))
    assert abs(measured - snr_db) < 0.5, (measured, snr_db)


@needs_espeak
def test_pretraining_on_strings_probes_on_the_labelled_words(data_dir):
    """``data.eval_name``: the loader crops unlabelled string windows, the evaluation reads the
    labelled words; without it a string dataset is refused for the probes in one line."""
    config = load_experiment(EXPERIMENT).get_config("tiny")
    config.data.update({"data_dir": str(data_dir), "name": f"{sd.NAME}/strings_tiny",
                        "eval_name": f"{sd.NAME}/tiny"})
    config.train.batch_size = 4
    batch = next(iter(train_loader(config)))
    assert set(batch) == {"audio"} and batch["audio"].shape == (4, config.data.crop)
    x, y = eval_arrays(config.data, "test")
    words = tfds.data_source(f"{sd.NAME}/tiny", split="test", data_dir=data_dir)
    np.testing.assert_array_equal(y, [words[i]["label"] for i in range(len(words))])
    np.testing.assert_array_equal(x[3], window(words[3]["audio"], config.data.crop))
    config.data.eval_name = None
    with pytest.raises(ValueError, match=r"label_feature='label' is not a feature of "
                                         r"'spoken_digits_local/strings_tiny'.*eval_name"):
        eval_arrays(config.data, "test")


def test_window_centre_crop_and_padding():
    a = np.arange(10, dtype=np.int16)
    np.testing.assert_array_equal(window(a, 4), [3, 4, 5, 6])
    np.testing.assert_array_equal(window(a, 4, start=6), [6, 7, 8, 9])
    np.testing.assert_array_equal(window(a, 13), np.r_[a, 0, 0, 0])
    with pytest.raises(ValueError, match="1-D waveform"):
        window(np.zeros((2, 5)), 4)
    crop = CropAudio("speech", 4, "label")
    out = crop.random_map({"speech": a, "label": 7}, np.random.default_rng(0))
    start = int(out["audio"][0])
    np.testing.assert_array_equal(out["audio"], a[start:start + 4])
    assert out["label"] == 7


def test_mel_filterbank_and_log_mel_of_a_tone():
    fb = mel_filterbank(40, 512, 16_000)
    assert fb.shape == (40, 257) and fb.min() >= 0 and fb.max() <= 1
    # Filter m peaks at its centre frequency, equally spaced on the HTK mel scale.
    mel = 2595 * np.log10(1 + np.array([0.0, 8000.0]) / 700)
    centres = 700 * (10 ** (np.linspace(mel[0], mel[1], 42)[1:-1] / 2595) - 1)
    freqs = np.linspace(0, 8000, 257)
    for m in (3, 20, 37):
        assert abs(freqs[np.argmax(fb[m])] - centres[m]) <= 8000 / 256
    t = np.arange(16_000) / 16_000
    tone = np.sin(2 * np.pi * 1000.0 * t)[None]
    lm = log_mel(tone)
    assert lm.shape == (1, 98, 40)
    band = int(np.argmax(lm[0].mean(0)))
    assert abs(band - int(np.argmin(np.abs(centres - 1000.0)))) <= 1
    feats = logmel_features(np.concatenate([tone, 0.5 * tone]))
    assert feats["flat"].shape == (2, 98 * 40) and feats["mean_std"].shape == (2, 80)
    np.testing.assert_allclose(feats["flat"][0], feats["flat"][1], atol=1e-4)  # RMS-normalised


def test_gumbel_temperature_schedule():
    exp = load_experiment(EXPERIMENT)
    config = exp.get_config("spoken_digits")
    steps = config.train.steps
    gamma = config.method_params.gumbel_decay
    assert 2.0 * gamma ** int(0.7 * steps) == pytest.approx(0.5, rel=1e-6)
    tiny = _cpu_tiny()
    method = get_method(tiny.method)(tiny, make_mesh(tiny, devices=jax.devices()[:1]))
    method.tau = (2.0, 0.5, gamma)
    got = [float(method.gumbel_temperature(jnp.int32(s))) for s in (0, 100, steps - 1)]
    ref = [max(0.5, 2.0 * gamma ** s) for s in (0, 100, steps - 1)]
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    assert got[-1] == 0.5


def _cpu_tiny():
    config = load_experiment(EXPERIMENT).get_config("tiny")
    config.optim.warmup_steps = 0
    config.train.batch_size = 8  # one clip per device on the 8-device mesh
    return config


def _batch(n: int = 8, crop: int = 4000) -> dict:
    rng = np.random.default_rng(0)
    t = np.arange(crop) / 16_000
    audio = np.stack([np.sin(2 * np.pi * (200 + 50 * i) * t) * 8000 for i in range(n)])
    audio = audio + rng.normal(0, 500, audio.shape)
    return {"audio": audio.astype(np.int16), "label": np.arange(n, dtype=np.int32) % 10}


def test_one_wav2vec2_step_is_the_same_on_1_and_8_devices():
    """Span masks made on 8 devices equal those made on 1; on the same inputs one optimizer
    step (dropout and Gumbel noise on) gives the same params and loss on 1 and 8 devices."""
    config, batch = _cpu_tiny(), _batch()
    p1, l1, inputs1 = _one_step(config, jax.devices()[:1], batch)
    p8, l8, _ = _one_step(config, jax.devices(), batch, inputs=inputs1)
    own8 = _prepared(config, jax.devices(), batch)
    np.testing.assert_array_equal(own8["mask"], inputs1["mask"])
    assert 0.2 < inputs1["mask"].mean() < 0.9
    assert_same_step(config, batch, (p1, l1), (p8, l8))


def test_wav2vec2_loss_is_its_three_terms():
    """loss = contrastive + 0.1 · (GV − PPL)/GV + 10 · mean(z²), each read from the metrics;
    with the network's outputs the contrastive term equals jssl.losses.wav2vec2 on 1 device."""
    config, batch = _cpu_tiny(), _batch()
    state, step, method = _build(config, jax.devices()[:1], batch)
    inputs = step.prepare(state.rng, state.step, batch)
    key = jax.random.key(3)
    loss, (m, _) = jax.jit(method.loss)(state.params, state.variables, state.extra, inputs,
                                        key, jnp.int32(0))
    gv = method.model.num_codevector_groups * method.model.num_codevectors
    np.testing.assert_allclose(float(m["diversity"]), (gv - float(m["prob_perplexity"])) / gv,
                               rtol=1e-6)
    np.testing.assert_allclose(float(loss), float(m["contrastive"]) + 0.1 * float(
        m["diversity"]) + 10.0 * float(m["features_penalty"]), rtol=1e-5)
    assert float(m["gumbel_temperature"]) == pytest.approx(2.0)
    # Chance level of the contrastive task with K = 5 distractors is about ln(6).
    assert 0.5 * np.log(6) < float(m["contrastive"]) < 3 * np.log(6)


@needs_espeak
def test_wav2vec2_tiny_trains_and_evaluates_end_to_end(tmp_path, data_dir):
    """Pretrains on the unlabelled digit strings (``eval_name``: probes on the words); epochs
    count the 4 training strings, not the 20 labelled words."""
    config = load_experiment(EXPERIMENT).get_config("tiny")
    config.data.update({"data_dir": str(data_dir), "name": f"{sd.NAME}/strings_tiny",
                        "eval_name": f"{sd.NAME}/tiny"})
    summary = run(config, tmp_path / "w2v")
    saved = json.loads((tmp_path / "w2v" / "results.json").read_text())
    assert saved["method"] == "wav2vec2" and saved["train_examples"] == 4
    assert saved["epochs"] == 4 * 8 / 4
    protocols = {r["protocol"]: r for r in saved["results"]}
    ppl = protocols["held-out codebook perplexity (of 16)"]["value"]
    assert 1.0 <= ppl <= 16.0
    acc = protocols["held-out contrastive accuracy (masked frames)"]["accuracy"]
    assert 0.0 <= acc <= 1.0
    for name in ("pretrained", "random init", "log-mel, frames × 40 bands",
                 "log-mel, band mean + std"):
        assert 0.0 <= protocols[f"linear probe, {name} (100% labels)"]["accuracy"] <= 1.0
    lines = [json.loads(x) for x in (tmp_path / "w2v" / "metrics.jsonl").read_text().splitlines()]
    assert {"code_perplexity", "prob_perplexity", "gumbel_temperature"} <= set(lines[-1])
    assert summary["steps"] == 4 and (tmp_path / "w2v" / "curves.png").is_file()


@needs_espeak
def test_wav_export_holds_the_dataset_samples(tmp_path):
    import wave

    (path,) = [p for p in sd.write_wavs(tmp_path, ["en-gb+f1"]) if "_four_" in p.name]
    with wave.open(str(path)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16_000, 1, 2)
        samples = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    np.testing.assert_array_equal(samples, sd.make_clip("four", "en-gb+f1", 0)[0])


def test_speech_results_table_row():
    from jssl.evaluate.results_doc import speech_table

    res = [{"protocol": "held-out contrastive accuracy (masked frames)", "kind": "pretext",
            "accuracy": 0.5}]
    for kind, base in (("linear", 0.9), ("linear_random_init", 0.5),
                       ("linear_logmel_frames", 0.7), ("linear_logmel_mean_std", 0.6)):
        res += [{"kind": kind, "label_fraction": f, "accuracy": base - d}
                for f, d in ((1.0, 0.0), (0.1, 0.1), (0.05, 0.2))]
    run = {"config": "w2v", "method": "wav2vec2", "epochs": 2.0, "train_wall_s": 600.0,
           "results": res, "hardware": "cpu", "date": "d", "command": "c"}
    row = speech_table([run]).splitlines()[2]
    assert row.startswith("| w2v | wav2vec2 | 2.0 | 10.0 min | held-out contrastive accuracy "
                          "(masked frames) 50.00 % | 90.00 / 80.00 / 70.00 | 50.00 / 40.00 / "
                          "30.00 | 70.00 / 60.00 / 50.00 | 60.00 / 50.00 / 40.00 |")
