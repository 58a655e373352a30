"""Translation data: Debian-format parsing, deterministic split, IWSLT'14 preparation on a written
sample, sentencepiece round-trip and caching, token-count batches."""

import pytest
from _translation_helpers import PAIRS as SIX_PAIRS

from emergeinit.bench.translation.data import (
    CorpusMissing, load_corpus, parse_trans_line, prepare_iwslt14, read_parallel, read_trans_de_en,
    split_pairs,
)
from emergeinit.bench.translation.spm import BOS, EOS, PAD, collate, token_batches, train_sentencepiece

DEBIAN_SAMPLE = """\
# Version :: devel 2023-01-30
# License :: GPL Version 2 or later
Aal {m} [cook.] | Aale {pl} :: eel | eels
schläfrig {adj} | schläfriger | Das Medikament machte mich schläfrig. :: sleepy | sleepier | The medicine made me sleepy.
Muss er es tun? :: Need he do it?
Ich bin ein bisschen spät dran. :: I'm running a bit late.
Zu dumm!; Wie dumm! :: What a nuisance!
jdm. etw. überlassen {vt} | Er überlässt es jdm. selbst. :: to leave sth. to sb. | He leaves it to sb. else.
Hast du eine Ahnung, wo er sein könnte? :: Have you any idea where he could be?; Have you an idea where he could be?
eins | zwei :: one
Muss er es tun? :: Does he have to do it?
"""


def test_parse_debian_lines():
    assert parse_trans_line("# Version :: devel") == []
    assert parse_trans_line("Aal {m} [cook.] | Aale {pl} :: eel | eels") == []  # not sentences
    assert parse_trans_line(
        "schläfrig {adj} | schläfriger | Das Medikament machte mich schläfrig. :: sleepy | sleepier | "
        "The medicine made me sleepy."
    ) == [("Das Medikament machte mich schläfrig.", "The medicine made me sleepy.")]
    assert parse_trans_line("Zu dumm!; Wie dumm! :: What a nuisance!") == []  # two words only
    assert parse_trans_line(
        "Hast du eine Ahnung, wo er sein könnte? :: Have you any idea where he could be?; Have you an idea?"
    ) == [("Hast du eine Ahnung, wo er sein könnte?", "Have you any idea where he could be?")]
    # dictionary placeholders (jdm., sth.) are phrases, not sentences; unequal entry counts are skipped
    assert parse_trans_line("Er überlässt es jdm. selbst. :: He leaves it to sb. else.") == []
    assert parse_trans_line("eins | zwei :: one") == []
    assert parse_trans_line("Er kommt {vi} [ugs.] morgen <morgn> an. :: He arrives [Br.] tomorrow.") == [
        ("Er kommt morgen an.", "He arrives tomorrow.")
    ]


def test_read_dedups_by_source_and_missing_file_says_how_to_install(tmp_path):
    path = tmp_path / "de-en"
    path.write_text(DEBIAN_SAMPLE, encoding="utf-8")
    assert read_trans_de_en(path) == [
        ("Das Medikament machte mich schläfrig.", "The medicine made me sleepy."),
        ("Muss er es tun?", "Need he do it?"),  # the second "Muss er es tun?" is a duplicate
        ("Ich bin ein bisschen spät dran.", "I'm running a bit late."),
        ("Hast du eine Ahnung, wo er sein könnte?", "Have you any idea where he could be?"),
    ]
    with pytest.raises(CorpusMissing, match="apt-get install trans-de-en"):
        read_trans_de_en(tmp_path / "nope")


def test_split_is_deterministic_disjoint_and_order_free():
    pairs = [(f"Satz Nummer {i} hier.", f"Sentence number {i} here.") for i in range(100)]
    train, valid, test = split_pairs(pairs, valid=10, test=5)
    assert (len(train), len(valid), len(test)) == (85, 10, 5)
    assert set(train) | set(valid) | set(test) == set(pairs)
    assert not (set(train) & set(valid)) and not (set(valid) & set(test)) and not (set(train) & set(test))
    t2, v2, s2 = split_pairs(list(reversed(pairs)), valid=10, test=5)
    assert set(v2) == set(valid) and set(s2) == set(test)  # membership by hash, not position
    with pytest.raises(ValueError):
        split_pairs(pairs, valid=60, test=40)


