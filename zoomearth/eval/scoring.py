"""Scorers that reproduce each benchmark's official scoring script, rule for rule.

=====================  =====================================================================
benchmark              rule (official script it reproduces)
=====================  =====================================================================
``lrs-gro``            ground truth lower-cased (not stripped), answer lower-cased and stripped;
                       correct when equal, or when the best WordNet ``path_similarity`` between
                       any synsets of the two strings, each lemmatised as a noun first, is
                       **>= 0.8** (ZoomEarth ``src/eval/eval.py``). A missing stage-2 answer
                       falls back to the stage-1 answer.
``lrs-vqa``            ground truth and answer lower-cased (neither stripped); correct when equal
                       or when any synset pair has ``path_similarity`` **> 0.8** (strictly), no
                       lemmatisation (LRS-VQA ``Script/evaluation_LRSVQA.py``). Items without a
                       ground truth or category are skipped by the official script.
``mme-realworld-rs``   letter extraction of MME-RealWorld's ``extract_characters_regex`` (lead-ins
                       removed, including its two concatenated prefixes; a long text without a
                       capital A-E gives ""; else the first capital A-E anywhere; else the first
                       choice containing the text), then exact equality with the letter.
``xlrs``               letter-set extraction of lmms-eval's XLRS ``extract_characters_regex``
                       (letters in parentheses, else every free-standing or embedded a-e letter),
                       then ``set(pred) == set(answer)``.
=====================  =====================================================================

WordNet comes from Debian's ``wordnet-base`` and ``wordnet-sense-index`` packages (no download):
:func:`wordnet` copies ``/usr/share/wordnet`` into an NLTK data folder under the cache directory,
writes the ``lexnames`` file NLTK needs (Debian does not ship it), and opens the corpus reader.
"""

from __future__ import annotations

import re
import shutil
import threading
import warnings
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Final

from zoomearth.errors import ZoomEarthError

__all__ = [
    "BENCHMARK_SCORERS",
    "WordNetMissingError",
    "best_path_similarity",
    "extract_mme_letter",
    "extract_xlrs_letters",
    "score_answer",
    "score_lrs_gro",
    "score_lrs_vqa",
    "score_mme",
    "score_xlrs",
    "wordnet",
]

DEBIAN_WORDNET_DIR: Final = Path("/usr/share/wordnet")

WORDNET_MISSING_TEMPLATE: Final = (
    "WordNet is needed to score {benchmark} answers but {path} is missing {what}. Install the "
    "Debian packages: `apt-get install wordnet-base wordnet-sense-index` (`make test` does it "
    "when run as root), then run the command again."
)
UNKNOWN_BENCHMARK_TEMPLATE: Final = "Unknown benchmark {name!r}; valid benchmarks are: {valid}."

#: The 45 lexicographer files of WordNet 3.0 (``lexnames(5)``): number, name, part of speech
#: (1 noun, 2 verb, 3 adjective, 4 adverb).
LEXNAMES: Final[tuple[str, ...]] = (
    "adj.all 3",
    "adj.pert 3",
    "adv.all 4",
    "noun.Tops 1",
    "noun.act 1",
    "noun.animal 1",
    "noun.artifact 1",
    "noun.attribute 1",
    "noun.body 1",
    "noun.cognition 1",
    "noun.communication 1",
    "noun.event 1",
    "noun.feeling 1",
    "noun.food 1",
    "noun.group 1",
    "noun.location 1",
    "noun.motive 1",
    "noun.object 1",
    "noun.person 1",
    "noun.phenomenon 1",
    "noun.plant 1",
    "noun.possession 1",
    "noun.process 1",
    "noun.quantity 1",
    "noun.relation 1",
    "noun.shape 1",
    "noun.state 1",
    "noun.substance 1",
    "noun.time 1",
    "verb.body 2",
    "verb.change 2",
    "verb.cognition 2",
    "verb.communication 2",
    "verb.competition 2",
    "verb.consumption 2",
    "verb.contact 2",
    "verb.creation 2",
    "verb.emotion 2",
    "verb.motion 2",
    "verb.perception 2",
    "verb.possession 2",
    "verb.social 2",
    "verb.stative 2",
    "verb.weather 2",
    "adj.ppl 3",
)
#: Files NLTK's reader opens (``index.sense`` comes from ``wordnet-sense-index``).
_REQUIRED: Final = (
    "index.noun",
    "index.verb",
    "index.adj",
    "index.adv",
    "data.noun",
    "data.verb",
    "data.adj",
    "data.adv",
    "noun.exc",
    "verb.exc",
    "adj.exc",
    "adv.exc",
    "index.sense",
)


