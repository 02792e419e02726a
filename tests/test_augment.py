import json
import random

import pytest
import spacy
from spacy.tokens import Doc
from typer.testing import CliRunner

from spacy_distill.augment.augmenter import PosAugmenter, create_pos_augmenter, doc_to_tokens
from spacy_distill.cli import app

WORDS = "the good cheap phone works and the bad old cable breaks".split()
POS = ["DET", "ADJ", "ADJ", "NOUN", "VERB", "CCONJ", "DET", "ADJ", "ADJ", "NOUN", "VERB"]


def tagged_doc(nlp, words=WORDS, pos=POS, sent_starts=None):
    return Doc(nlp.vocab, words=words, pos=pos, sent_starts=sent_starts)


@pytest.fixture
def nlp():
    return spacy.blank("en")


def fitted(nlp, **kwargs):
    aug = PosAugmenter(**kwargs)
    aug.fit([tagged_doc(nlp)], "en")
    return aug


def test_same_seed_same_output_and_other_seed_differs(nlp):
    doc = tagged_doc(nlp)
    a = fitted(nlp, seed=1).augment_doc(doc, "en", 0)
    b = fitted(nlp, seed=1).augment_doc(doc, "en", 0)
    c = fitted(nlp, seed=2).augment_doc(doc, "en", 0)
    assert a == b and a != c
    assert 0 < len(a) <= 20 and len(set(a)) == len(a)
    assert doc.text not in a


def test_pos_replacement_rate_in_real_variants(nlp):
    # The table only has words absent from the text, so every replacement is
    # visible: over >= 10k tokens, 10 % ± 1 % are replaced, each by a word of
    # the same POS.
    aug = PosAugmenter(n_iter=1, p_mask=0.0, p_pos=0.1, p_ng=0.0, p_sent=0.0)
    aug.fit([tagged_doc(nlp, [f"{p.lower()}_x" for p in POS], POS)], "en")
    toks = doc_to_tokens(tagged_doc(nlp))
    n_rep = n_tok = 0
    for i in range(1000):
        variants = aug.augment_tokens(toks, "en", aug.rng_for(i))
        words = variants[0].split() if variants else WORDS
        for word, pos in zip(words, POS):
            if word.endswith("_x"):
                assert word == f"{pos.lower()}_x"
                n_rep += 1
        n_tok += len(words)
    assert n_tok >= 10000
    assert n_rep / n_tok == pytest.approx(0.1, abs=0.01)


def test_masked_share_in_real_variants(nlp):
    # Over the variants actually produced (n-grams and sentences off), masked
    # tokens are 10 % ± 1 % of >= 10k tokens.
    aug = fitted(nlp, n_iter=1, p_pos=0.0, p_ng=0.0, p_sent=0.0, mask_token="MASK")
    toks = doc_to_tokens(tagged_doc(nlp))
    n_mask = n_tok = 0
    for i in range(1000):
        rng = aug.rng_for(i)
        variants = aug.augment_tokens(toks, "en", rng)
        # An unchanged variant is dropped as a duplicate of the original: count it as 0 masks.
        words = variants[0].split() if variants else WORDS
        n_mask += words.count("MASK")
        n_tok += len(words)
    assert n_tok >= 10000
    assert n_mask / n_tok == pytest.approx(0.1, abs=0.01)


def test_pos_replacement_keeps_the_pos_and_draws_by_frequency(nlp):
    aug = PosAugmenter(n_iter=1, p_mask=0.0, p_pos=1.0, p_ng=0.0, p_sent=0.0)
    # "good" is 3× as frequent as "bad" among ADJ.
    aug.fit([tagged_doc(nlp, ["good", "good", "good", "bad"], ["ADJ"] * 4)], "en")
    rng = random.Random(0)
    draws = [aug._sample_word(rng, "en", "ADJ") for _ in range(4000)]
    assert draws.count("good") / len(draws) == pytest.approx(0.75, abs=0.03)
    assert aug._sample_word(rng, "en", "NOUN") is None


def test_ngram_sampling_lengths(nlp):
    aug = fitted(nlp, n_iter=50, p_mask=0.0, p_pos=0.0, p_ng=1.0, p_sent=0.0)
    variants = aug.augment_doc(tagged_doc(nlp), "en", 0)
    assert variants
    for v in variants:
        assert 1 <= len(v.split()) <= 5
        assert v in " ".join(WORDS)


