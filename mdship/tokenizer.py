"""CLIP-format BPE tokenizers: train, save, load and apply them.

A MobileDiffusion checkpoint carries a CLIP tokenizer in OpenAI's two-file format (vocab.json, merges.txt with the
`#version: 0.2` header, tokenizer_config.json, special_tokens_map.json): `transformers.CLIPTokenizer` loads it
offline, and so does the C++ `ClipTokenizer` in runner/src/clip_tokenizer.cpp.

Reference behaviour. With the pinned transformers (5.x) `CLIPTokenizer` is backed by the Rust `tokenizers`
library (there is no slow Python CLIP tokenizer any more, and ftfy plays no part):

    added-token split (special tokens, matched on the raw text)
    -> NFC -> Replace(\\s+ -> " ") -> per-character full lowercase
    -> Split(<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+)
    -> ByteLevel (GPT-2 regex, bytes_to_unicode) -> BPE with "</w>" end-of-word suffix
    -> <|startoftext|> ids <|endoftext|> (truncated to max_length keeping the eos) -> pad.

The C++ port mirrors exactly this pipeline; tests/runner/test_tokenizer_parity.py checks it.

No tokenizer can be downloaded where mdship runs, so small checkpoints get a closed-vocabulary tokenizer trained
here by `train_clip_tokenizer`: the `tokenizers` library's BpeTrainer with CLIP's normalizer, pre-tokenizer and
end-of-word suffix, run until every word of the corpus is one token. The random-init presets ship one
(mdship/data/preset-tokenizer, made by tools/make_tokenizer.py from tools/data/preset-words.txt).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mdship.errors import CheckpointError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import CLIPTokenizer

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = EOS_TOKEN
UNK_TOKEN = EOS_TOKEN
END_OF_WORD = "</w>"
DEFAULT_MAX_LENGTH = 77
MERGES_HEADER = "#version: 0.2"
REQUIRED_FILES = ("vocab.json", "merges.txt")
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")
#: the tokenizer of the random-init presets (a closed vocabulary of ~2,200 caption words)
PRESET_TOKENIZER = Path(__file__).parent / "data" / "preset-tokenizer"


def _clip_pipeline():
    """CLIP's normalizer and pre-tokenizer, from the installed transformers.CLIPTokenizer."""
    from transformers import CLIPTokenizer

    backend = CLIPTokenizer().backend_tokenizer
    return backend.normalizer, backend.pre_tokenizer


