"""Parity of the C++ CLIP tokenizer (runner/, `mdship-tokenize`) with transformers' CLIPTokenizer.

The C++ is built once per session with CMake into artifacts/runner-build. The reference is the
tokenizer returned by mdship.tokenizer.load_tokenizer (transformers.CLIPTokenizer, backed by Rust
`tokenizers`). Known, documented divergence (see runner/src/clip_tokenizer.h and
tools/gen_unicode_tables.py): code points unassigned in the Unicode version of Python's
unicodedata (14.0 for Python 3.11) -- the reference knows them from newer Unicode data -- so the
code-point sweeps allow mismatches on those code points only, and report how many there are.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import unicodedata
from pathlib import Path

import pytest

from mdship.tokenizer import load_tokenizer, tokenize, train_clip_tokenizer

DEFAULT_WORDS = [w for w in (Path(__file__).resolve().parents[2] / "tools/data/preset-words.txt")
                 .read_text(encoding="utf-8").splitlines() if w]

REPO = Path(__file__).resolve().parents[2]
BUILD_DIR = REPO / "artifacts" / "runner-build"
MAX_LEN = 77

EXTRA_WORDS = [
    "café", "naïve", "résumé", "façade", "crème", "brûlée", "straße", "über", "mañana", "jalapeño",
    "москва", "кот", "собака", "красный", "東京", "猫", "犬", "夜景", "さくら", "ねこ", "서울",
    "ΟΔΟΣ", "αθήνα", "日本語", "😀", "🐱", "❤️", "...", "!!", "t-shirt", "rock'n'roll", "don't",
    "mdship", "mobilediffusion", "executorch",
]


# ----------------------------------------------------------------------------------------------
# fixtures
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def tokenize_bin() -> Path:
    cmake = shutil.which("cmake")
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if not cmake or not cxx:
        pytest.skip(f"cannot build runner/: cmake={cmake!r}, C++ compiler={cxx!r} (install cmake and g++)")
    configure = [
        cmake, "-S", str(REPO / "runner"), "-B", str(BUILD_DIR),
        "-DCMAKE_BUILD_TYPE=Release", "-DMDSHIP_WARNINGS_AS_ERRORS=OFF",
    ]
    build = [cmake, "--build", str(BUILD_DIR), "--target", "mdship-tokenize", "-j2"]
    for cmd in (configure, build):
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    exe = BUILD_DIR / "mdship-tokenize"
    assert exe.is_file(), exe
    return exe


@pytest.fixture(scope="session")
def tok_dir(tmp_path_factory) -> Path:
    return train_clip_tokenizer(list(DEFAULT_WORDS) + EXTRA_WORDS, tmp_path_factory.mktemp("clip_tok"))


@pytest.fixture(scope="session")
def ref(tok_dir):
    return load_tokenizer(tok_dir)


def run_cpp(exe: Path, directory: Path, prompts: list[str] | list[bytes], *args: str) -> list[list[int]]:
    """Run mdship-tokenize with NUL-separated prompts; return one id list per prompt."""
    chunks = [p if isinstance(p, bytes) else p.encode("utf-8") for p in prompts]
    data = b"".join(c + b"\0" for c in chunks)
    proc = subprocess.run([str(exe), "--null", *args, str(directory)], input=data, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    lines = proc.stdout.decode().splitlines()
    assert len(lines) == len(prompts), (len(lines), len(prompts))
    return [[int(x) for x in line.split()] for line in lines]


def ref_unpadded(ref, prompts: list[str]) -> list[list[int]]:
    """bos + ids + eos without truncation, straight from the reference backend (fast, batched)."""
    from tokenizers import Tokenizer

    # A private copy: transformers leaves padding/truncation settings on the shared backend.
    backend = Tokenizer.from_str(ref.backend_tokenizer.to_str())
    backend.no_padding()
    backend.no_truncation()
    out: list[list[int]] = []
    for i in range(0, len(prompts), 20000):
        out.extend(e.ids for e in backend.encode_batch(prompts[i : i + 20000]))
    return out


def first_mismatches(prompts, got, want, n=5):
    return [(p, g, w) for p, g, w in zip(prompts, got, want) if g != w][:n]


# ----------------------------------------------------------------------------------------------
# prompts
# ----------------------------------------------------------------------------------------------
CAPTIONS = [
    "a photo of a cat",
    "A red cube on top of a blue sphere",
    "a small green triangle to the left of a large yellow circle",
    "an astronaut riding a horse on the moon, digital art",
    "a bowl of fruit on a wooden table, still life, oil painting",
    "two dogs playing in the snow at sunset",
    "a futuristic city skyline at night with neon lights, cyberpunk style",
    "close-up portrait of an elderly man with a white beard, 85mm, bokeh",
    "a watercolor painting of a lighthouse on a rocky cliff",
    "three purple flowers in a glass vase next to a window",
    "an aerial view of a river winding through a green valley",
    "a cozy cabin in the woods covered in snow, warm light in the windows",
    "a teddy bear wearing a red scarf sitting on a bench in the park",
    "a bicycle leaning against a brick wall",
    "a plate of spaghetti with tomato sauce and basil",
    "a steaming cup of coffee on a saucer, morning sunlight",
    "a black and white photograph of a busy street in the 1950s",
    "a pixel art castle with a dragon flying over it",
    "an isometric 3d render of a tiny island with palm trees",
    "the eiffel tower at dawn",
    "a golden retriever puppy chasing a butterfly",
    "a fox in a forest, studio ghibli style",
    "a vintage car parked in front of a diner",
    "a giant octopus attacking a pirate ship in a stormy sea",
    "a mountain lake reflecting snowcapped peaks",
    "a child flying a kite on the beach",
    "a bowl of ramen with chopsticks",
    "a hot air balloon over a desert canyon",
    "an owl perched on a branch under the full moon",
    "a robot reading a book in a library",
    "minimalist logo of a rocket, flat vector, white background",
    "a field of sunflowers under a blue sky with white clouds",
    "a smiling woman wearing sunglasses and a straw hat",
    "a blue square below a red square",
    "one red ball, two blue balls and three green balls",
    "a zebra-striped t-shirt hanging on a clothesline",
    "an old man's hands holding a pocket watch",
    "rain drops on a window, city lights bokeh in the background",
    "a bird's eye view of a soccer stadium",
    "a cat sleeping on a laptop keyboard",
]

EDGE = [
    "",
    " ",
    "   \t  \n ",
    "a",
    "A",
    "I",
    "HELLO WORLD",
    "Hello, World!",
    "hello,world",
    "MiXeD CaSe WoRdS",
    "camelCaseWords and snake_case_words",
    "it's", "It's", "IT'S", "don't", "DON'T", "we're", "they've", "I'm", "you'll", "she'd",
    "'s 't 're 've 'm 'll 'd", "''s", "'ss", "rock'n'roll", "o'clock", "’s curly apostrophe’s",
    "the dog's bone", "dogs' bones", "y'all'd've",
    "...", "!!!", "?!?", "a...b", "(parentheses)", "[brackets] {braces}", "<angle> brackets",
    "quotes \"double\" and 'single'", "#hashtag @mention", "email@example.com", "https://example.com/a?b=c&d=e",
    "C:\\path\\to\\file.txt", "50% off!", "$100 & €20 & £5 & ¥1000", "a+b=c", "x^2 + y^2 = z^2",
    "semi;colon:colon", "dash-dash--dash---", "under_score", "tilde~back`tick", "pipe|pipe", "*stars*",
    "0", "7", "42", "1234567890", "3.14159", "1,000,000", "4k 8k 1080p", "2024-01-31", "12:30pm", "v1.2.3",
    "a1b2c3", "version2", "3d", "R2-D2 and C-3PO",
    "tab\tseparated\twords", "new\nline", "carriage\r\nreturn", "  leading and trailing spaces  ",
    "multiple     spaces      between", "\t\t\ttabs first", "vertical\x0btab\x0cform feed",
    "nbsp\u00a0between", "em\u2003space", "ideographic\u3000space", "zero\u200bwidth space", "line\u2028separator",
    "next\x85line", "control\x01\x02\x1fchars", "del\x7fchar", "bell\x07",
    "café", "CAFÉ", "cafe\u0301", "naïve résumé", "Ångström", "A\u030angstrom", "\u212bngstrom",
    "crème brûlée", "São Paulo", "Zürich", "straße STRASSE", "ẞ", "İstanbul", "ıi", "ΟΔΟΣ οδος",
    "ΣΊΣΥΦΟΣ", "Москва — столица России", "кот и собака", "ПРИВЕТ мир", "Ελληνικά",
    "東京の夜景", "猫と犬", "日本語のテキスト", "中文字符测试", "한국어 텍스트", "서울", "ひらがな カタカナ",
    "ｆｕｌｌｗｉｄｔｈ　ｔｅｘｔ", "ﬁ ligature ﬂ", "Ⅻ roman numeral ½ ¼ ² ³", "١٢٣ arabic digits ٤٥٦",
    "मराठी हिंदी", "ภาษาไทย", "עברית", "العربية", "Tiếng Việt có dấu", "ǅ ǈ ǋ titlecase",
    "😀", "😀😀😀", "a 🐱 and a 🐶", "❤️ love", "👍🏽 thumbs", "👨‍👩‍👧 family", "🇯🇵 flag", "emoji🙂inside",
    "★ ☆ ♥ ♦ ♣ ♠", "→ ← ↑ ↓", "©®™", "°C °F", "µm", "∑ ∫ √ ∞", "…", "–—", "«guillemets»", "„German quotes“",
    "<|startoftext|>", "<|endoftext|>", "<|startoftext|>a photo<|endoftext|>", "a<|endoftext|>b",
    "<|STARTOFTEXT|>", "<|EndOfText|>x", "!<|startoftext|>>", "<|endoftext", "<|", "|>", "<||>",
    "<|startoftext|><|startoftext|>", "x <|endoftext|> y <|startoftext|> z",
    "\ufeffbom at start", "\ufffd replacement", "\U0001d400 math bold A", "\U00010400 deseret",
    "mdship mobilediffusion executorch",
]

LONG = [
    " ".join(["a red cat"] * 40),
    ", ".join(f"detail {i}" for i in range(60)),
    "word " * 74,
    "word " * 75,
    "word " * 76,
    "w" * 500,
    "supercalifragilisticexpialidocious " * 10,
    "!" * 300,
    "1 2 3 4 5 6 7 8 9 0 " * 12,
    "猫" * 100,
    "😀" * 80,
    "a highly detailed, intricate, ultra realistic, 8k, award winning photograph of "
    "a majestic lion resting on a rock at sunset, golden hour lighting, shallow depth of field, "
    "bokeh, cinematic composition, national geographic, trending on artstation, masterpiece, "
    "sharp focus, volumetric lighting, dramatic sky, warm colors, soft shadows, 85mm lens, f/1.8",
]


def random_prompts(n: int, seed: int = 1234) -> list[str]:
    rng = random.Random(seed)
    words = list(DEFAULT_WORDS) + EXTRA_WORDS + ["unknownword", "xyzzy", "qwerty", "ГРОМ", "Ñandú"]
    seps = [" ", " ", " ", "  ", ", ", ". ", "! ", "\t", "\n", " - ", "; ", "'s ", "...", "", "!? "]
    out = []
    for _ in range(n):
        k = rng.randint(1, 30)
        parts = []
        for _ in range(k):
            w = rng.choice(words)
            r = rng.random()
            if r < 0.15:
                w = w.upper()
            elif r < 0.3:
                w = w.capitalize()
            elif r < 0.35:
                w = w + str(rng.randint(0, 999))
            parts.append(w + rng.choice(seps))
        out.append("".join(parts))
    return out


def all_prompts() -> list[str]:
    return CAPTIONS + EDGE + LONG + random_prompts(300)


# ----------------------------------------------------------------------------------------------
# tests
# ----------------------------------------------------------------------------------------------
def test_prompt_set_is_broad():
    prompts = all_prompts()
    assert len(prompts) >= 200
    assert any("\n" in p for p in prompts) and any("\t" in p for p in prompts)


def test_parity_padded_like_mdship_tokenize(tokenize_bin, tok_dir, ref):
    """Default CLI output == mdship.tokenizer.tokenize(): [bos ids eos pad...] truncated to 77."""
    prompts = all_prompts()
    want = tokenize(ref, prompts, MAX_LEN).tolist()
    got = run_cpp(tokenize_bin, tok_dir, prompts)
    assert all(len(g) == MAX_LEN for g in got)
    bad = first_mismatches(prompts, got, want)
    n_bad = sum(g != w for g, w in zip(got, want))
    print(f"padded parity: {len(prompts) - n_bad}/{len(prompts)} prompts identical")
    assert not bad, bad
    # Long prompts really were truncated, keeping eos last.
    long_rows = [w for p, w in zip(prompts, want) if p in LONG]
    assert all(r[-1] == ref.eos_token_id for r in long_rows)


def test_parity_unpadded_untruncated(tokenize_bin, tok_dir, ref):
    prompts = all_prompts()
    want = ref_unpadded(ref, prompts)
    got = run_cpp(tokenize_bin, tok_dir, prompts, "--no-padding", "--max-length", "0")
    assert max(len(w) for w in want) > MAX_LEN  # over-long prompts are in the set
    bad = first_mismatches(prompts, got, want)
    assert not bad, bad
    # and with truncation only
    want77 = [ref(p, truncation=True, max_length=MAX_LEN)["input_ids"] for p in prompts]
    got77 = run_cpp(tokenize_bin, tok_dir, prompts, "--no-padding")
    assert got77 == want77


def test_line_mode_and_other_max_length(tokenize_bin, tok_dir, ref):
    prompts = [p for p in CAPTIONS + EDGE if "\n" not in p and "\r" not in p and "\x85" not in p]
    data = "\n".join(prompts) + "\n"
    proc = subprocess.run([str(tokenize_bin), "--max-length", "16", str(tok_dir)], input=data.encode(), capture_output=True)
    assert proc.returncode == 0, proc.stderr
    got = [[int(x) for x in line.split()] for line in proc.stdout.decode().splitlines()]
    assert got == tokenize(ref, prompts, 16).tolist()
    # a last line without a newline still counts; an empty input gives no output
    proc = subprocess.run([str(tokenize_bin), str(tok_dir)], input=b"a cat\na dog", capture_output=True)
    assert len(proc.stdout.decode().splitlines()) == 2
    proc = subprocess.run([str(tokenize_bin), str(tok_dir)], input=b"", capture_output=True)
    assert proc.returncode == 0 and proc.stdout == b""


def test_words_are_single_tokens_in_cpp(tokenize_bin, tok_dir, ref):
    words = [w for w in DEFAULT_WORDS if w.isalpha()][:800]
    got = run_cpp(tokenize_bin, tok_dir, words, "--no-padding", "--max-length", "0")
    assert all(len(g) == 3 for g in got), [w for w, g in zip(words, got) if len(g) != 3][:10]
    assert got == ref_unpadded(ref, words)


def test_invalid_utf8_is_replaced_like_python(tokenize_bin, tok_dir, ref):
    raw = [
        b"caf\xe9", b"\xff\xfe", b"a\x80b", b"\xc3", b"\xc3(", b"\xe2\x82", b"\xe2\x82(", b"\xed\xa0\x80",
        b"\xf0\x9f\x98", b"\xf0\x9f\x98\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf", b"\xe0\x80\xaf", b"ok\xf8\x88\x80\x80\x80",
        b"\xf0\x80\x80\x80", b"\xef\xbf\xbd", b"mixed \xe6\x97\xa5\xe6\x9c valid",
    ]
    got = run_cpp(tokenize_bin, tok_dir, raw, "--no-padding", "--max-length", "0")
    want = ref_unpadded(ref, [r.decode("utf-8", "replace") for r in raw])
    assert got == want


def test_json_escapes_crlf_and_no_optional_files(tokenize_bin, tok_dir, ref, tmp_path):
    """vocab.json written with \\uXXXX escapes, merges.txt with CRLF, no config files: same ids."""
    d = tmp_path / "escaped"
    d.mkdir()
    vocab = json.loads((tok_dir / "vocab.json").read_text(encoding="utf-8"))
    (d / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=True, indent=1), encoding="ascii")
    merges = (tok_dir / "merges.txt").read_text(encoding="utf-8").splitlines()
    (d / "merges.txt").write_bytes(("\r\n".join(merges) + "\r\n").encode("utf-8"))
    prompts = CAPTIONS + EDGE
    got = run_cpp(tokenize_bin, d, prompts, "--max-length", "77")
    assert got == tokenize(ref, prompts, MAX_LEN).tolist()


def test_normalized_added_tokens_like_hub_configs(tokenize_bin, tok_dir, tmp_path):
    """OpenAI's hub configs mark the special tokens normalized=true: matched after lowercasing."""
    d = tmp_path / "normalized"
    shutil.copytree(tok_dir, d)
    cfg = json.loads((d / "tokenizer_config.json").read_text(encoding="utf-8"))
    for entry in cfg["added_tokens_decoder"].values():
        entry["normalized"] = True
    (d / "tokenizer_config.json").write_text(json.dumps(cfg), encoding="utf-8")
    (d / "special_tokens_map.json").unlink()
    ref2 = load_tokenizer(d)
    assert all(t.normalized for t in ref2.added_tokens_decoder.values())
    prompts = [p for p in EDGE if "<|" in p or "|>" in p] + ["A <|ENDOFTEXT|> B", "<|StartOfText|>", "x<|endoftext|>"]
    got = run_cpp(tokenize_bin, d, prompts, "--no-padding", "--max-length", "0")
    assert got == ref_unpadded(ref2, prompts)


