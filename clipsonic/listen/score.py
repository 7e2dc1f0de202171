"""`listen score`: the answer files of a listening test → MOS ± 95 % CI per system and criterion.

As the paper's Tables 3 and 4: rows are the systems (the reference, "ground truth", last),
columns the fidelity and relevance MOS with the half-width of a 95 % Student-t interval over all
ratings of the listeners kept. A second interval resamples whole listeners (a listener's ratings
are correlated, which the t-interval over ratings ignores): `bootstrap` draws, seeded, percentile
interval. Listeners whose attention checks fail (`CheckRules`) are left out and named.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

from clipsonic.errors import ClipsonicError
from clipsonic.listen.make import FORMAT_VERSION, RESULTS_FORMAT
from clipsonic.listen.stats import bootstrap_interval, t_interval

log = logging.getLogger("clipsonic")

CRITERIA = ("fidelity", "relevance")
SCALE = (1, 5)
CONFIDENCE = 0.95


@dataclasses.dataclass
class Listener:
    """One answer file and what scoring made of it."""

    path: Path
    id: str
    result: dict
    failures: list[str]  # attention checks failed, each in words
    reason: str = ""  # why the listener is left out ("" = kept)

    @property
    def included(self) -> bool:
        return not self.reason


@dataclasses.dataclass(frozen=True)
class Estimate:
    """The MOS of one system and criterion with its two 95 % intervals."""

    mos: float
    half_width: float  # Student-t over all ratings
    bootstrap_low: float  # listener bootstrap, percentile
    bootstrap_high: float


@dataclasses.dataclass(frozen=True)
class Row:
    system: str
    ratings: int  # per criterion
    listeners: int
    estimates: dict[str, Estimate]


@dataclasses.dataclass
class Scores:
    test_id: str
    title: str
    rows: list[Row]
    listeners: list[Listener]
    draws: int
    seed: int

    @property
    def excluded(self) -> list[Listener]:
        return [listener for listener in self.listeners if not listener.included]


def read_results(paths: Sequence[Path]) -> list[Listener]:
    """The answer files at `paths` (files, or folders whose *.json files are read), all of one test,
    one file per listener (a session downloaded twice counts once)."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(path.glob("*.json"))
            if not found:
                raise ClipsonicError(f"{path}: no .json answer files in this folder")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise ClipsonicError(f"{path}: no such file or folder")
    listeners: dict[str, Listener] = {}
    tests: dict[str, list[Path]] = {}
    for path in files:
        result = _load(path)
        tests.setdefault(result["test_id"], []).append(path)
        earlier = listeners.get(result["listener"])
        if earlier is not None:
            if earlier.result.get("started") == result.get("started"):
                log.info("%s: the same session as %s, counted once", path, earlier.path)
                continue
            raise ClipsonicError(f"listener {result['listener']!r} took the test twice ({earlier.path} and {path}); "
                                 f"keep one file")
        listeners[result["listener"]] = Listener(path, result["listener"], result, check_failures(result))
    if len(tests) > 1:
        described = "; ".join(f"{test}: {', '.join(p.name for p in found[:3])}" for test, found in tests.items())
        raise ClipsonicError(f"the answer files come from {len(tests)} different tests ({described}); "
                             f"score one test at a time")
    return list(listeners.values())


def _load(path: Path) -> dict:
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ClipsonicError(f"{path}: not a readable JSON file ({error})") from None
    if not isinstance(result, dict) or result.get("format") != RESULTS_FORMAT:
        raise ClipsonicError(f"{path}: not an answer file of a clipsonic listening test")
    if result.get("version") != FORMAT_VERSION:
        raise ClipsonicError(f"{path}: answer file version {result.get('version')}, this clipsonic reads "
                             f"{FORMAT_VERSION}")
    keys = ("test_id", "listener", "systems", "rules", "check_source", "trials")
    missing = [key for key in keys if key not in result]
    if missing:
        raise ClipsonicError(f"{path}: incomplete answer file (no {', '.join(missing)})")
    for number, trial in enumerate(result["trials"], start=1):
        for item in trial.get("items", []) if isinstance(trial, dict) else [None]:
            if not isinstance(item, dict) or not {"kind", "system"} <= set(item):
                raise ClipsonicError(f"{path}: trial {number}: a sample without its kind and system")
            for criterion in CRITERIA:
                value = item.get(criterion)
                if value is not None and (type(value) is not int or not SCALE[0] <= value <= SCALE[1]):
                    raise ClipsonicError(f"{path}: trial {number}: {criterion} {value!r} is not a rating from "
                                         f"{SCALE[0]} to {SCALE[1]}")
    return result


def check_failures(result: dict) -> list[str]:
    """The attention checks `result` fails under the rules it carries (see `CheckRules`), in words."""
    rules, source = result["rules"], result["check_source"]
    failures = []
    for number, trial in enumerate(result["trials"], start=1):
        items = trial["items"]
        base = next((item for item in items if item["kind"] == "sample" and item["system"] == source), None)
        for item in items:
            if item["kind"] not in ("anchor", "repeat"):
                continue
            where = f"trial {number} ({trial.get('prompt', '?')})"
            mine, theirs = item.get("fidelity"), base.get("fidelity") if base else None
            if mine is None or theirs is None:
                failures.append(f"{where}: {item['kind']} check not rated")
            elif item["kind"] == "anchor" and mine > theirs + rules["anchor_margin"]:
                failures.append(f"{where}: degraded anchor's fidelity {mine} above {source}'s {theirs}")
            elif item["kind"] == "repeat" and abs(mine - theirs) > rules["repeat_max_difference"]:
                failures.append(f"{where}: the same {source} sample rated {theirs} and {mine} for fidelity")
    return failures


