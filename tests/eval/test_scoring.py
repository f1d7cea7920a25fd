"""The scorers against hand-worked cases of each official rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from zoomearth.eval import scoring
from zoomearth.eval.scoring import (
    extract_mme_letter,
    extract_xlrs_letters,
    score_answer,
    score_lrs_gro,
    score_lrs_vqa,
    score_mme,
    score_xlrs,
)

CHOICES = ["(A) a runway", "(B) a harbour", "(C) a stadium", "(D) a bridge", "(E) none"]


@pytest.mark.parametrize(
    ("gt", "answer", "expected"),
    [
        ("urban", "urban", True),  # exact
        ("Yes", " yes ", True),  # ground truth lower-cased, answer lower-cased and stripped
        ("car", "automobile", True),  # synonyms: the same synset, similarity 1.0
        ("grey", "gray", True),  # spelling variants share a synset
        ("airplanes", "airplane", True),  # plural: lemmatised before the synsets
        ("trees", "Trees ", True),
        ("3", "three", True),  # WordNet knows digits
        ("2", "two", True),
        ("3", "4", False),
        ("straight", "curved", False),  # best similarity 1/3
        ("boat", "ship", False),  # 1/3
        ("dark grey", "grey", False),  # phrases have no synsets: exact match only
        ("sports complex", "sports complex", True),
        ("yes", "no", False),
        ("urban", None, False),
        ("urban", "", False),
    ],
)
def test_lrs_gro(wordnet_dir: Path, gt: str, answer: str | None, expected: bool) -> None:
    assert score_lrs_gro(gt, answer) is expected


def test_lrs_vqa_differs_from_gro(wordnet_dir: Path) -> None:
    # LRS-VQA strips nothing: a trailing space breaks the exact match and has no synsets.
    assert score_lrs_gro("tree", "Trees ") is True
    assert score_lrs_vqa("tree", "Trees ") is False
    # Without lemmatisation NLTK's synsets() still applies morphy to plurals.
    assert score_lrs_vqa("airplane", "airplanes") is True
    assert score_lrs_vqa("car", "automobile") is True
    assert score_lrs_vqa("Urban", "urban") is True
    assert score_lrs_vqa("straight", "curved") is False


def test_threshold_strictness(wordnet_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A similarity of exactly 0.8 passes LRS-GRO (>=) and fails LRS-VQA (>)."""
    monkeypatch.setattr(scoring, "best_path_similarity", lambda a, b: 0.8)
    assert score_lrs_gro("alpha", "beta") is True
    assert score_lrs_vqa("alpha", "beta") is False


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("B", "B"),
        ("(C)", "C"),
        ("The best answer is (D).", "D"),
        ("The answer is: E", "E"),
        ("Answer: a harbour, so B", "A"),  # the first capital A-E anywhere: "Answer"'s A
        ("I think it is (B) rather than (C)", "B"),
        ("a stadium", "C"),  # no capital A-E: matched against the choices' text
        ("something else entirely", ""),
        ("this is a very long explanation with many words and no option letter at all", ""),
        ("", "A"),  # official quirk: the empty string is contained in the first choice
    ],
)
def test_mme_letter_extraction(text: str, letter: str) -> None:
    assert extract_mme_letter(text, CHOICES) == letter


def test_mme_scoring() -> None:
    assert score_mme("B", "The best answer is B", CHOICES)
    assert not score_mme("B", "The best answer is C", CHOICES)
    assert score_answer("mme-realworld-rs", "C", "a stadium", CHOICES)


@pytest.mark.parametrize(
    ("text", "letters"),
    [
        ("A", "A"),
        ("A C", "AC"),  # multi-select, separated by spaces
        ("(B) and (D)", "BD"),  # letters in parentheses take precedence
        ("The answer is B", "B"),
        ("C, A", "AC"),
        ("no option", ""),  # no capital A-E at all
        ("B because", "ABCE"),  # official quirk: a-e letters inside words count too
    ],
)
def test_xlrs_letter_sets(text: str, letters: str) -> None:
    assert extract_xlrs_letters(text) == letters


def test_xlrs_scoring() -> None:
    assert score_xlrs("AC", "C A")
    assert not score_xlrs("AC", "A")  # a subset is wrong
    assert not score_xlrs("A", "A B")
    assert score_answer("xlrs", "D", "(D)")


def test_unknown_benchmark() -> None:
    with pytest.raises(ValueError, match="valid benchmarks are"):
        score_answer("nope", "a", "a")


def test_missing_wordnet_names_the_packages(tmp_path: Path) -> None:
    with pytest.raises(scoring.WordNetMissingError, match="wordnet-base wordnet-sense-index"):
        scoring.install_wordnet(tmp_path / "cache", source=tmp_path / "nowhere")
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "index.noun").write_text("")
    with pytest.raises(FileNotFoundError, match="index.sense"):
        scoring.install_wordnet(tmp_path / "cache", source=partial)


def test_install_writes_lexnames(wordnet_dir: Path) -> None:
    lex = (wordnet_dir / "nltk_data" / "corpora" / "wordnet" / "lexnames").read_text()
    lines = lex.splitlines()
    assert len(lines) == 45
    assert lines[0] == "00\tadj.all\t3"
    assert lines[6] == "06\tnoun.artifact\t1"
    assert lines[44] == "44\tadj.ppl\t3"