def _sweep(tokenize_bin, tok_dir, ref, cps: list[int]) -> tuple[int, list[int]]:
    def probe(c: int) -> str:
        ch = chr(c)
        return f"A{ch}Z {ch}5 q{ch}{ch}"

    prompts = [probe(c) for c in cps]
    want = ref_unpadded(ref, prompts)
    got = run_cpp(tokenize_bin, tok_dir, prompts, "--no-padding", "--max-length", "0")
    return len(cps), [c for c, g, w in zip(cps, got, want) if g != w]


def _sweep_cps(astral_stride: int) -> list[int]:
    bmp = [c for c in range(1, 0x10000) if not 0xD800 <= c <= 0xDFFF]
    return bmp + list(range(0x10000, 0x110000, astral_stride))


def _assert_only_unassigned(n: int, bad: list[int], label: str) -> None:
    assigned_bad = [hex(c) for c in bad if unicodedata.category(chr(c)) != "Cn"]
    print(
        f"{label}: {n - len(bad)}/{n} code points identical; {len(bad)} differ, all unassigned in "
        f"Unicode {unicodedata.unidata_version} (assigned later, known to the reference)"
    )
    assert not assigned_bad, assigned_bad[:20]


def test_code_point_sweep_bmp_and_sampled_astral(tokenize_bin, tok_dir, ref):
    """Every BMP code point (and every 31st astral one) inside words, alone, next to digits."""
    n, bad = _sweep(tokenize_bin, tok_dir, ref, _sweep_cps(31))
    _assert_only_unassigned(n, bad, "code-point sweep (BMP + 1/31 astral)")