def test_sentence_sampling(nlp):
    words = ["Good", "phone", ".", "Bad", "cable", "."]
    doc = Doc(
        nlp.vocab,
        words=words,
        spaces=[True, False, True, True, False, False],
        pos=["ADJ", "NOUN", "PUNCT"] * 2,
        sent_starts=[True, False, False, True, False, False],
    )
    aug = PosAugmenter(n_iter=20, p_mask=0.0, p_pos=0.0, p_ng=0.0, p_sent=1.0)
    assert sorted(aug.augment_doc(doc, "en", 0)) == ["Bad cable.", "Good phone."]


def test_rules_switch_off(nlp):
    aug = fitted(nlp, p_mask=0.0, p_pos=0.0, p_ng=0.0, p_sent=0.0)
    assert aug.augment_doc(tagged_doc(nlp), "en", 0) == []


def test_language_without_table_is_an_error(nlp):
    with pytest.raises(ValueError, match="no POS unigram table for language 'de'"):
        fitted(nlp).augment_doc(tagged_doc(nlp), "de", 0)


def test_spacy_augmenter_protocol(nlp, tmp_path):
    table = tmp_path / "table.json"
    table.write_text(json.dumps(fitted(nlp).to_json()))
    aug = create_pos_augmenter(n_iter=3, pos_table=str(table))
    from spacy.training import Example

    ref = tagged_doc(nlp)
    ref.cats = {"POSITIVE": 1.0, "NEGATIVE": 0.0}
    out = list(aug(nlp, Example(nlp.make_doc(ref.text), ref)))
    assert out[0].reference is ref and 1 < len(out) <= 4
    assert all(eg.reference.cats == ref.cats for eg in out)


def test_cli_augment_end_to_end(tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text(
        "\n".join(json.dumps({"text": t, "lang": "en"}) for t in ["the good phone works", "the bad cable breaks. the old phone works"]),
        encoding="utf8",
    )
    cfg = tmp_path / "augment.cfg"
    cfg.write_text(
        '[augment]\n@augmenters = "spacy-distill.PosAugmenter.v1"\nn_iter = 5\np_mask = 0.2\np_pos = 0.0\n'
        'p_ng = 0.25\nmax_ngram = 5\np_sent = 0.5\nmask_token = "<mask>"\nseed = 0\n'
    )
    runner = CliRunner()
    out1, out2 = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    args = ["augment", str(inp), str(out1), "--config", str(cfg), "--lang", "en", "--no-progress", "--augment.seed", "3"]
    r1 = runner.invoke(app, args)
    assert r1.exit_code == 0, r1.output
    r2 = runner.invoke(app, [*args[:2], str(out2), *args[3:]])
    assert r2.exit_code == 0
    assert out1.read_bytes() == out2.read_bytes()
    rows = [json.loads(line) for line in out1.read_text().splitlines()]
    assert rows and {r["source"] for r in rows} <= {0, 1}
    assert all(r["lang"] == "en" and r["text"] for r in rows)


def test_cli_augment_pos_needs_a_pipeline_per_language(tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"text": "Gut", "lang": "de"}) + "\n")
    r = CliRunner().invoke(app, ["augment", str(inp), str(tmp_path / "o.jsonl"), "--no-progress"])
    assert r.exit_code == 1
    assert "in.jsonl:1: language 'de' has no POS pipeline" in r.output
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize(
    "content,message",
    [
        ('{"text": "ok", "lang": "en"}\n{"text": 3}\n', "in.jsonl:2: field 'text' must be a string, got int"),
        ('{"text": "ok"\n', "in.jsonl:1: invalid JSON"),
        (b'{"text": "\xff"}\n', "in.jsonl:1: not valid UTF-8"),
    ],
)
def test_cli_augment_bad_input(tmp_path, content, message):
    inp = tmp_path / "in.jsonl"
    inp.write_bytes(content if isinstance(content, bytes) else content.encode())
    r = CliRunner().invoke(app, ["augment", str(inp), str(tmp_path / "o.jsonl"), "--lang", "en", "--no-progress", "--config", str(_p0(tmp_path))])
    assert r.exit_code == 1
    assert message in r.output


def _p0(tmp_path):
    cfg = tmp_path / "p0.cfg"
    cfg.write_text('[augment]\n@augmenters = "spacy-distill.PosAugmenter.v1"\np_pos = 0.0\n')
    return cfg


def test_cli_missing_input(tmp_path):
    r = CliRunner().invoke(app, ["augment", str(tmp_path / "nope.jsonl"), str(tmp_path / "o.jsonl"), "--lang", "en", "--config", str(_p0(tmp_path))])
    assert r.exit_code == 1 and "no such file" in r.output
