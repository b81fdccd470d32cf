"""CLIP-format BPE tokenizers: generate, save, load and apply them.

No tokenizer can be downloaded where mdship runs, so random-init presets get a small CLIP-format
tokenizer generated here (`build_clip_vocab` / `save_clip_tokenizer`). The files are the ones
OpenAI's CLIP ships (vocab.json, merges.txt with the `#version: 0.2` header, tokenizer_config.json,
special_tokens_map.json), so `transformers.CLIPTokenizer.from_pretrained(directory)` loads them
offline, and so does the C++ `ClipTokenizer` in runner/src/clip_tokenizer.cpp.

Reference behaviour. With the pinned transformers (5.x) `CLIPTokenizer` is backed by the Rust
`tokenizers` library (there is no slow Python CLIP tokenizer any more, and ftfy plays no part):

    added-token split (special tokens, matched on the raw text)
    -> NFC -> Replace(\\s+ -> " ") -> per-character full lowercase
    -> Split(<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+)
    -> ByteLevel (GPT-2 regex, bytes_to_unicode) -> BPE with "</w>" end-of-word suffix
    -> <|startoftext|> ids <|endoftext|> (truncated to max_length keeping the eos) -> pad.

The C++ port mirrors exactly this pipeline; tests/runner/test_tokenizer_parity.py checks it.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterable, Sequence
from functools import lru_cache
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

__all__ = [
    "BOS_TOKEN",
    "DEFAULT_MAX_LENGTH",
    "DEFAULT_WORDS",
    "EOS_TOKEN",
    "PAD_TOKEN",
    "UNK_TOKEN",
    "build_clip_vocab",
    "bytes_to_unicode",
    "load_tokenizer",
    "save_clip_tokenizer",
    "tokenize",
]


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable unicode character map (256 entries, CLIP's order)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


@lru_cache(maxsize=1)
def _reference_pipeline():
    """The normalizer and pre-tokenizer of the installed transformers.CLIPTokenizer.

    Words are split exactly as the reference tokenizer splits text, so every word piece we add
    merges for really is one BPE word at tokenization time.
    """
    from transformers import CLIPTokenizer

    backend = CLIPTokenizer().backend_tokenizer
    return backend.normalizer, backend.pre_tokenizer


def _word_pieces(words: Iterable[str]) -> list[str]:
    """Normalize and pre-tokenize `words`; return the distinct byte-level pieces, sorted."""
    if isinstance(words, str):
        raise TypeError("words must be an iterable of strings, not a single string")
    normalizer, pre_tokenizer = _reference_pipeline()
    pieces: set[str] = set()
    for word in words:
        if not isinstance(word, str):
            raise TypeError(f"words must be strings, got {type(word).__name__}: {word!r}")
        for piece, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(word)):
            if piece:
                pieces.add(piece)
    return sorted(pieces)


def _bpe(symbols: Sequence[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """BPE merge of one word, the same algorithm as tokenizers' `Word::merge_all`.

    Pairs are applied lowest rank first, leftmost first among equal ranks, with a heap of
    candidate merges whose stale entries are skipped.
    """
    syms = list(symbols)
    n = len(syms)
    prev = [i - 1 for i in range(n)]
    nxt = [i + 1 if i + 1 < n else -1 for i in range(n)]
    alive = [True] * n
    heap: list[tuple[int, int, str]] = []
    for i in range(n - 1):
        rank = ranks.get((syms[i], syms[i + 1]))
        if rank is not None:
            heap.append((rank, i, syms[i] + syms[i + 1]))
    heapq.heapify(heap)
    while heap:
        rank, pos, new = heapq.heappop(heap)
        if not alive[pos] or nxt[pos] == -1:
            continue
        right = nxt[pos]
        if (syms[pos], syms[right]) not in ranks or syms[pos] + syms[right] != new:
            continue
        syms[pos] = new
        alive[right] = False
        nxt[pos] = nxt[right]
        if nxt[right] != -1:
            prev[nxt[right]] = pos
        if prev[pos] >= 0:
            p = prev[pos]
            r = ranks.get((syms[p], syms[pos]))
            if r is not None:
                heapq.heappush(heap, (r, p, syms[p] + syms[pos]))
        if nxt[pos] != -1:
            q = nxt[pos]
            r = ranks.get((syms[pos], syms[q]))
            if r is not None:
                heapq.heappush(heap, (r, pos, syms[pos] + syms[q]))
    return [s for s, a in zip(syms, alive) if a]


def build_clip_vocab(words: Iterable[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Build a valid CLIP BPE vocabulary in which every word of `words` is ONE token.

    Layout (as OpenAI's CLIP vocabulary): the 256 byte-level characters in bytes_to_unicode
    order (ids 0-255), the same 256 with "</w>" (ids 256-511), one token per merge result in
    merge order, then "<|startoftext|>" and "<|endoftext|>" last.

    Words are normalized like the tokenizer does (NFC, lowercase) and split like it does
    (a word such as "t-shirt" or "don't" is several BPE words; each piece becomes one token).
    Pieces are processed in sorted order. For each piece the current merges are applied; while
    that leaves more than one token, the merge of the first two tokens is appended (building
    the piece left to right: "c","a","t</w>" -> "ca" -> "cat</w>"). Appended merges rank after
    all earlier ones, so words added earlier keep their single token. Any other text still
    tokenizes: it falls back to shorter tokens and, at worst, to byte-level characters.
    """
    byte_chars = list(bytes_to_unicode().values())
    tokens: list[str] = byte_chars + [c + END_OF_WORD for c in byte_chars]
    known = set(tokens)
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for piece in _word_pieces(words):
        symbols = list(piece)
        symbols[-1] += END_OF_WORD
        out = _bpe(symbols, ranks)
        while len(out) > 1:
            pair = (out[0], out[1])
            assert pair not in ranks, pair  # BPE would have applied it
            ranks[pair] = len(merges)
            merges.append(pair)
            merged = pair[0] + pair[1]
            if merged not in known:
                known.add(merged)
                tokens.append(merged)
            shorter = _bpe(symbols, ranks)
            assert len(shorter) < len(out), (piece, out, shorter)
            out = shorter
    for special in (BOS_TOKEN, EOS_TOKEN):
        if special not in known:
            known.add(special)
            tokens.append(special)
    return {tok: i for i, tok in enumerate(tokens)}, merges