@pytest.mark.slow
def test_code_point_sweep_all(tokenize_bin, tok_dir, ref, request):
    if "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("full 1.1M code-point sweep (~1 min): run with -m slow")
    n, bad = _sweep(tokenize_bin, tok_dir, ref, _sweep_cps(1))
    _assert_only_unassigned(n, bad, "full code-point sweep")


def test_nfc_combining_sequences(tokenize_bin, tok_dir, ref):
    """NFC: canonical reordering, composition, blocking, singletons, exclusions, Hangul."""
    marks = [chr(c) for c in range(0x300, 0x110000) if unicodedata.combining(chr(c))]
    decs = [
        chr(c)
        for c in range(0xC0, 0x110000)
        if unicodedata.decomposition(chr(c)) and not unicodedata.decomposition(chr(c)).startswith("<")
    ]
    prompts = []
    for m in marks:  # every combining mark against marks of lower / higher class
        prompts += ["a" + m + "\u0301", "e\u0316" + m, "x " + m + "\u0334"]
    for ch in decs:  # every canonical decomposition, precomposed and decomposed
        d = unicodedata.normalize("NFD", ch)
        prompts += [ch, "Q" + d + "\u0316"]
    rng = random.Random(7)
    bases = [chr(c) for c in range(0x41, 0x7B)] + decs[:400] + [" ", "!", "\u1100", "\uac00"]
    jamo = [chr(c) for c in [*range(0x1100, 0x1113), *range(0x1161, 0x1176), *range(0x11A8, 0x11C3)]]
    for _ in range(3000):
        prompts.append("".join(rng.choice(bases) + "".join(rng.choice(marks) for _ in range(rng.randint(0, 4))) for _ in range(rng.randint(1, 4))))
        prompts.append("".join(rng.choice(jamo + bases[:3]) for _ in range(rng.randint(1, 8))))
    want = ref_unpadded(ref, prompts)
    got = run_cpp(tokenize_bin, tok_dir, prompts, "--no-padding", "--max-length", "0")
    bad = first_mismatches([p.encode("unicode_escape") for p in prompts], got, want)
    print(f"NFC sequences: {len(prompts)} prompts, {sum(g != w for g, w in zip(got, want))} differ")
    assert not bad, bad


