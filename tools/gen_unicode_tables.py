#!/usr/bin/env python3
"""Generate runner/src/unicode_tables.inc for the C++ CLIP tokenizer from Python's unicodedata.

Usage:  python tools/gen_unicode_tables.py [--check] [--out runner/src/unicode_tables.inc]

The tables cover what the reference tokenizer (transformers CLIPTokenizer, backed by Rust
`tokenizers`) needs for its normalizer and pre-tokenizer:

  kWhiteSpace   White_Space property (regex \\s): the Replace(\\s+ -> " ") normalizer and the splits
  kLetter       general category L  = Lu Ll Lt Lm Lo   (regex \\p{L})
  kNumber       general category N  = Nd Nl No         (regex \\p{N})
  kLowerRuns    simple one-to-one lowercase mappings, as runs {first, last, delta, stride}
  kLowerSpecial one-to-many lowercase mappings (only U+0130 -> U+0069 U+0307)
  kCcc          canonical combining class != 0, as runs {first, last, ccc}
  kDecomp       canonical decompositions {cp, first, second (0: singleton), composes}
                (Hangul syllables are algorithmic and not listed); `composes` marks primary
                composites, i.e. the pairs NFC recomposes (composition exclusions, singletons
                and non-starter decompositions have composes = 0).

Reference compatibility (default; --no-reference-compat turns it off). The reference's NFC is
the Rust crate `unicode-normalization-alignments`, whose data is older than Python's: it ignores
the combining class of marks added in Unicode 10.0 and later, and their decompositions. The NFC
tables are therefore restricted to what the installed `tokenizers` NFC normalizer applies,
found by probing it (unicodedata stays the source of every value): a combining class is kept when
the reference reorders the mark as unicodedata says, a decomposition when the reference
normalizes the character and its decomposed form as unicodedata does.

The output depends on the Unicode version of the running Python and, with reference
compatibility, on the installed tokenizers version (both recorded in the file); --check exits 1
when the committed file differs from what this environment would generate.
"""

from __future__ import annotations

import argparse
import sys
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "runner" / "src" / "unicode_tables.inc"
MAX_CP = 0x110000

# The White_Space property (PropList.txt); unicodedata does not expose it, so it is listed here
# and cross-checked against str.isspace() (which also includes U+001C..U+001F, the bidi "B"/"S"
# separators that are not White_Space).
WHITE_SPACE = [
    (0x0009, 0x000D), (0x0020, 0x0020), (0x0085, 0x0085), (0x00A0, 0x00A0), (0x1680, 0x1680),
    (0x2000, 0x200A), (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F), (0x3000, 0x3000),
]


def ranges(pred) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    start = None
    for cp in range(MAX_CP + 1):
        hit = cp < MAX_CP and pred(cp)
        if hit and start is None:
            start = cp
        elif not hit and start is not None:
            out.append((start, cp - 1))
            start = None
    return out


def category_ranges(prefix: str) -> list[tuple[int, int]]:
    return ranges(lambda cp: unicodedata.category(chr(cp)).startswith(prefix))


def lower_tables() -> tuple[list[tuple[int, int, int, int]], list[tuple[int, list[int]]]]:
    """Per-character full lowercase (Rust char::to_lowercase == Python chr(c).lower())."""
    simple: list[tuple[int, int]] = []
    special: list[tuple[int, list[int]]] = []
    for cp in range(MAX_CP):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        low = chr(cp).lower()
        if low == chr(cp):
            continue
        if len(low) == 1:
            simple.append((cp, ord(low) - cp))
        else:
            special.append((cp, [ord(c) for c in low]))
    # Greedy runs: consecutive entries with the same delta and a constant stride (1 or 2).
    runs: list[tuple[int, int, int, int]] = []
    i = 0
    while i < len(simple):
        cp, delta = simple[i]
        best_j, best_stride = i, 1
        for stride in (1, 2):
            j = i
            while j + 1 < len(simple) and simple[j + 1][0] == simple[j][0] + stride and simple[j + 1][1] == delta:
                j += 1
            if j > best_j:
                best_j, best_stride = j, stride
        runs.append((cp, simple[best_j][0], delta, best_stride))
        i = best_j + 1
    return runs, special


