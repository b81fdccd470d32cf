"""Make the closed-vocabulary CLIP tokenizer that mdship's random-init presets ship with.

    python tools/make_tokenizer.py                       # tools/data/preset-words.txt -> mdship/data/preset-tokenizer
    python tools/make_tokenizer.py --words W.txt --out DIR [--max-length 77]

Trains `tokenizers`' BpeTrainer with CLIP's normalizer, pre-tokenizer and "</w>" suffix until every word of the
list is one token (mdship.tokenizer.train_clip_tokenizer), and writes CLIP's four files. Runs make equivalent
tokenizers (the same whole-word tokens; tests/test_tokenizer.py checks the shipped one against a new run), not
identical bytes: tokenizers' BPE trainer breaks count ties in hash-map order (huggingface/tokenizers#1794). So a
new run changes the presets' vocabulary ids, hence their random weights and hashes (mdship.checkpoint.preset_hash
includes the tokenizer files): regenerate only on purpose.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mdship.tokenizer import DEFAULT_MAX_LENGTH, PRESET_TOKENIZER, train_clip_tokenizer  # noqa: E402

WORDS = ROOT / "tools" / "data" / "preset-words.txt"


def read_words(path: Path) -> list[str]:
    return [w.strip() for w in path.read_text(encoding="utf-8").splitlines() if w.strip()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--words", type=Path, default=WORDS, help="one word per line")
    parser.add_argument("--out", type=Path, default=PRESET_TOKENIZER, help="tokenizer directory to write")
    parser.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH, help="model_max_length")
    args = parser.parse_args(argv)
    words = read_words(args.words)
    out = train_clip_tokenizer(words, args.out, args.max_length)
    print(f"wrote {out} ({len(words)} words)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