def _write_iwslt(raw):
    raw.mkdir()
    de = ['<url>http://www.ted.com/talks/x</url>', '<keywords>talks</keywords>', '<talkid>1</talkid>',
          '<title>Der Titel</title>']
    en = ['<url>http://www.ted.com/talks/x</url>', '<keywords>talks</keywords>', '<talkid>1</talkid>',
          '<title>The Title</title>']
    for i in range(1, 47):
        de.append(f"Das ist Satz Nummer {i} .")
        en.append(f"This is sentence number {i} .")
    de.append("Kurz .")  # ratio 2 words vs 7 words > 1.5: cleaned away
    en.append("This one is far too long here .")
    (raw / "train.tags.de-en.de").write_text("\n".join(de) + "\n", encoding="utf-8")
    (raw / "train.tags.de-en.en").write_text("\n".join(en) + "\n", encoding="utf-8")
    names = ["IWSLT14.TED.dev2010", "IWSLT14.TEDX.dev2012", "IWSLT14.TED.tst2010", "IWSLT14.TED.tst2011",
             "IWSLT14.TED.tst2012"]
    for j, name in enumerate(names):
        for lang, text in (("de", "Hallo Welt"), ("en", "Hello world")):
            body = f'<mteval>\n<doc docid="1">\n<seg id="1"> {text} {j} </seg>\n<seg id="2">{text} ’{j}’</seg>\n</doc>\n</mteval>\n'
            (raw / f"{name}.de-en.{lang}.xml").write_text(body, encoding="utf-8")


def test_iwslt14_preparation_standard_layout(tmp_path):
    raw = tmp_path / "de-en"
    _write_iwslt(raw)
    counts = prepare_iwslt14(raw, tmp_path / "out")
    # 47 kept (title + 46 sentences), every 23rd to valid: 2 valid, 45 train; 5 test sets x 2 segments
    assert counts == {"train": 45, "valid": 2, "test": 10}
    train = read_parallel(tmp_path / "out", "train")
    assert train[0] == ("der titel", "the title")  # lowercased, tags stripped, url/keywords dropped
    assert read_parallel(tmp_path / "out", "valid") == [
        ("das ist satz nummer 22 .", "this is sentence number 22 ."),
        ("das ist satz nummer 45 .", "this is sentence number 45 ."),
    ]
    test = read_parallel(tmp_path / "out", "test")
    assert test[:2] == [("hallo welt 0", "hello world 0"), ("hallo welt '0'", "hello world '0'")]
    corpus = load_corpus("iwslt14", path=raw)  # raw folder: prepared on first use
    assert (len(corpus.train), len(corpus.valid), len(corpus.test)) == (45, 2, 10)
    with pytest.raises(CorpusMissing, match="IWSLT"):
        load_corpus("iwslt14", path=tmp_path / "empty")


PAIRS = SIX_PAIRS * 3


def test_sentencepiece_round_trip_and_cache(tmp_path):
    sp = train_sentencepiece(PAIRS, vocab_size=120, cache_dir=tmp_path)
    cached = list(tmp_path.glob("spm-*.model"))
    assert len(cached) == 1
    for de, en in PAIRS[:6]:
        assert sp.decode(sp.encode(de)) == de
        assert sp.decode(sp.encode(en)) == en
    assert (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()) == (PAD, 1, BOS, EOS)
    again = train_sentencepiece(PAIRS, vocab_size=120, cache_dir=tmp_path)  # loaded, not retrained
    assert again.encode("Das Haus ist groß.") == sp.encode("Das Haus ist groß.")
    assert len(list(tmp_path.glob("spm-*.model"))) == 1
    train_sentencepiece(PAIRS[:6], vocab_size=120, cache_dir=tmp_path)  # other text: another model
    assert len(list(tmp_path.glob("spm-*.model"))) == 2


def test_token_batches_respect_budget_and_cover_everything():
    examples = [([1] * n, [1] * (n % 7 + 1)) for n in range(1, 41)]
    for shuffle in (False, True):
        batches = token_batches(examples, max_tokens=60, shuffle=shuffle, seed=3)
        assert sorted(i for b in batches for i in b) == list(range(40))
        for b in batches:
            longest = max(max(len(examples[i][0]), len(examples[i][1])) + 1 for i in b)
            assert len(b) == 1 or len(b) * longest <= 60
    sorted_batches = token_batches(examples, max_tokens=60)
    lengths = [len(examples[i][1]) for b in sorted_batches for i in b]
    assert lengths == sorted(lengths)  # sorted by target length
    batch = collate([([5, 6], [7]), ([5], [7, 8, 9])], [0, 1])
    assert batch.src.tolist() == [[5, 6, EOS], [5, EOS, PAD]]
    assert batch.tgt_in.tolist() == [[BOS, 7, PAD, PAD], [BOS, 7, 8, 9]]
    assert batch.tgt_out.tolist() == [[7, EOS, PAD, PAD], [7, 8, 9, EOS]]
    assert batch.ntokens == 6


@pytest.mark.integration
def test_debian_corpus_real():
    corpus = load_corpus("trans-de-en")
    assert (len(corpus.valid), len(corpus.test)) == (1000, 1000)
    assert 15_000 < len(corpus.train) < 25_000
    ends = ".?!\"'’”)"
    assert all(de[-1] in ends and en[-1] in ends and len(de.split()) >= 3 for de, en in corpus.train)
    assert load_corpus("trans-de-en").test == corpus.test  # deterministic
