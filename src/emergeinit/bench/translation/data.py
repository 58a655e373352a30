"""German→English parallel text: the offline Debian corpus and the IWSLT'14 preparation.

* ``trans-de-en`` (Debian package ``trans-de-en``, the Chemnitz dictionary): lines
  ``de | de2 :: en | en2``; the sentence pairs are the aligned entries that read as sentences
  (several words, ending in . ? !). We clean them, drop duplicates and split deterministically.
* ``iwslt14``: the standard preparation of fairseq's ``prepare-iwslt14.sh`` (same train/valid/test
  split and cleaning) from the raw ``de-en`` release, without Moses tokenization: sentencepiece
  works on raw text and BLEU is scored on detokenized text with sacrebleu.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

__all__ = [
    "Pair",
    "Corpus",
    "CorpusMissing",
    "TRANS_DE_EN",
    "parse_trans_line",
    "read_trans_de_en",
    "split_pairs",
    "prepare_iwslt14",
    "read_parallel",
    "load_corpus",
]

Pair = Tuple[str, str]  # (German source, English target)
PathLike = Union[str, Path]

TRANS_DE_EN = Path("/usr/share/trans/de-en")

# dictionary annotations: {n} {vt} [coll.] [Br.] <alternative spelling>
_ANNOTATION = re.compile(r"\s*(\{[^{}]*\}|\[[^\[\]]*\]|<[^<>]*>)")
_SENTENCE_END = re.compile(r"[.?!][\"'’”)]?$")
# placeholders of dictionary phrases ("to do sth.", "jdm. etw. geben"): not sentences
_PLACEHOLDERS = re.compile(
    r"(^|[\s(/])(sth|sb|jd|jdn|jdm|jds|etw|o\.ä|usw|etc)\.(?=$|[\s,;)/’'])", re.IGNORECASE
)


class CorpusMissing(FileNotFoundError):
    """A corpus is not on this machine; the message says how to get it."""


@dataclass(frozen=True)
class Corpus:
    """Sentence pairs split into train/valid/test (German source, English target)."""

    name: str
    train: List[Pair]
    valid: List[Pair]
    test: List[Pair]

    def split(self, name: str) -> List[Pair]:
        if name not in ("train", "valid", "test"):
            raise ValueError(f"unknown split {name!r}: use train, valid or test")
        return getattr(self, name)


# ------------------------------------------------------------------------------------ trans-de-en

def _clean_entry(text: str) -> Optional[str]:
    """One side of a dictionary entry as a sentence, or None when it is not a sentence."""
    text = _ANNOTATION.sub("", text)
    text = text.split("; ")[0]  # alternatives "Sentence one.; Sentence two." -> the first
    text = " ".join(text.replace("\u00a0", " ").split())
    if len(text.split()) < 3 or not _SENTENCE_END.search(text):
        return None
    if _PLACEHOLDERS.search(text):
        return None
    return text


def parse_trans_line(line: str) -> List[Pair]:
    """The sentence pairs of one ``trans-de-en`` line (``de | de2 :: en | en2``); [] if none.

    Entries are aligned by position on both sides of ``::``; a line whose sides have different
    entry counts is skipped. Annotations ({n}, [coll.], <...>) are removed, alternatives
    separated by "; " reduced to the first, and both sides must read as a sentence of at least
    three words ending in . ? or !.
    """
    line = line.strip()
    if not line or line.startswith("#") or " :: " not in line:
        return []
    de_side, en_side = line.split(" :: ", 1)
    de_entries, en_entries = de_side.split(" | "), en_side.split(" | ")
    if len(de_entries) != len(en_entries):
        return []
    pairs = []
    for de, en in zip(de_entries, en_entries):
        de_clean, en_clean = _clean_entry(de), _clean_entry(en)
        if de_clean and en_clean:
            pairs.append((de_clean, en_clean))
    return pairs


def read_trans_de_en(path: Optional[PathLike] = None) -> List[Pair]:
    """All sentence pairs of the Debian dictionary, in file order, deduplicated by source."""
    path = Path(path) if path is not None else TRANS_DE_EN
    if not path.is_file():
        raise CorpusMissing(
            f"the German-English corpus {path} is missing: install the Debian package "
            "'trans-de-en' (sudo apt-get install trans-de-en), or run scripts/setup.sh as root"
        )
    seen: set = set()
    pairs: List[Pair] = []
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            for de, en in parse_trans_line(line):
                if de not in seen:
                    seen.add(de)
                    pairs.append((de, en))
    return pairs


def _split_key(pair: Pair) -> str:
    return hashlib.sha1(pair[0].encode("utf-8")).hexdigest()


def split_pairs(pairs: Sequence[Pair], valid: int = 1000, test: int = 1000) -> Tuple[List[Pair], List[Pair], List[Pair]]:
    """Deterministic split by the SHA-1 of the source sentence: the first ``test`` pairs in hash
    order are the test set, the next ``valid`` the validation set, the rest (in input order) train.

    Hash order makes the split independent of file order and stable when the corpus grows.
    """
    if valid < 0 or test < 0 or valid + test >= len(pairs):
        raise ValueError(f"cannot hold out {valid}+{test} of {len(pairs)} pairs")
    order = sorted(range(len(pairs)), key=lambda i: _split_key(pairs[i]))
    test_idx, valid_idx = order[:test], order[test:test + valid]
    held = set(test_idx) | set(valid_idx)
    train = [p for i, p in enumerate(pairs) if i not in held]
    return train, [pairs[i] for i in sorted(valid_idx)], [pairs[i] for i in sorted(test_idx)]


# ---------------------------------------------------------------------------------------- IWSLT'14

_IWSLT_TEST_SETS = (
    "IWSLT14.TED.dev2010", "IWSLT14.TEDX.dev2012", "IWSLT14.TED.tst2010",
    "IWSLT14.TED.tst2011", "IWSLT14.TED.tst2012",
)
_DROP_TAGS = ("<url>", "<talkid>", "<keywords>")  # fairseq keeps <title>/<description> text
_STRIP_TAGS = re.compile(r"</?(title|description)>")
_SEG = re.compile(r'<seg id="?\d+"?>\s*(.*?)\s*</seg>')


def _iwslt_train_lines(path: Path) -> List[str]:
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if any(tag in line for tag in _DROP_TAGS):
            continue
        lines.append(" ".join(_STRIP_TAGS.sub("", line).split()))
    return lines


def _iwslt_xml_lines(path: Path) -> List[str]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        m = _SEG.search(line)
        if m:
            out.append(" ".join(m.group(1).replace("’", "'").split()))
    return out


def _keep_pair(src: str, tgt: str, min_len: int = 1, max_len: int = 175, ratio: float = 1.5) -> bool:
    """Moses ``clean-corpus-n.perl`` rule on whitespace words: lengths in range, ratio ≤ ``ratio``."""
    n_src, n_tgt = len(src.split()), len(tgt.split())
    if not (min_len <= n_src <= max_len and min_len <= n_tgt <= max_len):
        return False
    return n_src / n_tgt <= ratio and n_tgt / n_src <= ratio


def prepare_iwslt14(raw_dir: PathLike, out_dir: PathLike, *, lowercase: bool = True) -> Dict[str, int]:
    """Prepare IWSLT'14 De→En as fairseq's ``prepare-iwslt14.sh`` does, minus Moses tokenization.

    ``raw_dir`` is the unpacked ``de-en`` folder of the release (``train.tags.de-en.{de,en}`` and
    ``IWSLT14.TED*.de-en.{de,en}.xml``). Train: metadata lines dropped, pairs cleaned (1–175
    words, length ratio ≤ 1.5), lowercased; every 23rd pair is the validation set. Test: dev2010,
    dev2012 (TEDX), tst2010, tst2011, tst2012 concatenated. Writes ``{train,valid,test}.{de,en}``
    to ``out_dir`` and returns the pair count of each split.
    """
    raw, out = Path(raw_dir), Path(out_dir)
    need = [raw / "train.tags.de-en.de", raw / "train.tags.de-en.en"]
    need += [raw / f"{name}.de-en.{lang}.xml" for name in _IWSLT_TEST_SETS for lang in ("de", "en")]
    missing = [p.name for p in need if not p.is_file()]
    if missing:
        raise CorpusMissing(
            f"IWSLT'14 raw files missing in {raw}: {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}. "
            "Download 2014-01.tgz's texts/de/en/de-en.tgz from the IWSLT 2014 release "
            "(https://wit3.fbk.eu/2014-01, mirrored by fairseq's examples/translation/prepare-iwslt14.sh) "
            "and unpack it so that this folder holds train.tags.de-en.de"
        )
    case = (lambda s: s.lower()) if lowercase else (lambda s: s)
    src, tgt = _iwslt_train_lines(need[0]), _iwslt_train_lines(need[1])
    if len(src) != len(tgt):
        raise ValueError(f"train.tags sides differ in length: {len(src)} German vs {len(tgt)} English lines")
    train_all = [(case(s), case(t)) for s, t in zip(src, tgt) if _keep_pair(s, t)]
    splits: Dict[str, List[Pair]] = {
        "valid": [p for i, p in enumerate(train_all, 1) if i % 23 == 0],
        "train": [p for i, p in enumerate(train_all, 1) if i % 23 != 0],
        "test": [],
    }
    for name in _IWSLT_TEST_SETS:
        de = _iwslt_xml_lines(raw / f"{name}.de-en.de.xml")
        en = _iwslt_xml_lines(raw / f"{name}.de-en.en.xml")
        if len(de) != len(en):
            raise ValueError(f"{name}: {len(de)} German vs {len(en)} English segments")
        splits["test"] += [(case(s), case(t)) for s, t in zip(de, en)]
    out.mkdir(parents=True, exist_ok=True)
    for split, pairs in splits.items():
        for lang, k in (("de", 0), ("en", 1)):
            (out / f"{split}.{lang}").write_text("".join(p[k] + "\n" for p in pairs), encoding="utf-8")
    return {k: len(v) for k, v in splits.items()}


def read_parallel(folder: PathLike, split: str, src: str = "de", tgt: str = "en") -> List[Pair]:
    """Pairs of ``folder/{split}.{src}`` and ``folder/{split}.{tgt}``, line by line."""
    folder = Path(folder)
    a = (folder / f"{split}.{src}").read_text(encoding="utf-8").splitlines()
    b = (folder / f"{split}.{tgt}").read_text(encoding="utf-8").splitlines()
    if len(a) != len(b):
        raise ValueError(f"{folder}/{split}: {len(a)} source vs {len(b)} target lines")
    return list(zip(a, b))


def load_corpus(
    name: str = "trans-de-en",
    *,
    path: Optional[PathLike] = None,
    valid_size: int = 1000,
    test_size: int = 1000,
    max_pairs: Optional[int] = None,
) -> Corpus:
    """A corpus by name. ``trans-de-en``: ``path`` is the dictionary file (default the Debian one).
    ``iwslt14``: ``path`` is a prepared folder (``{train,valid,test}.{de,en}``) or the raw ``de-en``
    folder, prepared on first use into ``path/prepared``. ``max_pairs`` caps the training split."""
    if name == "trans-de-en":
        train, valid, test = split_pairs(read_trans_de_en(path), valid=valid_size, test=test_size)
    elif name == "iwslt14":
        folder = Path(path) if path is not None else Path("data/iwslt14")
        if not (folder / "train.de").is_file():
            if (folder / "train.tags.de-en.de").is_file():
                prepared = folder / "prepared"
                if not (prepared / "train.de").is_file():
                    prepare_iwslt14(folder, prepared)
                folder = prepared
            else:
                raise CorpusMissing(
                    f"no IWSLT'14 data in {folder}: put the prepared train/valid/test.{{de,en}} "
                    "there, or the raw de-en release (train.tags.de-en.de, IWSLT14.TED*.xml) for "
                    "emergeinit to prepare; it cannot be downloaded offline - use data=trans-de-en"
                )
        train, valid, test = (read_parallel(folder, s) for s in ("train", "valid", "test"))
    else:
        raise ValueError(f"unknown corpus {name!r}: use 'trans-de-en' or 'iwslt14'")
    if max_pairs is not None:
        train = train[:max_pairs]
    return Corpus(name, list(train), list(valid), list(test))


def pairs_text(pairs: Iterable[Pair]) -> List[str]:
    """Both sides of the pairs as one list of sentences (joint subword training)."""
    return [s for pair in pairs for s in pair]