def ccc_runs() -> list[tuple[int, int, int]]:
    out: list[tuple[int, int, int]] = []
    for cp in range(MAX_CP):
        c = unicodedata.combining(chr(cp))
        if not c:
            continue
        if out and out[-1][1] == cp - 1 and out[-1][2] == c:
            out[-1] = (out[-1][0], cp, c)
        else:
            out.append((cp, cp, c))
    return out


def decompositions() -> list[tuple[int, int, int, int]]:
    out: list[tuple[int, int, int, int]] = []
    for cp in range(MAX_CP):
        d = unicodedata.decomposition(chr(cp))
        if not d or d.startswith("<"):
            continue
        parts = [int(x, 16) for x in d.split()]
        assert 1 <= len(parts) <= 2, (hex(cp), d)
        first, second = parts[0], (parts[1] if len(parts) == 2 else 0)
        # A primary composite is a canonical pair decomposition that NFC leaves intact.
        composes = int(len(parts) == 2 and unicodedata.normalize("NFC", chr(cp)) == chr(cp))
        out.append((cp, first, second, composes))
    return out


def reference_nfc():
    """The NFC normalizer of the installed Rust `tokenizers` (the one CLIPTokenizer uses)."""
    import tokenizers
    from tokenizers import normalizers

    return normalizers.NFC().normalize_str, tokenizers.__version__


def restrict_to_reference(ccc: list[tuple[int, int, int]], decomp: list[tuple[int, int, int, int]], ref_nfc):
    """Drop combining classes and decompositions the reference NFC does not apply."""
    py_nfc = lambda s: unicodedata.normalize("NFC", s)  # noqa: E731

    def ccc_known(cp: int, c: int) -> bool:
        ch = chr(cp)
        # Marks that reorder relative to a mark of a different class after a base that composes
        # with nothing (space); a mark the reference does not know stays in place (class 0).
        probes = [" \u0301" + ch, " \u0334" + ch + "\u0301"] if c < 230 else [" " + ch + "\u0316", " " + ch + "\u0334"]
        return all(ref_nfc(p) == py_nfc(p) for p in probes)

    kept_ccc: list[tuple[int, int, int]] = []
    dropped_ccc: list[int] = []
    for first, last, c in ccc:
        for cp in range(first, last + 1):
            if ccc_known(cp, c):
                if kept_ccc and kept_ccc[-1][1] == cp - 1 and kept_ccc[-1][2] == c:
                    kept_ccc[-1] = (kept_ccc[-1][0], cp, c)
                else:
                    kept_ccc.append((cp, cp, c))
            else:
                dropped_ccc.append(cp)

    kept_decomp = []
    dropped_decomp: list[int] = []
    for entry in decomp:
        cp = entry[0]
        nfd = unicodedata.normalize("NFD", chr(cp))
        probes = [chr(cp), nfd, "x" + nfd, nfd + "\u0316"]
        if all(ref_nfc(p) == py_nfc(p) for p in probes):
            kept_decomp.append(entry)
        else:
            dropped_decomp.append(cp)
    return kept_ccc, kept_decomp, dropped_ccc, dropped_decomp


def compress_cps(cps: list[int]) -> str:
    out: list[list[int]] = []
    for cp in cps:
        if out and out[-1][1] == cp - 1:
            out[-1][1] = cp
        else:
            out.append([cp, cp])
    return " ".join(f"{a:04X}" if a == b else f"{a:04X}-{b:04X}" for a, b in out)


def wrap_comment(text: str, width: int = 96) -> list[str]:
    lines, cur = [], "//  "
    for word in text.split():
        if len(cur) + len(word) + 1 > width:
            lines.append(cur.rstrip())
            cur = "//  "
        cur += word + " "
    if cur.strip() != "//":
        lines.append(cur.rstrip())
    return lines


def fmt_rows(rows, per_line: int, fmt) -> str:
    items = [fmt(r) for r in rows]
    lines = []
    for i in range(0, len(items), per_line):
        lines.append("    " + ",".join(items[i : i + per_line]) + ",")
    return "\n".join(lines)


