import pytest
import spacy

from .util import blank_xx


@pytest.mark.parametrize(
    "text,tokens",
    [
        ("质量很好，推荐！", ["质", "量", "很", "好", "，", "推", "荐", "！"]),
        ("この商品は良い。", ["こ", "の", "商", "品", "は", "良", "い", "。"]),
        ("Sony製のカメラ", ["Sony", "製", "の", "カ", "メ", "ラ"]),
        ("Das Produkt ist super!", ["Das", "Produkt", "ist", "super", "!"]),
        ("ＡＢＣ 5星", ["Ａ", "Ｂ", "Ｃ", "5", "星"]),
        ("", []),
    ],
)
def test_cjk_characters_are_tokens(text, tokens):
    doc = blank_xx()(text)
    assert [t.text for t in doc] == tokens
    assert doc.text == text


def test_other_scripts_match_the_stock_tokenizer():
    text = "Très bien ! Produit conforme, livraison rapide. Don't buy it... 10/10"
    assert [t.text for t in blank_xx()(text)] == [t.text for t in spacy.blank("xx")(text)]


def test_tokenizer_round_trips(tmp_path):
    nlp = blank_xx()
    nlp.to_disk(tmp_path / "nlp")
    nlp2 = spacy.load(tmp_path / "nlp")
    assert [t.text for t in nlp2("很好 ok")] == ["很", "好", "ok"]
    assert list(t.text for d in nlp2.tokenizer.pipe(["好"]) for t in d) == ["好"]
