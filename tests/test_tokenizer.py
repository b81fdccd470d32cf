"""mdship.tokenizer: trained CLIP vocabularies (tokenizers' BpeTrainer), the shipped preset tokenizer, save/load,
tokenize, loading errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mdship.errors import CheckpointError, UserError
from mdship.tokenizer import (
    BOS_TOKEN,
    EOS_TOKEN,
    PRESET_TOKENIZER,
    load_tokenizer,
    save_tokenizer,
    tokenize,
    train_clip_tokenizer,
)

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["cat", "cats", "at", "a", "the", "red", "Blue", "blue", "café", "москва", "t-shirt", "don't", "東京", "..."]
PRESET_WORDS = [w for w in (ROOT / "tools/data/preset-words.txt").read_text(encoding="utf-8").splitlines() if w]


@pytest.fixture(scope="module")
def default_dir() -> Path:
    return PRESET_TOKENIZER


@pytest.fixture(scope="module")
def default_tok(default_dir):
    return load_tokenizer(default_dir)


# ----------------------------------------------------------------------------------------------
# reference pipeline guard: what runner/src/clip_tokenizer.cpp mirrors
# ----------------------------------------------------------------------------------------------
def test_reference_pipeline_is_what_the_cpp_port_mirrors(default_tok):
    """If transformers changes CLIPTokenizer's pipeline, the C++ port must change with it."""
    backend = default_tok.backend_tokenizer
    assert default_tok.is_fast
    norm = repr(backend.normalizer)
    assert norm.startswith("Sequence(") and "NFC()" in norm and 'Regex("\\s+"), content=" "' in norm and "Lowercase()" in norm
    assert norm.index("NFC") < norm.index("Replace") < norm.index("Lowercase")
    pre = repr(backend.pre_tokenizer)
    assert (
        "<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+" in pre
    ), pre
    assert "behavior=Removed, invert=True" in pre
    assert "ByteLevel(add_prefix_space=False" in pre and "use_regex=True" in pre
    model = backend.model
    assert type(model).__name__ == "BPE"
    assert model.end_of_word_suffix == "</w>" and not model.fuse_unk and model.dropout is None
    assert model.unk_token == EOS_TOKEN


# ----------------------------------------------------------------------------------------------
# train_clip_tokenizer and the shipped preset tokenizer
# ----------------------------------------------------------------------------------------------
def test_vocab_layout(tmp_path):
    vocab = json.loads((train_clip_tokenizer(WORDS, tmp_path) / "vocab.json").read_text(encoding="utf-8"))
    merges = [tuple(line.split(" ")) for line in (tmp_path / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]]
    tokens = sorted(vocab, key=vocab.get)
    assert sorted(vocab.values()) == list(range(len(vocab)))
    assert len(tokens[:256]) == len(set(tokens[:256])) == 256  # the byte-level alphabet
    assert tokens[256:512] == [c + "</w>" for c in tokens[:256]]
    assert tokens[-2:] == [BOS_TOKEN, EOS_TOKEN]
    for a, b in merges:
        assert a in vocab and b in vocab and a + b in vocab
    assert len(set(merges)) == len(merges)
    for w in ("cat</w>", "cats</w>", "at</w>", "red</w>", "blue</w>", "the</w>"):
        assert w in vocab


def test_training_rejects_bad_input(tmp_path):
    with pytest.raises(TypeError):
        train_clip_tokenizer("cat", tmp_path / "c")
    with pytest.raises(TypeError):
        train_clip_tokenizer(["cat", 3], tmp_path / "c")


def test_the_tool_makes_an_equivalent_preset_tokenizer(tmp_path):
    """tools/make_tokenizer.py on the word list makes a tokenizer equivalent to the shipped one: the same whole-word
    tokens, the same special tokens and length. (Not the same bytes: tokenizers' BPE trainer breaks count ties by
    ids given in hash-map order, huggingface/tokenizers#1794, so intermediate merges vary from run to run.)"""
    out = tmp_path / "tok"
    subprocess.run([sys.executable, str(ROOT / "tools/make_tokenizer.py"), "--out", str(out)], check=True,
                   capture_output=True)
    made, shipped = load_tokenizer(out), load_tokenizer(PRESET_TOKENIZER)
    words = {t for t in made.get_vocab() if t.endswith("</w>")}
    assert words == {t for t in shipped.get_vocab() if t.endswith("</w>")}
    assert (made.bos_token, made.eos_token, made.model_max_length) == (shipped.bos_token, shipped.eos_token, 77)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        assert json.loads((out / name).read_text()).keys() == json.loads((PRESET_TOKENIZER / name).read_text()).keys()


