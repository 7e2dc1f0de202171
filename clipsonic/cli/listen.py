"""`clipsonic listen make|score`: blind listening tests."""

from __future__ import annotations

import argparse
from pathlib import Path

from clipsonic.cli.common import command_group, help_formatter, log, named_folder


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    actions = command_group(commands, "listen", "blind listening tests as the paper's Tables 3-4: make the page, "
                             "score the answers", "Make a self-contained web page for a blind listening test "
                             "(fidelity and relevance, 1-5, as the paper's) and score the answer files it downloads.")
    make = actions.add_parser("make", parents=[common], formatter_class=help_formatter,
                              help="write the test page (HTML, JS, CSS and the audio; no server needed)",
                              description="Write a static web page that runs a blind listening test: each trial "
                                          "shows a prompt (text or image) and every system's sample for it under a "
                                          "neutral name, in a per-listener order; fidelity and relevance are rated "
                                          "1-5; hidden attention checks; answers kept in the browser and downloaded "
                                          "as JSON. Files with the same name stem in every folder are one prompt.")
    make.add_argument("out", type=Path, help="folder to write (new, empty, or an earlier page, which is replaced)")
    make.add_argument("--system", action="append", required=True, metavar="NAME=FOLDER",
                      help="a system's samples, one audio file (.wav/.flac) per prompt; repeatable, in table order")
    make.add_argument("--reference", metavar="[NAME=]FOLDER",
                      help="the real recordings: rated like a system (as the row NAME, default 'ground truth') and "
                           "the source of the attention checks (default: none; the checks then use the first "
                           "--system's files)")
    make.add_argument("--prompts", type=Path, help="CSV 'file,prompt[,image]' (file: stem or file name; image: a "
                                                   "picture shown instead of the text, relative to the CSV) "
                                                   "(default: the prompt is the file name, e.g. 0003_dog_barking "
                                                   "-> 'dog barking')")
    make.add_argument("--per-listener", type=int, metavar="K", help="trials each listener gets, drawn from the "
                                                                     "prompts by their listener id (default: all)")
    make.add_argument("--checks", type=int, default=2, help="trials per listener with a degraded anchor, and as many "
                                                            "with a repeated sample (0: no attention checks)")
    make.add_argument("--title", default="Listening test", help="the page's title")
    make.set_defaults(handler=_listen_make)

    score = actions.add_parser("score", parents=[common], formatter_class=help_formatter,
                               help="answer files -> MOS ± 95%% CI per system (Markdown, CSV, PNG)",
                               description="Read the answer files of one test, leave out listeners who fail the "
                                           "attention checks or did not finish (naming them), and write MOS ± 95%% "
                                           "CI per system for fidelity and relevance: mos.md, mos.csv (Student-t over "
                                           "all ratings and a listener bootstrap), listeners.csv and mos.png.")
    score.add_argument("results", type=Path, nargs="+", metavar="RESULTS",
                       help="answer files (.json) downloaded from the page, or folders holding them")
    score.add_argument("--out", type=Path, required=True, help="folder for mos.md, mos.csv, listeners.csv, mos.png")
    score.add_argument("--bootstrap", type=int, default=2000, help="listener resamplings of the bootstrap interval "
                                                                   "(seeded by --seed, default 0)")
    score.add_argument("--allow-failed", type=int, default=0, metavar="N",
                       help="attention checks a listener may fail and still be counted")
    score.set_defaults(handler=_listen_score)


def _listen_make(args: argparse.Namespace) -> int:
    from clipsonic.listen import ListeningTest

    systems: dict[str, Path] = {}
    for text in args.system:
        name, folder = named_folder(args, text, "--system")
        if name in systems:
            args.usage_error(f"--system {text}: the name {name!r} is given twice")
        systems[name] = folder
    reference = None if args.reference is None else named_folder(args, args.reference, "--reference", "ground truth")
    if reference is not None and reference[0] in systems:
        args.usage_error(f"--reference {args.reference}: {reference[0]!r} is also a --system name")
    if args.per_listener is not None and args.per_listener < 1:
        args.usage_error(f"--per-listener {args.per_listener}: must be at least 1")
    if args.checks < 0:
        args.usage_error(f"--checks {args.checks}: must be at least 0")
    test = ListeningTest.from_folders(systems, reference, args.prompts)
    if args.per_listener is not None and args.per_listener > len(test.prompts):
        args.usage_error(f"--per-listener {args.per_listener}: there are only {len(test.prompts)} prompts")
    definition = test.write(args.out, per_listener=args.per_listener, checks=args.checks,
                            seed=args.seed if args.seed is not None else 0, title=args.title)
    checks = (f"{definition['checks']} anchor and {definition['checks']} repeat check(s) from "
              f"{definition['check_source']!r}" if definition["checks"] else "no attention checks")
    print(f"{args.out / 'index.html'}: test {definition['test_id']}, {len(test.prompts)} prompt(s) x "
          f"{len(test.systems)} system(s), {definition['per_listener']} trial(s) per listener, {checks}")
    return 0


def _listen_score(args: argparse.Namespace) -> int:
    from clipsonic.listen import markdown, read_results, score, write_scores

    if args.bootstrap < 1:
        args.usage_error(f"--bootstrap {args.bootstrap}: must be at least 1")
    if args.allow_failed < 0:
        args.usage_error(f"--allow-failed {args.allow_failed}: must be at least 0")
    scores = score(read_results(args.results), draws=args.bootstrap, seed=args.seed if args.seed is not None else 0,
                   allow_failed=args.allow_failed)
    excluded = scores.excluded
    log.info("%d of %d listener(s) left out%s", len(excluded), len(scores.listeners),
             ":" if excluded else "")
    for listener in excluded:
        log.info("  %s (%s): %s", listener.id, listener.path.name, listener.reason)
    write_scores(scores, args.out)
    print(markdown(scores), end="")
    log.info("results in %s (mos.md, mos.csv, listeners.csv, mos.png)", args.out)
    return 0
