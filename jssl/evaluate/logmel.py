"""Log-mel spectrogram features: the classic hand-made baseline of the speech probes.

    X[t, f]   = |rfft(hann(400) · x[160 t : 160 t + 400], n = 512)|²     (25 ms window, 10 ms hop)
    M[t, m]   = Σ_f X[t, f] · H[m, f]          (``num_mels`` triangular filters, HTK mel scale
                                                 mel(f) = 2595 log10(1 + f / 700), 0–8 kHz)
    logmel    = log(M + 1e-6)                  → [frames, num_mels]

``logmel_features`` gives two fixed-size vectors per clip for a linear probe: ``"flat"``
(the whole [frames × mels] image, time kept) and ``"mean_std"`` (mean and standard deviation
over time of each band, 2 × num_mels). Waveforms are scaled to unit RMS first, as the
wav2vec 2.0 inputs are normalised.
"""
from __future__ import annotations

import numpy as np


def mel_filterbank(num_mels: int, n_fft: int, sample_rate: int, f_min: float = 0.0,
                   f_max: float | None = None) -> np.ndarray:
    """[num_mels, n_fft // 2 + 1] triangular filters, equally spaced on the HTK mel scale."""
    f_max = sample_rate / 2 if f_max is None else f_max
    mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
    hz = lambda m: 700.0 * (10.0 ** (m / 2595.0) - 1.0)  # noqa: E731
    edges = hz(np.linspace(mel(f_min), mel(f_max), num_mels + 2))
    freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs[None] - lo) / (mid - lo)
    down = (hi - freqs[None]) / (hi - mid)
    return np.maximum(0.0, np.minimum(up, down))


def log_mel(waveforms: np.ndarray, sample_rate: int = 16_000, num_mels: int = 40,
            win: int = 400, hop: int = 160, n_fft: int = 512) -> np.ndarray:
    """float32 [B, frames, num_mels] log-mel spectrogram of waveforms [B, S]."""
    x = np.asarray(waveforms, np.float64)
    if x.ndim != 2 or x.shape[1] < win:
        raise ValueError(f"waveforms must be [batch, samples >= {win}], got {x.shape}")
    x = x / np.maximum(np.sqrt(np.mean(x * x, axis=1, keepdims=True)), 1e-8)
    frames = 1 + (x.shape[1] - win) // hop
    idx = np.arange(win)[None, :] + hop * np.arange(frames)[:, None]
    spec = np.abs(np.fft.rfft(x[:, idx] * np.hanning(win), n=n_fft, axis=-1)) ** 2
    return np.log(spec @ mel_filterbank(num_mels, n_fft, sample_rate).T + 1e-6).astype(
        np.float32)


def logmel_features(waveforms: np.ndarray, batch: int = 512, **kwargs) -> dict[str, np.ndarray]:
    """{"flat": [B, frames · mels], "mean_std": [B, 2 · mels]} float32 probe inputs."""
    parts = [log_mel(waveforms[i:i + batch], **kwargs) for i in range(0, len(waveforms), batch)]
    lm = np.concatenate(parts)
    return {"flat": lm.reshape(len(lm), -1),
            "mean_std": np.concatenate([lm.mean(1), lm.std(1)], axis=1)}