def test_preset_words():
    assert 1800 <= len(PRESET_WORDS) <= 3000 and len(set(PRESET_WORDS)) == len(PRESET_WORDS)
    for w in ("red", "green", "blue", "circle", "square", "triangle", "left", "right", "above", "below", "cat", "dog"):
        assert w in PRESET_WORDS


def test_every_preset_word_piece_is_one_token(default_tok):
    backend = default_tok.backend_tokenizer
    bad = []
    for w in PRESET_WORDS:
        pieces = backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(w))
        ids = default_tok(w, add_special_tokens=False)["input_ids"]
        if len(ids) != len(pieces):
            bad.append(w)
    assert not bad, bad[:20]


def test_words_single_tokens(tmp_path):
    tok = load_tokenizer(train_clip_tokenizer(WORDS, tmp_path))
    for w in ("cat", "cats", "at", "a", "the", "red", "blue", "BLUE", "Café", "москва", "東京", "..."):
        ids = tok(w, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, (w, tok.convert_ids_to_tokens(ids))
    assert tok.convert_ids_to_tokens(tok("t-shirt", add_special_tokens=False)["input_ids"]) == ["t</w>", "-</w>", "shirt</w>"]
    assert tok.convert_ids_to_tokens(tok("don't", add_special_tokens=False)["input_ids"]) == ["don</w>", "'t</w>"]


def test_unknown_text_falls_back_and_round_trips(tmp_path):
    tok = load_tokenizer(train_clip_tokenizer(WORDS, tmp_path))
    text = "Zebras & Ünïcödé 😀 42 x"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert EOS_TOKEN not in tok.convert_ids_to_tokens(ids[1:-1])  # never unk: all bytes are in the vocab
    decoded = tok.decode(ids, skip_special_tokens=True)
    assert decoded.replace(" ", "") == "zebras&ünïcödé😀42x"


def test_save_tokenizer_round_trips(default_tok, tmp_path):
    again = load_tokenizer(save_tokenizer(default_tok, tmp_path))
    text = "a red cat on a blue sofa, zebras 42"
    assert again(text)["input_ids"] == default_tok(text)["input_ids"]
    vocab = json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))
    assert vocab == json.loads((PRESET_TOKENIZER / "vocab.json").read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------------------------
# save / load
# ----------------------------------------------------------------------------------------------
def test_saved_files(default_dir):
    names = {p.name for p in default_dir.iterdir()}
    assert {"vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"} <= names
    assert (default_dir / "merges.txt").read_text(encoding="utf-8").splitlines()[0] == "#version: 0.2"
    cfg = json.loads((default_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert cfg["model_max_length"] == 77 and cfg["pad_token"] == EOS_TOKEN and cfg["bos_token"] == BOS_TOKEN
    special = json.loads((default_dir / "special_tokens_map.json").read_text(encoding="utf-8"))
    assert special["unk_token"]["content"] == EOS_TOKEN


def test_loads_with_plain_transformers(default_dir, default_tok):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(default_dir), local_files_only=True)
    assert tok.bos_token == BOS_TOKEN and tok.eos_token == EOS_TOKEN
    assert tok.pad_token == EOS_TOKEN and tok.unk_token == EOS_TOKEN
    vocab = json.loads((default_dir / "vocab.json").read_text(encoding="utf-8"))
    assert tok.bos_token_id == vocab[BOS_TOKEN] == len(vocab) - 2
    assert tok.eos_token_id == tok.pad_token_id == vocab[EOS_TOKEN] == len(vocab) - 1
    assert tok.model_max_length == 77
    assert tok("a red cat")["input_ids"] == default_tok("a red cat")["input_ids"]


def test_round_trip(default_tok):
    text = "A Red Cat sitting on TOP of a blue box, next to 3 green balls!"
    ids = default_tok(text)["input_ids"]
    tokens = default_tok.convert_ids_to_tokens(ids)
    assert tokens[0] == BOS_TOKEN and tokens[-1] == EOS_TOKEN
    assert "red</w>" in tokens and "cat</w>" in tokens and "balls</w>" in tokens
    assert default_tok.decode(ids, skip_special_tokens=True) == "a red cat sitting on top of a blue box , next to 3 green balls !"


def test_save_rejects_bad_max_length(tmp_path):
    with pytest.raises(ValueError):
        train_clip_tokenizer(WORDS, tmp_path, model_max_length=1)


def test_save_custom_max_length(tmp_path):
    tok = load_tokenizer(train_clip_tokenizer(WORDS, tmp_path, model_max_length=32))
    assert tok.model_max_length == 32


# ----------------------------------------------------------------------------------------------
# tokenize
# ----------------------------------------------------------------------------------------------
def test_tokenize_shape_padding_truncation(default_tok):
    long = " ".join(["red cat"] * 100)
    ids = tokenize(default_tok, ["a red cat", "", long], 77)
    assert ids.dtype == torch.long and ids.shape == (3, 77)
    bos, eos = default_tok.bos_token_id, default_tok.eos_token_id
    assert ids[0, :5].tolist() == [bos] + default_tok("a red cat", add_special_tokens=False)["input_ids"] + [eos]
    assert (ids[0, 5:] == default_tok.pad_token_id).all()
    assert ids[1, 0] == bos and (ids[1, 1:] == eos).all()
    assert ids[2, 0] == bos and ids[2, -1] == eos and (ids[2, 1:-1] != eos).all()


def test_tokenize_other_lengths_and_inputs(default_tok):
    assert tokenize(default_tok, "a cat", 8).shape == (1, 8)
    assert tokenize(default_tok, [], 77).shape == (0, 77)
    with pytest.raises(ValueError):
        tokenize(default_tok, ["a"], 1)
    with pytest.raises(TypeError):
        tokenize(default_tok, ["a", None], 77)


# ----------------------------------------------------------------------------------------------
# loading errors: CheckpointError, one line, naming the directory and the file
# ----------------------------------------------------------------------------------------------
def _err(directory) -> str:
    with pytest.raises(CheckpointError) as ei:
        load_tokenizer(directory)
    msg = str(ei.value)
    assert "\n" not in msg
    assert isinstance(ei.value, UserError)
    return msg


def test_load_missing_directory(tmp_path):
    msg = _err(tmp_path / "nope")
    assert "nope" in msg


@pytest.mark.parametrize("missing", ["vocab.json", "merges.txt"])
def test_load_missing_file(default_dir, tmp_path, missing):
    d = tmp_path / "tok"
    shutil.copytree(default_dir, d)
    (d / missing).unlink()
    msg = _err(d)
    assert str(d) in msg and missing in msg


def test_load_invalid_files(default_dir, tmp_path):
    d = tmp_path / "tok"
    shutil.copytree(default_dir, d)
    good_vocab = (d / "vocab.json").read_text(encoding="utf-8")
    good_merges = (d / "merges.txt").read_text(encoding="utf-8")

    (d / "vocab.json").write_text('{"a": 0,', encoding="utf-8")
    assert "vocab.json" in _err(d) and "not valid JSON" in _err(d)
    (d / "vocab.json").write_text("[1, 2]", encoding="utf-8")
    assert "vocab.json" in _err(d)
    (d / "vocab.json").write_text('{"a": "zero"}', encoding="utf-8")
    assert "vocab.json" in _err(d)
    (d / "vocab.json").write_text(good_vocab, encoding="utf-8")

    (d / "merges.txt").write_text("#version: 0.2\na b c\n", encoding="utf-8")
    msg = _err(d)
    assert "merges.txt" in msg and "line 2" in msg
    (d / "merges.txt").write_text("#version: 0.2\nqqq zzz\n", encoding="utf-8")
    assert "not in vocab.json" in _err(d)
    (d / "merges.txt").write_text(good_merges, encoding="utf-8")

    (d / "tokenizer_config.json").write_text("{oops", encoding="utf-8")
    assert "tokenizer_config.json" in _err(d)
    (d / "tokenizer_config.json").unlink()
    (d / "special_tokens_map.json").unlink()
    assert load_tokenizer(d).eos_token == EOS_TOKEN  # the config files are optional


def test_load_vocab_without_special_tokens(tmp_path):
    d = train_clip_tokenizer(["cat"], tmp_path / "tok")
    vocab = json.loads((d / "vocab.json").read_text(encoding="utf-8"))
    del vocab[BOS_TOKEN]
    (d / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    msg = _err(d)
    assert str(d) in msg


def test_unknown_words_are_the_spelled_out_ones(default_tok):
    from mdship.tokenizer import unknown_words, unknown_words_warning

    shapes = load_tokenizer(ROOT / "mdship/builtin/shapes/tokenizer")
    assert unknown_words(shapes, "a photo of a cat: a large red circle") == ["photo", "of", "cat"]
    assert unknown_words(shapes, "a large red circle on a blue background, top left") == []
    assert unknown_words(default_tok, "a photo of a cat zxqv photorealistic") == ["zxqv"]
    assert unknown_words_warning(default_tok, "a red cat") is None
    assert unknown_words_warning(shapes, "a cat") == ("warning: the tokenizer does not know 'cat': spelled out "
                                                      "letter by letter, so the model has not learned what it means")