def generate(reference_compat: bool = True) -> str:
    derived_ws = ranges(lambda cp: chr(cp).isspace() and not 0x1C <= cp <= 0x1F)
    if derived_ws != WHITE_SPACE:
        raise SystemExit(f"White_Space list disagrees with str.isspace(): {derived_ws}")
    letters = category_ranges("L")
    numbers = category_ranges("N")
    lower_runs, lower_special = lower_tables()
    if len(lower_special) != 1 or lower_special[0][0] != 0x130:
        raise SystemExit(f"unexpected one-to-many lowercase mappings: {lower_special}")
    ccc = ccc_runs()
    decomp = decompositions()
    compat = ["// NFC data: unrestricted (generated with --no-reference-compat)."]
    if reference_compat:
        ref_nfc, tok_version = reference_nfc()
        ccc, decomp, dropped_ccc, dropped_decomp = restrict_to_reference(ccc, decomp, ref_nfc)
        compat = [
            f"// NFC data restricted to what the NFC normalizer of tokenizers {tok_version} applies.",
            f"// Combining class treated as 0 ({len(dropped_ccc)} marks):",
            *wrap_comment(compress_cps(dropped_ccc)),
            f"// Decompositions left out ({len(dropped_decomp)}):",
            *wrap_comment(compress_cps(dropped_decomp)),
        ]
    h = lambda v: f"0x{v:X}"  # noqa: E731
    parts = [
        "// Generated by tools/gen_unicode_tables.py from Python's unicodedata. DO NOT EDIT.",
        f"// Unicode {unicodedata.unidata_version}; {len(letters)} letter ranges, {len(numbers)} number ranges,",
        f"// {len(lower_runs)} lowercase runs, {len(ccc)} combining-class runs, {len(decomp)} decompositions.",
        *compat,
        "// Included by clip_tokenizer.cpp inside namespace mdship::unicode::tables.",
        "",
        f'#define MDSHIP_UNICODE_VERSION "{unicodedata.unidata_version}"',
        "",
        "struct Range { char32_t first, last; };",
        "struct LowerRun { char32_t first, last; int32_t delta; uint8_t stride; };",
        "struct CccRun { char32_t first, last; uint8_t ccc; };",
        "struct Decomp { char32_t cp, first, second; uint8_t composes; };",
        "",
        "// White_Space (regex \\s)",
        "static const Range kWhiteSpace[] = {",
        fmt_rows(WHITE_SPACE, 8, lambda r: f"{{{h(r[0])},{h(r[1])}}}"),
        "};",
        "// General category L (regex \\p{L})",
        "static const Range kLetter[] = {",
        fmt_rows(letters, 8, lambda r: f"{{{h(r[0])},{h(r[1])}}}"),
        "};",
        "// General category N (regex \\p{N})",
        "static const Range kNumber[] = {",
        fmt_rows(numbers, 8, lambda r: f"{{{h(r[0])},{h(r[1])}}}"),
        "};",
        "// Lowercase: cp in [first, last] with (cp - first) % stride == 0 maps to cp + delta",
        "static const LowerRun kLowerRuns[] = {",
        fmt_rows(lower_runs, 5, lambda r: f"{{{h(r[0])},{h(r[1])},{r[2]},{r[3]}}}"),
        "};",
        "// One-to-many lowercase mapping (the only one): U+0130 -> U+0069 U+0307",
        f"static const char32_t kLowerSpecialCp = {h(lower_special[0][0])};",
        "static const char32_t kLowerSpecial[] = {" + ",".join(h(c) for c in lower_special[0][1]) + "};",
        "// Canonical combining class (non-zero only)",
        "static const CccRun kCcc[] = {",
        fmt_rows(ccc, 6, lambda r: f"{{{h(r[0])},{h(r[1])},{r[2]}}}"),
        "};",
        "// Canonical decompositions, sorted by cp",
        "static const Decomp kDecomp[] = {",
        fmt_rows(decomp, 5, lambda r: f"{{{h(r[0])},{h(r[1])},{h(r[2])},{r[3]}}}"),
        "};",
        "",
    ]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--check", action="store_true", help="only compare with the existing file")
    ap.add_argument(
        "--no-reference-compat",
        action="store_true",
        help="do not restrict the NFC data to what the installed tokenizers applies (needs no tokenizers)",
    )
    args = ap.parse_args(argv)
    text = generate(reference_compat=not args.no_reference_compat)
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is out of date (regenerate with tools/gen_unicode_tables.py)", file=sys.stderr)
            return 1
        print(f"{args.out} is up to date (Unicode {unicodedata.unidata_version})")
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out} ({len(text)} bytes, Unicode {unicodedata.unidata_version})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