class WordNetMissingError(ZoomEarthError, FileNotFoundError):
    """The WordNet database (Debian ``wordnet-base`` + ``wordnet-sense-index``) is missing."""


_lock = threading.Lock()
_reader: Any = None


def _nltk_root(cache_dir: Path | None) -> Path:
    if cache_dir is None:
        from zoomearth.config import load_settings

        cache_dir = Path(load_settings().cache_dir)
    return Path(cache_dir) / "nltk_data"


def install_wordnet(
    cache_dir: str | Path | None = None,
    source: str | Path = DEBIAN_WORDNET_DIR,
    benchmark: str = "lrs-gro",
) -> Path:
    """Copy the Debian WordNet database into an NLTK data folder (idempotent).

    Args:
        cache_dir: Base folder; the corpus goes to ``<cache_dir>/nltk_data/corpora/wordnet``
            (default: the settings' cache directory).
        source: Folder holding the WordNet 3.0 database files.
        benchmark: Named in the error message.

    Returns:
        The corpus folder (``.../corpora/wordnet``).

    Raises:
        WordNetMissingError: When ``source`` lacks a file NLTK needs.
    """
    src = Path(source)
    missing = [name for name in _REQUIRED if not (src / name).is_file()]
    if missing:
        what = "entirely" if not src.is_dir() else "files " + ", ".join(missing)
        raise WordNetMissingError(
            WORDNET_MISSING_TEMPLATE.format(benchmark=benchmark, path=src, what=what)
        )
    dest = _nltk_root(Path(cache_dir) if cache_dir is not None else None) / "corpora" / "wordnet"
    marker = dest / ".complete"
    if marker.is_file():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    for name in (*_REQUIRED, "cntlist.rev"):
        # NLTK refuses paths outside its data folders (also through symlinks): real copies.
        if (src / name).is_file():
            shutil.copyfile(src / name, dest / name)
    lexnames = "".join(
        f"{i:02d}\t{name}\t{pos}\n"
        for i, (name, pos) in enumerate(line.split() for line in LEXNAMES)
    )
    (dest / "lexnames").write_text(lexnames, encoding="ascii")
    marker.write_text("ok\n", encoding="ascii")
    return dest


def wordnet(cache_dir: str | Path | None = None, source: str | Path = DEBIAN_WORDNET_DIR) -> Any:
    """The WordNet corpus reader (opened once per process).

    Args:
        cache_dir: Base folder of the NLTK data copy (see :func:`install_wordnet`).
        source: Folder holding the Debian WordNet database.

    Returns:
        An ``nltk.corpus.reader.wordnet.WordNetCorpusReader``.

    Raises:
        WordNetMissingError: When the database is missing.
    """
    global _reader
    with _lock:
        if _reader is None:
            import nltk
            from nltk.corpus.reader.wordnet import WordNetCorpusReader

            root = install_wordnet(cache_dir, source)
            data_dir = str(root.parent.parent)  # NLTK reads only under its data folders
            if data_dir not in nltk.data.path:
                nltk.data.path.append(data_dir)
            with warnings.catch_warnings():
                # "multilingual functions are not available": no Open Multilingual Wordnet.
                warnings.simplefilter("ignore", UserWarning)
                _reader = WordNetCorpusReader(str(root), None)
        return _reader


def _lemmatize(word: str) -> str:
    """NLTK's ``WordNetLemmatizer().lemmatize(word)`` (noun): the shortest morphy lemma."""
    lemmas = wordnet()._morphy(word, "n")
    return min(lemmas, key=len) if lemmas else word


@lru_cache(maxsize=65536)
def best_path_similarity(word1: str, word2: str) -> float:
    """The best ``path_similarity`` over all synset pairs of two strings (0.0 when none).

    Args:
        word1: A word or phrase, used as given (phrases with spaces have no synsets).
        word2: Another.

    Returns:
        The maximum similarity in [0, 1].
    """
    wn = wordnet()
    best = 0.0
    for s1 in wn.synsets(word1):
        for s2 in wn.synsets(word2):
            sim = s1.path_similarity(s2)
            if sim is not None and sim > best:
                best = sim
    return best


def score_lrs_gro(ground_truth: str, answer: str | None) -> bool:
    """LRS-GRO: exact, or best path similarity of the noun-lemmatised strings >= 0.8.

    Args:
        ground_truth: The record's ``ground_truth``.
        answer: The model's answer; None (no answer) is wrong.

    Returns:
        Whether the official script counts it correct.
    """
    if answer is None:
        return False
    gt = str(ground_truth).lower()
    ans = answer.lower().strip()
    if gt == ans:
        return True
    w1, w2 = _lemmatize(gt.lower()), _lemmatize(ans.lower())
    return best_path_similarity(w1, w2) >= 0.8