def train_clip_tokenizer(words: Iterable[str], directory: str | Path,
                         model_max_length: int = DEFAULT_MAX_LENGTH) -> Path:
    """Train a closed-vocabulary CLIP tokenizer in which every word of ``words`` is one token; write its files.

    `tokenizers`' BpeTrainer with CLIP's normalizer and pre-tokenizer, the byte-level alphabet and the "</w>"
    suffix, merging until no pair is left (every word is one symbol). The merges are not reproducible from run to
    run (tokenizers breaks count ties by ids it assigns in hash-map order, huggingface/tokenizers#1794): the
    tokenizers made are equivalent (the same whole-word tokens), not identical, which is why the presets ship one.
    The vocabulary is laid out as OpenAI's CLIP
    lays out its own: the 256 byte-level characters, the same with "</w>", one token per merge in merge order, then
    <|startoftext|> and <|endoftext|>. Text outside the corpus still tokenizes, into shorter pieces and at worst
    byte-level characters.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    if isinstance(words, str):
        raise TypeError("words must be an iterable of strings, not a single string")
    words = sorted({w for w in words})
    if not all(isinstance(w, str) for w in words):
        raise TypeError("words must be strings")
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokenizer = Tokenizer(models.BPE(end_of_word_suffix=END_OF_WORD))
    tokenizer.normalizer, tokenizer.pre_tokenizer = _clip_pipeline()
    trainer = trainers.BpeTrainer(vocab_size=10_000_000, min_frequency=1, show_progress=False,
                                  initial_alphabet=alphabet, end_of_word_suffix=END_OF_WORD)
    tokenizer.train_from_iterator(words, trainer)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
              for m in json.loads(tokenizer.to_str())["model"]["merges"]]
    tokens = alphabet + [c + END_OF_WORD for c in alphabet]
    seen = set(tokens)
    for a, b in merges:
        if a + b not in seen:
            seen.add(a + b)
            tokens.append(a + b)
    tokens += [BOS_TOKEN, EOS_TOKEN]
    return write_clip_files(directory, {t: i for i, t in enumerate(tokens)}, merges, model_max_length)


def _added_token_entry(content: str) -> dict:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
            "special": True}


def write_clip_files(directory: str | Path, vocab: dict[str, int], merges: Sequence[tuple[str, str]],
                     model_max_length: int = DEFAULT_MAX_LENGTH) -> Path:
    """Write a CLIP tokenizer's four files into ``directory`` (created if needed): the one writer of the format.

    bos "<|startoftext|>"; eos, unk and pad "<|endoftext|>".
    """
    if isinstance(model_max_length, bool) or not isinstance(model_max_length, int) or model_max_length < 2:
        raise ValueError(f"model_max_length must be an integer >= 2 (room for bos and eos), got {model_max_length!r}")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False) + "\n", encoding="utf-8")
    merges_text = "\n".join([MERGES_HEADER] + [f"{a} {b}" for a, b in merges]) + "\n"
    (out / "merges.txt").write_text(merges_text, encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": model_max_length,
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "unk_token": UNK_TOKEN,
        "pad_token": PAD_TOKEN,
        "do_lower_case": True,
        "errors": "replace",
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": {str(vocab[t]): _added_token_entry(t) for t in (BOS_TOKEN, EOS_TOKEN)},
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                                               encoding="utf-8")
    special = {}
    for key, content in (("bos_token", BOS_TOKEN), ("eos_token", EOS_TOKEN), ("pad_token", PAD_TOKEN),
                         ("unk_token", UNK_TOKEN)):
        entry = _added_token_entry(content)
        del entry["special"]
        special[key] = entry
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2, ensure_ascii=False) + "\n",
                                                 encoding="utf-8")
    return out


def save_tokenizer(tokenizer: CLIPTokenizer, directory: str | Path) -> Path:
    """Write a loaded CLIPTokenizer as CLIP's own files (transformers 5 would save only tokenizer.json; the C++
    runner and CLIP checkpoints use the two-file format)."""
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return write_clip_files(directory, model["vocab"], merges, int(tokenizer.model_max_length))


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _check_files(d: Path) -> None:
    """Validate vocab.json / merges.txt the way the loaders need them; raise CheckpointError."""
    vocab_path = d / "vocab.json"
    try:
        vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"tokenizer file {vocab_path} is not valid JSON ({_one_line(e)}); regenerate the tokenizer") from e
    if not isinstance(vocab, dict) or not vocab:
        raise CheckpointError(f"tokenizer file {vocab_path} must be a non-empty JSON object mapping token -> id")
    for tok, idx in vocab.items():
        if isinstance(idx, bool) or not isinstance(idx, int) or idx < 0:
            raise CheckpointError(f"tokenizer file {vocab_path}: token {tok!r} has id {idx!r}, expected an integer >= 0")
    merges_path = d / "merges.txt"
    try:
        lines = merges_path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"tokenizer file {merges_path} cannot be read ({_one_line(e)})") from e
    for lineno, line in enumerate(lines, 1):
        if line.startswith("#version"):
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise CheckpointError(f"tokenizer file {merges_path} line {lineno}: expected two tokens separated by one space, got {line!r}")
        a, b = parts
        for tok in (a, b, a + b):
            if tok not in vocab:
                raise CheckpointError(f"tokenizer file {merges_path} line {lineno}: token {tok!r} is not in vocab.json")
    named = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN, "unk_token": UNK_TOKEN}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = d / name
        if not path.exists():
            continue
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise CheckpointError(f"tokenizer file {path} is not valid JSON ({_one_line(e)})") from e
        if not isinstance(config, dict):
            raise CheckpointError(f"tokenizer file {path} must be a JSON object")
        for key in named:
            value = config.get(key)
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str):
                named[key] = value
    # transformers would silently append a missing special token to the vocabulary; the C++
    # runner reads vocab.json only, so both must agree: the named tokens have to be in it.
    for key, content in named.items():
        if content not in vocab:
            raise CheckpointError(f"tokenizer directory {d}: {key} {content!r} is not in vocab.json")


def load_tokenizer(directory: str | Path) -> CLIPTokenizer:
    """Load a CLIP tokenizer directory offline; CheckpointError (one line) when it is unusable."""
    d = Path(directory)
    if not d.is_dir():
        raise CheckpointError(f"tokenizer directory {d} does not exist or is not a directory")
    for name in REQUIRED_FILES:
        if not (d / name).is_file():
            raise CheckpointError(
                f"tokenizer directory {d} is missing {name} (a CLIP tokenizer needs vocab.json and merges.txt; "
                "train one with mdship.tokenizer.train_clip_tokenizer)"
            )
    _check_files(d)
    from transformers import CLIPTokenizer

    try:
        tokenizer = CLIPTokenizer.from_pretrained(str(d), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - any loader failure is a broken tokenizer directory
        raise CheckpointError(f"cannot load the CLIP tokenizer in {d}: {_one_line(e)}") from e
    for attr in ("bos_token", "eos_token", "pad_token"):
        if getattr(tokenizer, attr) is None:
            raise CheckpointError(f"tokenizer directory {d}: the tokenizer has no {attr}")
    return tokenizer


def tokenize(tokenizer: CLIPTokenizer, prompts: Sequence[str] | str, max_length: int = DEFAULT_MAX_LENGTH) -> torch.Tensor:
    """Token ids [B, max_length] (int64): bos, ids, eos, padded with the pad token, truncated keeping eos."""
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    for p in prompts:
        if not isinstance(p, str):
            raise TypeError(f"prompts must be strings, got {type(p).__name__}: {p!r}")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an integer >= 2 (room for bos and eos), got {max_length!r}")
    import torch

    if not prompts:
        return torch.empty((0, max_length), dtype=torch.long)
    enc = tokenizer(prompts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    ids = enc["input_ids"].to(torch.long)
    assert ids.shape == (len(prompts), max_length), ids.shape
    return ids


def unknown_words(tokenizer: CLIPTokenizer, text: str) -> list[str]:
    """Words of ``text`` the tokenizer does not know: it spells them out, more than half of their tokens being
    single characters. A closed-vocabulary tokenizer (the embedded md-shapes model's, the presets') splits every
    unknown word this way; CLIP's own 49k vocabulary spells out almost nothing real. The model never saw such a
    word as a word, so a runner warns."""
    backend = tokenizer.backend_tokenizer
    normalized = backend.normalizer.normalize_str(text)
    unknown = []
    for piece, (start, end) in backend.pre_tokenizer.pre_tokenize_str(normalized):
        tokens = backend.model.tokenize(piece)
        letters = sum(len(t.value.removesuffix(END_OF_WORD)) <= 1 for t in tokens)
        if len(tokens) > 1 and 2 * letters > len(tokens):
            unknown.append(normalized[start:end])
    return unknown


def unknown_words_warning(tokenizer: CLIPTokenizer, text: str) -> str | None:
    """One line naming the prompt's unknown words (see `unknown_words`), or None."""
    words = unknown_words(tokenizer, text)
    if not words:
        return None
    shown = ", ".join(f"'{w}'" for w in dict.fromkeys(words))
    return (f"warning: the tokenizer does not know {shown}: spelled out letter by letter, so the model has not "
            f"learned what {'they mean' if len(set(words)) > 1 else 'it means'}")