def score(listeners: list[Listener], draws: int = 2000, seed: int = 0, allow_failed: int = 0) -> Scores:
    """MOS and intervals per system and criterion over the listeners kept: complete sessions that
    fail at most `allow_failed` attention checks."""
    if not listeners:
        raise ClipsonicError("no answer files")
    for listener in listeners:
        if not listener.result.get("complete"):
            done = sum(1 for trial in listener.result["trials"] if trial.get("finished"))
            listener.reason = f"incomplete ({done} of {listener.result.get('per_listener', '?')} trials)"
        elif len(listener.failures) > allow_failed:
            listener.reason = f"failed {len(listener.failures)} attention check(s): " + "; ".join(listener.failures)
    kept = [listener for listener in listeners if listener.included]
    if not kept:
        raise ClipsonicError(f"all {len(listeners)} listener(s) are left out: "
                             + "; ".join(f"{listener.id}: {listener.reason}" for listener in listeners))
    first = kept[0].result
    rows = []
    for system in first["systems"]:
        estimates, counts = {}, set()
        for criterion in CRITERIA:
            per_listener = [[item[criterion] for trial in listener.result["trials"] for item in trial["items"]
                             if item["kind"] == "sample" and item["system"] == system and item.get(criterion)]
                            for listener in kept]
            pooled = [value for values in per_listener for value in values]
            counts.add((len(pooled), sum(1 for values in per_listener if values)))
            mos, half = t_interval(pooled, CONFIDENCE)
            low, high = bootstrap_interval(per_listener, draws, seed, CONFIDENCE)
            estimates[criterion] = Estimate(mos, half, low, high)
        ratings, raters = max(counts)
        rows.append(Row(system, ratings, raters, estimates))
    return Scores(first["test_id"], first.get("title", ""), rows, listeners, draws, seed)


def _number(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}"


def markdown(scores: Scores) -> str:
    """The table in the layout of the paper's Tables 3 and 4, with the bootstrap intervals beside."""
    kept = len(scores.listeners) - len(scores.excluded)
    lines = [(f"Listening test {scores.title!r} (test {scores.test_id}): MOS on a 1-5 scale, {kept} listener(s) "
              f"({len(scores.excluded)} of {len(scores.listeners)} left out)."), "",
             ("| Model | Fidelity | Relevance | Fidelity, listener bootstrap | Relevance, listener bootstrap "
              "| ratings | listeners |"),
             "|---|---|---|---|---|---|---|"]
    for row in scores.rows:
        cells = [f"{_number(row.estimates[c].mos)} ± {_number(row.estimates[c].half_width)}" for c in CRITERIA]
        cells += [f"[{_number(row.estimates[c].bootstrap_low)}, {_number(row.estimates[c].bootstrap_high)}]"
                  for c in CRITERIA]
        lines.append(f"| {row.system} | {' | '.join(cells)} | {row.ratings} | {row.listeners} |")
    lines += ["", (f"± : half-width of the 95 % Student-t interval over all ratings. Bootstrap: 95 % percentile "
                   f"interval over {scores.draws} resamplings of the listeners (seed {scores.seed}).")]
    return "\n".join(lines) + "\n"


def csv_text(scores: Scores) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    parts = ("mos", "ci95", "bootstrap_low", "bootstrap_high")  # the fields of Estimate, in order
    writer.writerow(["system", "ratings", "listeners"] + [f"{c}_{part}" for c in CRITERIA for part in parts])
    for row in scores.rows:
        values = [value for c in CRITERIA for value in dataclasses.astuple(row.estimates[c])]
        writer.writerow([row.system, row.ratings, row.listeners] + [f"{value:.4f}" for value in values])
    return buffer.getvalue()


def listeners_csv(scores: Scores) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["listener", "file", "included", "failed_checks", "reason"])
    for listener in scores.listeners:
        writer.writerow([listener.id, listener.path.name, int(listener.included), len(listener.failures),
                         listener.reason])
    return buffer.getvalue()


def write_scores(scores: Scores, out: Path) -> list[Path]:
    """mos.md, mos.csv, listeners.csv and mos.png (bars with the t-interval) in `out`."""
    from clipsonic.listen.chart import bar_chart

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in (("mos.md", markdown(scores)), ("mos.csv", csv_text(scores)),
                       ("listeners.csv", listeners_csv(scores))):
        written.append(_write_atomic(out / name, text.encode("utf-8")))
    series = [(criterion, [row.estimates[criterion].mos for row in scores.rows],
               [row.estimates[criterion].half_width for row in scores.rows]) for criterion in CRITERIA]
    written.append(_write_atomic(out / "mos.png", bar_chart([row.system for row in scores.rows], series,
                                                            scale=SCALE)))
    return written


def _write_atomic(path: Path, content: bytes) -> Path:
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    partial.write_bytes(content)
    os.replace(partial, path)
    return path
