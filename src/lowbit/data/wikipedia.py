"""English text for language-model evaluation: the Wikipedia excerpt bundled with gensim
(206 articles, 107 of them not redirects; about 3 MB of text once the markup is stripped)."""

from __future__ import annotations

import bz2
import importlib.util
import re
from pathlib import Path

from ..errors import DataError

WIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


def wikipedia_path() -> Path:
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the Wikipedia excerpt comes from the gensim package: pip install gensim")
    path = Path(list(spec.submodule_search_locations)[0]) / "test" / "test_data" / WIKI_FILE
    if not path.is_file():
        raise DataError(f"{path} is missing from the installed gensim")
    return path


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