def _added_token_entry(content: str) -> dict:
    return {
        "content": content,
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
        "special": True,
    }


def save_clip_tokenizer(directory: str | Path, words: Iterable[str], model_max_length: int = DEFAULT_MAX_LENGTH) -> Path:
    """Write a CLIP tokenizer for `words` into `directory` (created if needed); return its path.

    Files: vocab.json, merges.txt (with CLIP's "#version: 0.2" header), tokenizer_config.json
    and special_tokens_map.json. bos "<|startoftext|>"; eos, unk and pad "<|endoftext|>".
    """
    if isinstance(model_max_length, bool) or not isinstance(model_max_length, int) or model_max_length < 2:
        raise ValueError(f"model_max_length must be an integer >= 2 (room for bos and eos), got {model_max_length!r}")
    vocab, merges = build_clip_vocab(words)
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
        "added_tokens_decoder": {
            str(vocab[BOS_TOKEN]): _added_token_entry(BOS_TOKEN),
            str(vocab[EOS_TOKEN]): _added_token_entry(EOS_TOKEN),
        },
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    special = {}
    for key, content in (("bos_token", BOS_TOKEN), ("eos_token", EOS_TOKEN), ("pad_token", PAD_TOKEN), ("unk_token", UNK_TOKEN)):
        entry = _added_token_entry(content)
        del entry["special"]
        special[key] = entry
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return out


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
                "write one with mdship.tokenizer.save_clip_tokenizer)"
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


# ---------------------------------------------------------------------------------------------
# Default word list for random-init presets: ~2000 common English words of image captions.
# ---------------------------------------------------------------------------------------------