def score_lrs_vqa(ground_truth: str, answer: str | None) -> bool:
    """LRS-VQA: exact (lower-cased), or any synset pair with path similarity > 0.8.

    Args:
        ground_truth: The record's ``ground_truth``.
        answer: The model's answer; None counts as the empty string.

    Returns:
        Whether the official script counts it correct.
    """
    gt = str(ground_truth).lower()
    ans = (answer or "").lower()
    if gt == ans:
        return True
    return best_path_similarity(gt, ans) > 0.8


#: MME-RealWorld's lead-ins, including the two that lack a comma in the official list (Python
#: concatenates them, so "The best option is" alone is never removed).
_MME_PREFIXES: Final = (
    "The best answer is",
    "The correct answer is",
    "The answer is",
    "The answer",
    "The best option isThe correct option is",
    "Best answer:Best option:",
)
_DEFAULT_CHOICES: Final = ("(A)", "(B)", "(C)", "(D)", "(E)")


def extract_mme_letter(text: str | None, choices: Sequence[str] = _DEFAULT_CHOICES) -> str:
    """MME-RealWorld's letter extraction (``extract_characters_regex``).

    Args:
        text: The model's output.
        choices: The ``Answer choices`` strings (``"(A) ..."``).

    Returns:
        One letter, or "" when none is found. Note the official quirk: an empty text is
        contained in every choice, so it extracts the first choice's letter.
    """
    s = (text or "").strip()
    for prefix in _MME_PREFIXES:
        s = s.replace(prefix, "")
    if len(s.split()) > 10 and not re.search("[ABCDE]", s):
        return ""
    match = re.search(r"[ABCDE]", s)
    if match is None:
        for choice in choices:
            if s.lower() in choice.lower():
                return choice[1]
        return ""
    return match[0]


def score_mme(ground_truth: str, answer: str | None, choices: Sequence[str]) -> bool:
    """MME-RealWorld: extracted letter equals the ground-truth letter.

    Args:
        ground_truth: The record's ``Ground truth`` letter.
        answer: The model's output.
        choices: The record's ``Answer choices``.
    """
    return ground_truth == extract_mme_letter(answer, choices)


def extract_xlrs_letters(text: str | None) -> str:
    """lmms-eval's XLRS letter-set extraction (``extract_characters_regex``).

    Args:
        text: The model's output.

    Returns:
        The extracted letters (upper case, each once, sorted), or "".
    """
    s = (text or "").strip()
    for prefix in _MME_PREFIXES:
        s = s.replace(prefix, "")
    if not re.search("[ABCDE]", s):
        return ""
    matches = re.findall(r"\(([a-eA-E])\)", s)
    if not matches:
        # Both groups are optional: this takes every a-e letter, also inside words (the
        # official third fallback, any a-e letter, can therefore never add anything).
        matches = re.findall(r"(?:^|\s)?([a-eA-E])(?:$|[\s,.])?", s)
    if not matches:
        return ""
    return "".join(sorted({m.upper() for m in matches}))


def score_xlrs(ground_truth: str, answer: str | None) -> bool:
    """XLRS-Bench: the extracted letter set equals the set of the answer's characters."""
    return set(extract_xlrs_letters(answer)) == set(str(ground_truth))


BENCHMARK_SCORERS: Final = ("lrs-gro", "lrs-vqa", "mme-realworld-rs", "xlrs")


def score_answer(
    benchmark: str, ground_truth: str, answer: str | None, choices: Sequence[str] = ()
) -> bool:
    """Score one answer with the benchmark's official rule.

    Args:
        benchmark: One of :data:`BENCHMARK_SCORERS`.
        ground_truth: The ground truth as the record gives it.
        answer: The answer (None when there is none).
        choices: Multiple-choice option strings (MME-RealWorld).

    Raises:
        ValueError: For an unknown benchmark.
    """
    if benchmark == "lrs-gro":
        return score_lrs_gro(ground_truth, answer)
    if benchmark == "lrs-vqa":
        return score_lrs_vqa(ground_truth, answer)
    if benchmark == "mme-realworld-rs":
        return score_mme(ground_truth, answer, choices or _DEFAULT_CHOICES)
    if benchmark == "xlrs":
        return score_xlrs(ground_truth, answer)
    raise ValueError(
        UNKNOWN_BENCHMARK_TEMPLATE.format(name=benchmark, valid=", ".join(BENCHMARK_SCORERS))
    )
