"""Best of N: generate several candidates per output and keep the one CLAP finds closest to the text.

Not in the paper: AudioLDM's ``-n`` (``--n_candidate_gen_per_text``) does this with its own CLAP.
Output i of a batch is chosen among the samples i * N .. i * N + N - 1 of one generation of
``batch * N`` samples (`Pipeline.generate_chunks`, so the chunking and seeds are the pipeline's
and a seed fixes every candidate). Each candidate is scored as `eval` scores samples: the CLAP
score (`clipsonic.clap.clap_score`) of the waveform the model made, at its own level, against
the text.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the command line reads MAX_CANDIDATES without torch
    import torch

    from clipsonic.pipeline import Generated

MAX_CANDIDATES = 64  # candidates per output: generation time grows with their number
SCORE_BATCH = 16  # clips CLAP embeds at once (each is padded to 10 s at 48 kHz)


@dataclasses.dataclass(frozen=True)
class Choice:
    """Output `index` of a batch: the winning candidate's audio and every candidate's score."""

    index: int
    wav: torch.Tensor  # [samples]
    mel: torch.Tensor  # [n_mels, frames]
    winner: int  # 0 .. candidates - 1
    scores: tuple[float, ...]  # the CLAP score of each candidate, in order

    @property
    def score(self) -> float:
        return self.scores[self.winner]


def check_candidates(candidates: int) -> None:
    """Raise SettingError when `candidates` is not a whole number from 1 to MAX_CANDIDATES."""
    from clipsonic.pipeline import SettingError

    if not isinstance(candidates, int) or not 1 <= candidates <= MAX_CANDIDATES:
        raise SettingError("candidates", candidates, f"must be from 1 to {MAX_CANDIDATES}")


def clap_scorer(clap, text: str, sample_rate: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function from waveforms [n, samples] at `sample_rate` to their CLAP scores [n] against
    `text` (its embedding computed once), in batches of SCORE_BATCH clips."""
    import torch

    from clipsonic.clap import clap_score

    text_embedding = clap.embed_text([text])

    def score(wavs: torch.Tensor) -> torch.Tensor:
        rows = [clap.embed_audio(wavs[start:start + SCORE_BATCH], sample_rate)
                for start in range(0, len(wavs), SCORE_BATCH)]
        audio = torch.cat(rows)
        return clap_score(audio, text_embedding.to(audio.device).expand_as(audio)).cpu()

    return score


def best_of(chunks: Iterable[Generated], candidates: int,
            score: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[Choice]:
    """For chunks of one generation of ``batch * candidates`` samples, in order, each output's
    best candidate by `score` (waveforms [n, samples] -> scores [n]; ties: the first), as soon as
    all its candidates are there."""
    import torch

    check_candidates(candidates)
    wavs: list[torch.Tensor] = []
    mels: list[torch.Tensor] = []
    done = 0  # outputs chosen so far
    for chunk in chunks:
        if chunk.start != done * candidates + len(wavs):
            raise ValueError(f"chunk of samples from {chunk.start} out of order")
        wavs += list(chunk.wav)
        mels += list(chunk.mel)
        complete = len(wavs) // candidates  # outputs whose candidates have all arrived
        if complete == 0:
            continue
        ready = complete * candidates
        scores = score(torch.stack(wavs[:ready])).view(complete, candidates)  # [outputs, candidates]
        for row, winner in enumerate(scores.argmax(dim=1).tolist()):
            pick = row * candidates + winner
            yield Choice(done + row, wavs[pick], mels[pick], winner, tuple(scores[row].tolist()))
        done += complete
        del wavs[:ready], mels[:ready]
    if wavs:
        raise ValueError(f"{len(wavs)} sample(s) left over: the chunks do not hold a whole number of outputs of "
                         f"{candidates} candidates")