_WORDS = """
a an the this that these those some any each every all both no none one two three four five six
seven eight nine ten eleven twelve twenty hundred thousand million first second third last next
few many much more most less least several single double pair couple group dozen half quarter
and or but nor so yet if then than as because while when where which who whom whose what why how
of in on at by for with without within about above below under over between among through across
along around behind beside besides beyond near inside outside into onto upon off out up down
from to toward towards against during before after since until till via per like unlike amid
is are was were be been being am has have had having do does did done can could will would shall
should may might must not very too also just only even still already again ever never always
often sometimes usually rarely here there now then today tonight yesterday tomorrow soon later
it its it's he she they we you i me him her them us my your his our their mine yours hers ours
theirs itself himself herself themselves myself yourself someone something somewhere anyone
anything everyone everything everywhere nothing nobody nowhere other another same such own
left right top bottom front back middle center centre side corner edge foreground background
upper lower far close closeup distant nearby next beneath underneath overhead upside downside
horizontal vertical diagonal parallel opposite adjacent surrounded facing leaning floating
hanging standing sitting lying sleeping walking running jumping flying swimming climbing
red orange yellow green blue purple violet pink brown black white gray grey silver gold golden
beige cream ivory tan khaki maroon burgundy crimson scarlet magenta cyan teal turquoise aqua
navy indigo lavender lilac mauve peach coral salmon amber bronze copper rust olive lime mint
emerald jade sapphire ruby charcoal ebony pastel neon bright dark light pale deep vivid muted
colorful colourful monochrome rainbow striped spotted dotted checkered plaid patterned plain
circle square triangle rectangle oval diamond star heart hexagon pentagon octagon cube sphere
cylinder cone pyramid ring spiral arc curve line dot stripe grid cross arrow wave zigzag shape
round flat pointed sharp curved straight twisted wavy jagged smooth rough soft hard solid hollow
big small large tiny huge giant little short tall long wide narrow thick thin fat slim heavy
light high low deep shallow full empty open closed new old young ancient modern vintage retro
antique futuristic classic fresh rotten clean dirty dusty muddy wet dry hot cold warm cool icy
frozen burning glowing shiny shining glossy matte metallic wooden plastic glass stone marble
concrete brick paper cloth leather wool cotton silk velvet denim fur feather steel iron metal
wood rock sand clay rubber ceramic porcelain crystal diamond pearl gem jewel fabric lace
beautiful pretty handsome cute lovely elegant ugly strange weird funny happy sad angry scared
calm quiet loud peaceful busy crowded lonely alone together empty abandoned ruined broken
cozy cosy comfortable fancy simple complex detailed intricate ornate minimal minimalist
realistic surreal abstract fantasy magical mysterious dramatic epic cinematic moody gloomy
cheerful sunny cloudy rainy snowy foggy misty stormy windy hazy clear starry
dog dogs puppy cat cats kitten horse pony cow bull calf pig sheep lamb goat chicken hen rooster
duck goose swan turkey bird birds eagle hawk owl parrot pigeon dove crow raven sparrow robin
penguin flamingo peacock pelican seagull hummingbird fish shark whale dolphin octopus squid crab
lobster shrimp jellyfish starfish seal walrus otter turtle tortoise frog toad snake lizard
crocodile alligator dinosaur dragon unicorn lion tiger leopard cheetah panther jaguar bear
panda koala kangaroo monkey ape gorilla chimpanzee elephant giraffe zebra rhino hippo camel
deer moose elk fox wolf rabbit bunny hare squirrel mouse mice rat hamster hedgehog raccoon
skunk bat beaver badger donkey mule llama alpaca bison buffalo antelope gazelle insect bug
butterfly bee wasp ant spider beetle ladybug dragonfly moth fly mosquito snail worm scorpion
animal animals pet pets creature monster robot alien ghost zombie vampire wizard witch knight
king queen prince princess angel demon fairy mermaid pirate ninja samurai cowboy soldier
person people man men woman women boy girl child children kid kids baby babies toddler teenager
adult elderly family mother father mom dad parent son daughter brother sister grandmother
grandfather friend friends couple bride groom crowd team player players student teacher doctor
nurse chef cook farmer worker police officer firefighter pilot driver artist painter musician
singer dancer athlete runner swimmer surfer skier skater cyclist rider fisherman sailor
astronaut scientist engineer builder carpenter gardener waiter waitress customer tourist
traveler hiker climber photographer model actor actress clown magician guard
face head hair eye eyes ear ears nose mouth lips teeth tongue chin cheek neck shoulder
shoulders arm arms hand hands finger fingers thumb leg legs knee foot feet toe toes back chest
body skin beard mustache smile tears wing wings tail paw paws claw horn horns hoof fin scales
shirt tshirt blouse sweater hoodie jacket coat vest suit tie dress skirt pants jeans shorts
trousers sock socks shoe shoes boot boots sneakers sandals slippers hat cap helmet hood scarf
gloves glove mittens belt bag backpack purse wallet umbrella glasses sunglasses mask costume
uniform apron pajamas robe gown veil crown necklace bracelet earring earrings watch jewelry
bikini swimsuit wetsuit armor cape cloak kimono sari
food meal breakfast lunch dinner snack dessert bread toast sandwich burger hamburger hotdog
pizza pasta spaghetti noodles rice soup salad steak meat beef pork chicken bacon sausage ham
egg eggs cheese butter milk cream yogurt ice cake cupcake cookie cookies pie donut doughnut
muffin croissant pancake pancakes waffle chocolate candy sugar honey jam sauce ketchup
fruit fruits apple apples banana bananas orange oranges lemon lime grape grapes strawberry
strawberries cherry cherries blueberry raspberry peach pear plum watermelon melon pineapple
mango kiwi coconut avocado tomato tomatoes potato potatoes carrot carrots onion garlic pepper
peppers broccoli cabbage lettuce spinach cucumber corn pumpkin mushroom mushrooms bean beans
pea peas nut nuts vegetable vegetables sushi taco burrito curry dumpling fries popcorn cereal
coffee tea juice water wine beer soda drink drinks cocktail smoothie bottle cup mug glass
plate bowl dish tray spoon fork knife chopsticks pan pot kettle oven stove fridge
refrigerator microwave toaster blender sink counter table kitchen
plant plants tree trees bush shrub flower flowers rose roses tulip tulips daisy sunflower
lily lilies orchid lotus poppy lavender grass leaf leaves branch branches trunk root roots
seed seeds fruit blossom petal petals vine moss fern cactus palm pine oak maple birch willow
bamboo forest woods jungle garden park field meadow lawn farm orchard vineyard
sky sun sunlight sunshine sunrise sunset dawn dusk twilight moon moonlight star stars planet
earth world space galaxy universe nebula comet cloud clouds rain raindrops snow snowflake
ice fog mist storm thunder lightning rainbow wind tornado hurricane weather season spring
summer autumn fall winter morning afternoon evening night midnight noon day daytime nighttime
mountain mountains hill hills valley canyon cliff cliffs rock rocks boulder cave volcano
desert dune dunes beach shore coast island islands ocean sea lake river stream creek waterfall
pond pool bay harbor harbour wave waves sand glacier iceberg swamp marsh plain plains prairie
landscape scenery view horizon nature wilderness countryside
city town village street road avenue highway bridge tunnel alley sidewalk crosswalk
intersection square plaza market downtown neighborhood suburb building buildings skyscraper
tower house houses home apartment cabin cottage hut barn castle palace temple church
cathedral mosque shrine pagoda monument statue fountain museum library school university
hospital station airport stadium arena theater theatre cinema restaurant cafe bar shop store
mall bakery office factory warehouse garage lighthouse windmill ruins wall walls fence gate
door doors window windows roof chimney stairs staircase steps floor ceiling room rooms hallway
corridor balcony porch patio terrace yard backyard driveway parking lot playground
bedroom bathroom livingroom classroom studio attic basement
furniture chair chairs sofa couch bench stool bed beds pillow blanket sheet mattress desk
shelf shelves bookshelf cabinet drawer closet wardrobe mirror lamp lamps candle candles
lantern chandelier clock painting paintings picture pictures photo photograph poster frame
rug carpet curtain curtains vase basket box boxes bucket jar can barrel crate suitcase
television tv computer laptop keyboard screen monitor phone smartphone tablet camera radio
speaker headphones microphone guitar piano violin drum drums trumpet flute saxophone cello
harp accordion instrument music song book books notebook newspaper magazine letter envelope
pen pencil crayon brush paint canvas easel scissors tape glue rope chain string thread
needle key keys lock coin coins money card cards ticket map globe compass flag flags sign
signs banner balloon balloons kite toy toys doll teddy puzzle game ball balls bat racket
skateboard surfboard snowboard ski skis sled frisbee bicycle bike motorcycle scooter
car cars truck trucks bus buses van taxi jeep tractor train trains tram subway locomotive
boat boats ship ships sailboat yacht canoe kayak ferry submarine airplane plane planes jet
helicopter rocket spaceship satellite drone wheel wheels tire engine vehicle traffic
tool tools hammer saw drill axe shovel ladder wrench screwdriver nail nails screw bolt
weapon sword shield bow arrow gun cannon spear dagger
fire flame flames smoke ash steam light shadow shadows reflection silhouette spark sparkles
glow neon lights bubble bubbles splash drop drops ripple pattern texture surface
sport sports soccer football basketball baseball tennis golf hockey volleyball rugby cricket
boxing wrestling surfing skiing skating skateboarding swimming diving cycling racing running
hiking camping fishing hunting sailing yoga dance dancing party wedding birthday holiday
christmas halloween festival concert parade celebration picnic vacation trip journey
art artwork painting drawing sketch illustration photo photography portrait landscape
cartoon anime comic manga sculpture mosaic graffiti mural poster logo icon emoji pixel
watercolor watercolour oil acrylic pencil charcoal ink digital render rendering 3d model
style styled photorealistic hyperrealistic realistic lowpoly isometric voxel vector
sharp blurry blurred bokeh focus depth field lens wide angle telephoto macro aerial drone
shot shots closeup portrait selfie panorama panoramic symmetrical composition lighting
studio natural soft hard harsh golden hour backlit backlighting rim volumetric ambient
high quality resolution detailed 4k 8k hd uhd masterpiece award winning trending
professional amateur candid snapshot film analog polaroid sepia noir
cyberpunk steampunk gothic baroque renaissance victorian medieval impressionist
impressionism cubism surrealism pop minimalism expressionism oil painting fresco
eat eating drink drinking cook cooking bake baking cut cutting hold holding carry carrying
wear wearing look looking watch watching see seeing read reading write writing draw drawing
paint painting play playing sing singing dance talk talking speak speaking listen listening
laugh laughing smile smiling cry crying sleep sit stand walk run jump fly swim climb ride
riding drive driving sail sailing fish surf ski skate throw throwing catch catching kick
kicking hit hitting push pushing pull pulling lift lifting open opening close closing
build building fix fixing clean cleaning wash washing brush brushing comb take taking give
giving make making break breaking fall falling rise rising grow growing bloom blooming shine
glowing burn melt melting pour pouring fill filling hide hiding chase chasing hug hugging
kiss kissing wave waving point pointing reach reaching touch touching feed feeding rest
resting wait waiting stare staring gaze gazing pose posing perch perched graze grazing
park parked stack stacked pile piled line lined cover covered fill filled decorate decorated
surround surrounding float drift drifting spin spinning roll rolling slide sliding bounce
shown showing seen made covered holding filled made painted carved built placed set
go going come coming get getting put putting turn turning move moving stop stopping start
leave leaving arrive arriving enter entering exit use using try trying help helping work
working show think know want need feel find found keep let begin seem
good bad best better great nice fine perfect awesome amazing wonderful gorgeous stunning
majestic serene tranquil vibrant colorful dull boring exciting scary spooky creepy dark
bright brilliant dim shadowy sunlit moonlit candlelit lit glowing sparkling shimmering
glittering translucent transparent opaque reflective mirrored foggy steamy smoky fiery icy
fluffy furry fuzzy hairy bald curly straight braided wrinkled spotted striped scaly feathered
young old elderly male female baby adult little big tiny giant miniature massive enormous
sleepy hungry tired excited curious surprised shocked worried nervous proud brave shy
friendly cute adorable playful lazy wild tame domestic tropical arctic exotic rare common
fast slow quick still quiet silent noisy
wooden metal golden silver glass stone paper plastic leather woolen cotton silken
rusty shiny polished worn torn cracked shattered dusty weathered faded painted carved
north south east west northern southern eastern western central local urban rural
american african asian european chinese japanese korean indian french italian spanish german
british english russian mexican brazilian greek egyptian arabian nordic celtic roman
year years month week weekend hour hours minute minutes second time moment age era century
past present future history story dream idea memory life death love hope peace war
number numbers letter letters word words text title name label alphabet
zero thirteen fourteen fifteen sixteen seventeen eighteen nineteen thirty forty fifty sixty
seventy eighty ninety
""".split()

