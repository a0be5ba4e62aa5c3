"""English text bundled with gensim: the Wikipedia excerpt for language models (206 articles, 107 of
them not redirects; about 3 MB of text once the markup is stripped), the Lee document-similarity set
and the review sentences of its polarity corpus."""

from __future__ import annotations

import bz2
import importlib.util
import re
from pathlib import Path

from ..errors import ConfigError, DataError

WIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


def wikipedia_path() -> Path:
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the Wikipedia excerpt comes from the gensim package: pip install gensim")
    path = Path(list(spec.submodule_search_locations)[0]) / "test" / "test_data" / WIKI_FILE
    if not path.is_file():
        raise DataError(f"{path} is missing from the installed gensim")
    return path


def gensim_test_data(name: str) -> Path:
    """A file of gensim's bundled test data (gensim/test/test_data)."""
    path = wikipedia_path().parent / name
    if not path.is_file():
        raise DataError(f"{path} is missing from the installed gensim")
    return path


def lee_similarity() -> tuple[list[str], list[list[float]]]:
    """The Lee document-similarity set: 50 news documents and the mean human similarity of each pair
    (a 50 x 50 matrix, upper triangle filled)."""
    docs = gensim_test_data("lee.cor").read_text(encoding="latin-1").strip().split("\n")
    rows = [[float(v) for v in line.split()] for line in
            gensim_test_data("similarities0-1.txt").read_text().strip().split("\n")]
    if len(docs) != 50 or len(rows) != 50 or any(len(r) != 50 for r in rows):
        raise DataError(f"the Lee data should be 50 documents and a 50 x 50 matrix, got {len(docs)} and {len(rows)}")
    return docs, rows


def polarity_sentences() -> list[str]:
    """The 200 movie-review sentences of pang_lee_polarity.cor, labels stripped."""
    lines = gensim_test_data("pang_lee_polarity.cor").read_text(encoding="latin-1").strip().split("\n")
    return [line.split(" ", 1)[1] if line.startswith("__label__") else line for line in lines]


def wikipedia_articles() -> list[tuple[str, str]]:
    """(title, plain text) of every article in the excerpt, in file order, redirects left out."""
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    with bz2.BZ2File(wikipedia_path()) as f:
        pages = list(extract_pages(f, filter_namespaces=("0",)))
    articles = []
    for title, markup, _ in pages:
        text = filter_wiki(markup)
        if text.lstrip().lower().startswith("#redirect"):
            continue
        text = re.sub(r"'{2,}", "", text)  # bold / italic quotes
        text = re.sub(r"\n{3,}", "\n\n", text).strip()
        if text:
            articles.append((title, text))
    return articles


TEXT_SPLITS = {"train": (0.0, 0.9), "val": (0.9, 0.95), "test": (0.95, 1.0)}


def wikipedia_text(split: str) -> str:
    """The plain text of a fixed share of the articles, in file order: "train" the first 90%,
    "val" the next 5%, "test" the last 5% (whole articles, joined by blank lines)."""
    if split not in TEXT_SPLITS:
        raise ConfigError(f"Wikipedia split {split!r} is unknown: expected one of {', '.join(TEXT_SPLITS)}")
    articles = wikipedia_articles()
    lo, hi = (round(f * len(articles)) for f in TEXT_SPLITS[split])
    return "\n\n".join(text for _, text in articles[lo:hi])
