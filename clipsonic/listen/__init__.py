"""Blind listening tests as the paper's (§3.3, Tables 3 and 4): `make` writes a self-contained web
page that collects fidelity and relevance ratings (1-5) with hidden attention checks; `score`
turns the downloaded answer files into MOS ± 95 % CI per system. Needs numpy and soundfile only."""

from clipsonic.listen.make import ANCHOR, CHECK_RULES, AnchorRecipe, CheckRules, ListeningTest, Prompt, prompt_from_stem
from clipsonic.listen.score import Scores, markdown, read_results, score, write_scores
from clipsonic.listen.stats import bootstrap_interval, student_t_ppf, t_interval

__all__ = ["ANCHOR", "CHECK_RULES", "AnchorRecipe", "CheckRules", "ListeningTest", "Prompt", "Scores",
           "bootstrap_interval", "markdown", "prompt_from_stem", "read_results", "score", "student_t_ppf",
           "t_interval", "write_scores"]