def test_cli_errors(tokenize_bin, tok_dir, tmp_path):
    proc = subprocess.run([str(tokenize_bin), str(tmp_path / "nope")], input=b"x\n", capture_output=True)
    assert proc.returncode == 2
    err = proc.stderr.decode()
    assert "vocab.json" in err and "nope" in err and err.count("\n") == 1

    d = tmp_path / "no_merges"
    d.mkdir()
    shutil.copy(tok_dir / "vocab.json", d / "vocab.json")
    proc = subprocess.run([str(tokenize_bin), str(d)], input=b"x\n", capture_output=True)
    assert proc.returncode == 2 and "merges.txt" in proc.stderr.decode()

    (d / "merges.txt").write_text("#version: 0.2\na b c\n", encoding="utf-8")
    proc = subprocess.run([str(tokenize_bin), str(d)], input=b"x\n", capture_output=True)
    assert proc.returncode == 2 and "line 2" in proc.stderr.decode()

    (d / "merges.txt").write_text("#version: 0.2\nzz qq\n", encoding="utf-8")
    proc = subprocess.run([str(tokenize_bin), str(d)], input=b"x\n", capture_output=True)
    assert proc.returncode == 2 and "not in vocab.json" in proc.stderr.decode()

    (d / "vocab.json").write_text('{"a": 0,', encoding="utf-8")
    proc = subprocess.run([str(tokenize_bin), str(d)], input=b"x\n", capture_output=True)
    assert proc.returncode == 2 and "invalid JSON" in proc.stderr.decode()

    proc = subprocess.run([str(tokenize_bin), "--max-length", "1", str(tok_dir)], input=b"x\n", capture_output=True)
    assert proc.returncode == 2

    proc = subprocess.run([str(tokenize_bin), "--help"], capture_output=True)
    assert proc.returncode == 0 and b"usage" in proc.stdout
