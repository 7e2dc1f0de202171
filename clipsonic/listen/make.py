"""`listen make`: a blind listening test as a self-contained static web page.

The paper (§3.3, Tables 3 and 4) asks 21 listeners to rate every system's sample for a prompt on
two 1–5 scales: fidelity (quality, regardless of the prompt) and relevance (to the prompt,
regardless of quality). This module gathers the samples, converts them to what every browser
plays, makes the attention-check anchors and writes the page (``page/`` beside this file: HTML,
CSS and JavaScript, no third-party code) with the test definition in ``test.js``.

How files become prompts: every folder (each ``--system`` and the reference) holds one audio file
per prompt, and files with the same name stem are the same prompt (``0003_dog_barking.wav`` in
every folder, as ``clipsonic eval --save-audio`` writes them). The prompt text comes from a CSV
``file,prompt[,image]`` (``file`` is the stem or the file name; ``image``, relative to the CSV,
makes it an image prompt) or else from the stem (`prompt_from_stem`).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
import os
import re
import shutil
from pathlib import Path

import numpy as np

from clipsonic.errors import ClipsonicError

log = logging.getLogger("clipsonic")

AUDIO_SUFFIXES = (".wav", ".flac")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp")
TEST_FORMAT = "clipsonic-listen-test"
RESULTS_FORMAT = "clipsonic-listen-results"
FORMAT_VERSION = 1
PAGE_FILES = ("index.html", "app.js", "style.css")
DEFINITION_FILE = "test.js"
_DEFINITION_HEADER = "// clipsonic listening test, written by `clipsonic listen make`"
ANCHOR_NAME = "anchor"  # the system name the degraded anchor's ratings carry in the answers


@dataclasses.dataclass(frozen=True)
class AnchorRecipe:
    """The degraded anchor made from the check source's file of a prompt: every frequency above
    `cutoff_hz` removed (a brick-wall low-pass on the FFT of the whole file), white Gaussian noise
    added at `snr_db` relative to the low-passed signal, the sum scaled to the original file's RMS
    level (so that loudness does not tell it apart) and, only if it would then clip, to a peak of
    0.99. The noise is seeded from the test seed and the prompt, so the same command writes the
    same anchor."""

    cutoff_hz: float = 1000.0
    snr_db: float = 0.0


@dataclasses.dataclass(frozen=True)
class CheckRules:
    """When an attention check fails (the page and `listen score` both apply these numbers, which
    travel in the page's definition and in every answer file):

    - anchor: the anchor's fidelity is rated more than `anchor_margin` above the fidelity of the
      check source's sample in the same trial;
    - repeat: the two fidelity ratings of the check source's sample, which appears twice in one
      trial, differ by more than `repeat_max_difference`.
    """

    anchor_margin: int = 0
    repeat_max_difference: int = 2


ANCHOR = AnchorRecipe()
CHECK_RULES = CheckRules()


@dataclasses.dataclass(frozen=True)
class Prompt:
    """One prompt: its id (the file stem every folder shares), the text shown (or, with an image,
    the image's alternative text) and each system's source file."""

    id: str
    text: str
    image: Path | None
    audio: dict[str, Path]


def prompt_from_stem(stem: str) -> str:
    """The prompt text a file name gives: a leading index and underscores go
    (``0003_dog_barking`` → ``dog barking``; ``rain`` → ``rain``)."""
    text = re.sub(r"^\d+[_\-\s]+", "", stem)
    text = re.sub(r"[_\s]+", " ", text).strip()
    return text or stem


def _audio_files(folder: Path) -> dict[str, Path]:
    """stem → file for the audio files directly in `folder`."""
    if not folder.is_dir():
        raise ClipsonicError(f"{folder}: not a folder")
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in AUDIO_SUFFIXES:
            if path.stem in files:
                raise ClipsonicError(f"{folder}: {files[path.stem].name} and {path.name} are the same prompt; keep one")
            files[path.stem] = path
    if not files:
        raise ClipsonicError(f"{folder}: no {' or '.join(AUDIO_SUFFIXES)} files")
    return files


def _read_prompt_table(path: Path) -> list[tuple[str, str, Path | None]]:
    """(stem, text, image) rows of a ``file,prompt[,image]`` CSV with a header."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as error:
        raise ClipsonicError(f"{path}: cannot read ({error.strerror})") from None
    if not rows or not {"file", "prompt"} <= set(rows[0]):
        raise ClipsonicError(f"{path}: expected a CSV with the header file,prompt[,image]")
    table, seen = [], set()
    for number, row in enumerate(rows, start=2):
        name = (row.get("file") or "").strip()
        stem = Path(name).stem if Path(name).suffix.lower() in AUDIO_SUFFIXES else name
        text = (row.get("prompt") or "").strip()
        image_name = (row.get("image") or "").strip()
        image = (path.parent / image_name) if image_name else None
        if not stem:
            raise ClipsonicError(f"{path}, line {number}: no file")
        if stem in seen:
            raise ClipsonicError(f"{path}, line {number}: {stem} is listed twice")
        if not text and image is None:
            raise ClipsonicError(f"{path}, line {number}: neither a prompt text nor an image")
        if image is not None:
            if image.suffix.lower() not in IMAGE_SUFFIXES:
                raise ClipsonicError(f"{path}, line {number}: {image_name}: browsers show "
                                     f"{', '.join(IMAGE_SUFFIXES)} images")
            if not image.is_file():
                raise ClipsonicError(f"{path}, line {number}: {image}: no such image")
        seen.add(stem)
        table.append((stem, text, image))
    return table


@dataclasses.dataclass
class ListeningTest:
    """The systems (rated rows, in order; the reference last) and the prompts of one test."""

    systems: list[str]
    reference: str | None
    prompts: list[Prompt]

    @property
    def check_source(self) -> str:
        """The system whose files the attention checks use: the reference, else the first system."""
        return self.reference or self.systems[0]

    @classmethod
    def from_folders(cls, systems: dict[str, Path], reference: tuple[str, Path] | None = None,
                     prompts: Path | None = None) -> ListeningTest:
        """A test of `systems` (name → folder) and an optional `reference` (name, folder), one
        prompt per file stem that every folder holds, or per row of the `prompts` CSV."""
        folders = dict(systems)
        if not folders:
            raise ClipsonicError("no systems to test")
        if reference is not None:
            if reference[0] in folders:
                raise ClipsonicError(f"the reference's name {reference[0]!r} is also a system's")
            folders[reference[0]] = reference[1]
        if ANCHOR_NAME in folders:
            raise ClipsonicError(f"{ANCHOR_NAME!r} names the attention-check anchor: choose another system name")
        files = {name: _audio_files(Path(folder)) for name, folder in folders.items()}
        if prompts is not None:
            table = _read_prompt_table(prompts)
            for name, found in files.items():
                missing = [stem for stem, _, _ in table if stem not in found]
                if missing:
                    more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
                    raise ClipsonicError(f"{folders[name]}: no audio file for {', '.join(missing[:3])}{more} "
                                         f"(listed in {prompts})")
            unused = sum(len(set(found) - {stem for stem, _, _ in table}) for found in files.values())
            if unused:
                log.info("%d file(s) not listed in %s are left out", unused, prompts)
        else:
            common = sorted(set.intersection(*(set(found) for found in files.values())))
            if not common:
                raise ClipsonicError("no file name (stem) is in every folder: name each prompt's files alike "
                                     "(e.g. 0003_dog_barking.wav in every folder)")
            for name, found in files.items():
                alone = len(found) - len(common)
                if alone:
                    log.warning("%s: %d file(s) whose prompt is not in every folder are left out", folders[name], alone)
            table = [(stem, prompt_from_stem(stem), None) for stem in common]
        return cls(systems=list(folders), reference=reference[0] if reference else None,
                   prompts=[Prompt(stem, text, image, {name: files[name][stem] for name in folders})
                            for stem, text, image in table])

    def write(self, out: Path, per_listener: int | None = None, checks: int = 2, seed: int = 0,
              title: str = "Listening test") -> dict:
        """Write the page to the folder `out` (absent, empty, or an earlier page, which is replaced)
        and return its definition. Each listener gets `per_listener` prompts (None: all) and
        `checks` anchor and `checks` repeated-sample attention checks (0: none)."""
        count = len(self.prompts)
        per_listener = count if per_listener is None else per_listener
        if not 1 <= per_listener <= count:
            raise ClipsonicError(f"per_listener={per_listener}: must be between 1 and the {count} prompt(s)")
        if checks < 0:
            raise ClipsonicError(f"checks={checks}: must be at least 0")
        out = Path(out)
        _check_target(out)
        staging = out.parent / f".{out.name}.partial-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        (staging / "audio").mkdir(parents=True)
        try:
            definition = self._write_files(staging, per_listener, min(checks, per_listener), seed, title)
            _replace(staging, out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return definition

    def _write_files(self, folder: Path, per_listener: int, checks: int, seed: int, title: str) -> dict:
        if checks and self.reference is None:
            log.info("no reference: the attention checks are made from %s's files", self.check_source)
        clipped: list[str] = []
        prompts = []
        for prompt in self.prompts:
            entry = {"id": prompt.id, "text": prompt.text, "image": None, "audio": {}, "anchor": None}
            for name, source in prompt.audio.items():
                data, rate = _read(source)
                if np.abs(data).max(initial=0.0) > 1.0:
                    clipped.append(source.name)
                entry["audio"][name] = _write_wav(folder, data, rate)
                if checks and name == self.check_source:
                    anchor = degraded_anchor(data, rate, _noise_seed(seed, prompt.id), source)
                    entry["anchor"] = _write_wav(folder, anchor, rate)
            if prompt.image is not None:
                content = prompt.image.read_bytes()
                entry["image"] = f"images/{_digest(content)}{prompt.image.suffix.lower()}"
                (folder / "images").mkdir(exist_ok=True)
                (folder / entry["image"]).write_bytes(content)
            prompts.append(entry)
        if clipped:
            more = f" and {len(clipped) - 3} more" if len(clipped) > 3 else ""
            log.warning("%d file(s) go past full scale and clip in 16-bit WAV: %s%s (scale them down first)",
                        len(clipped), ", ".join(clipped[:3]), more)
        definition = {
            "format": TEST_FORMAT, "version": FORMAT_VERSION, "results_format": RESULTS_FORMAT,
            "title": title, "systems": self.systems, "reference": self.reference,
            "check_source": self.check_source if checks else None, "anchor_name": ANCHOR_NAME,
            "per_listener": per_listener, "checks": checks, "seed": seed,
            "anchor_recipe": dataclasses.asdict(ANCHOR) if checks else None,
            "rules": dataclasses.asdict(CHECK_RULES), "training": 0, "prompts": prompts,
        }
        # The id names this exact test (its audio by content): answers to another page cannot be mixed in.
        definition["test_id"] = _digest(json.dumps(definition, sort_keys=True).encode())
        with open(folder / DEFINITION_FILE, "w", encoding="utf-8") as handle:
            handle.write(f"{_DEFINITION_HEADER} (test {definition['test_id']}).\n"
                         f"window.LISTEN_TEST = {json.dumps(definition, indent=1)};\n")
        page = Path(__file__).parent / "page"
        for name in PAGE_FILES:
            shutil.copyfile(page / name, folder / name)
        return definition


def degraded_anchor(data: np.ndarray, sample_rate: int, seed: int, source: Path | str = "audio") -> np.ndarray:
    """`data` [T, C] made into the attention-check anchor as `AnchorRecipe` says; [T, C] float32."""
    signal = data.astype(np.float64)
    level = float(np.sqrt(np.mean(signal ** 2))) if signal.size else 0.0
    if level == 0.0:
        raise ClipsonicError(f"{source}: silent, so no attention-check anchor can be made from it "
                             f"(leave the file out, or make the test without checks)")
    spectrum = np.fft.rfft(signal, axis=0)  # [T//2+1, C]
    frequencies = np.fft.rfftfreq(signal.shape[0], d=1.0 / sample_rate)
    spectrum[frequencies > ANCHOR.cutoff_hz] = 0.0
    low_passed = np.fft.irfft(spectrum, n=signal.shape[0], axis=0)
    low_level = float(np.sqrt(np.mean(low_passed ** 2)))
    noise = np.random.default_rng(seed).standard_normal(signal.shape)
    # Nothing below the cutoff (a high-pitched file): the anchor is the noise alone.
    reference_level = low_level if low_level > 1e-6 * level else level
    noise *= reference_level * 10 ** (-ANCHOR.snr_db / 20) / np.sqrt(np.mean(noise ** 2))
    anchor = low_passed + noise
    anchor *= level / np.sqrt(np.mean(anchor ** 2))
    peak = np.abs(anchor).max()
    if peak > 1.0:
        anchor *= 0.99 / peak
    return anchor.astype(np.float32)


def _noise_seed(seed: int, prompt_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{prompt_id}".encode()).digest()[:8], "little")


def _read(path: Path) -> tuple[np.ndarray, int]:
    """[T, C] float32 samples at the file's own level and rate."""
    import soundfile

    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError) as error:
        raise ClipsonicError(f"{path}: cannot read as audio ({error})") from None
    if data.shape[0] == 0:
        raise ClipsonicError(f"{path}: no samples")
    if not np.isfinite(data).all():
        raise ClipsonicError(f"{path}: holds NaN or Inf samples")
    return data, int(rate)


def _write_wav(folder: Path, data: np.ndarray, rate: int) -> str:
    """Write 16-bit PCM WAV (every browser plays it) named by its content; its path in the page."""
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, data, rate, subtype="PCM_16", format="WAV")
    content = buffer.getvalue()
    name = f"audio/{_digest(content)}.wav"  # neutral: the name says nothing of the system
    (folder / name).write_bytes(content)
    return name


def _digest(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()[:16]


def _is_page(folder: Path) -> bool:
    try:
        with open(folder / DEFINITION_FILE, encoding="utf-8") as handle:
            return handle.read(len(_DEFINITION_HEADER)) == _DEFINITION_HEADER
    except OSError:
        return False


def _check_target(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ClipsonicError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not _is_page(out):
        raise ClipsonicError(f"{out}: a folder with other files in it; give a new or empty folder "
                             f"(an earlier page from listen make is replaced)")


def _replace(staging: Path, out: Path) -> None:
    """Move the finished page into place; an earlier page (or empty folder) there goes."""
    if out.is_dir():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
        staging.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(out)