_WORDS_EXTRA = """
above ahead aside apart away behind below beside down forward backward backwards sideways
inward outward upward upwards downward downwards nearby overhead underground underwater
indoor indoors outdoor outdoors inner outer interior exterior surface tip peak summit base
tile tiles panel panels pillar pillars column columns arch arches dome domes beam beams
pipe pipes wire wires cable cables pole poles post posts rail rails track tracks path paths
trail trails lane lanes sidewalk curb gutter drain hole holes crack cracks gap hill slope
puddle puddles wave ripples foam tide current reef coral seashell shell shells pebble pebbles
gravel dirt soil mud dust dustpan broom mop vacuum laundry towel towels soap shampoo
toothbrush toothpaste razor bathtub shower toilet faucet tap sponge
teapot teacup saucer napkin tablecloth candlestick menu receipt bill
banknote cash price sale gift present wrapped ribbon bow bows tag tags sticker stickers
button buttons zipper pocket pockets collar sleeve sleeves hem
pattern floral geometric polka paisley camouflage leopard zebra tiger checked tartan
number one two three
bird's cat's dog's man's woman's people's children's
don't can't won't isn't aren't wasn't weren't doesn't didn't i'm you're we're they're
there's here's that's what's let's i've you've we've they've i'll you'll she'll he'll
herd flock swarm school pack litter colony
mountainous rocky sandy grassy leafy snowcapped forested wooded hilly flat
sunbeam sunbeams raindrop puddle icicle icicles frost dew
kid's girl's boy's
apple pie birthday cake ice cream hot dog french fries
night sky city skyline street lamp traffic light fire truck police car school bus
motorbike bicycle's
heart shaped star shaped
""".split()

DEFAULT_WORDS: list[str] = sorted(set(_WORDS) | set(_WORDS_EXTRA))
