"""Embedded default data: a SYNTHETIC home-improvement catalogue, queries and simulated rater grades.

Nothing here is real. Products are built from a table of product types (with brands, attributes and
accessories); each query comes from a hidden intent (type, maybe brand, maybe attributes); a latent
relevance function scores intent vs product, and several simulated raters with their own bias and
noise grade each pair 0..2, so `grade_dist` is a real empirical distribution. docs/data.md explains it.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import asdict, dataclass

import pandas as pd

from components import schema, storage
from components.data import write_table

log = logging.getLogger(__name__)

NUM_GRADES = 3  # 0 irrelevant, 1 partially relevant, 2 relevant (the Home Depot 1..3 scale, 0-based)

# Attribute values: title form -> query forms.
ATTRIBUTES: dict[str, dict[str, tuple[str, ...]]] = {
    "voltage": {"12-Volt": ("12v", "12 volt"), "18-Volt": ("18v", "18 volt"),
                "20-Volt MAX": ("20v", "20 volt"), "40-Volt": ("40v", "40 volt")},
    "colour": {"White": ("white",), "Black": ("black",), "Red": ("red",), "Blue": ("blue",),
               "Gray": ("gray", "grey"), "Green": ("green",), "Almond": ("almond",)},
    "finish": {"Chrome": ("chrome",), "Brushed Nickel": ("brushed nickel", "nickel"),
               "Oil Rubbed Bronze": ("oil rubbed bronze", "bronze"), "Matte Black": ("matte black", "black"),
               "Stainless Steel": ("stainless", "stainless steel")},
    "material": {"Steel": ("steel",), "Aluminum": ("aluminum", "aluminium"), "Wood": ("wood", "wooden"),
                 "Vinyl": ("vinyl",), "Fiberglass": ("fiberglass",), "Brass": ("brass",)},
    "size": {f"{n} in.": (f"{n} in", f"{n} inch", f'{n}"') for n in (6, 8, 10, 12, 18, 24, 30, 36)},
    "blade": {"4-1/2 in.": ("4 1/2 in", "4.5 inch"), "6-1/2 in.": ("6 1/2 in", "6.5 inch"),
              "7-1/4 in.": ("7 1/4 in", "7-1/4 inch"), "10 in.": ("10 in", "10 inch"),
              "12 in.": ("12 in", '12"')},
    "span": {f"{n} in.": (f"{n} in", f"{n} inch", f'{n}"') for n in (42, 44, 52, 60)},
    "deck": {f"{n} in.": (f"{n} in", f"{n} inch", f'{n}"') for n in (20, 21, 22, 30)},
    "length": {f"{n} ft.": (f"{n} ft", f"{n} foot", f"{n}'") for n in (25, 50, 75, 100)},
    "wattage": {f"{n}-Watt Equivalent": (f"{n}w", f"{n} watt") for n in (40, 60, 75, 100)},
    "capacity": {"1 Gal.": ("1 gallon", "1 gal"), "5 Gal.": ("5 gallon", "5 gal"), "Quart": ("quart", "qt")},
    "volume": {f"{n} cu. ft.": (f"{n} cu ft", f"{n} cubic feet") for n in (18, 21, 25, 28)},
    "pack": {f"({n}-Pack)": (f"{n} pack",) for n in (2, 4, 6, 10)},
    "power": {"Gas": ("gas",), "Electric": ("electric",), "Cordless": ("cordless", "battery")},
    "light": {"Soft White": ("soft white",), "Daylight": ("daylight",), "Bright White": ("bright white",)},
    "sheen": {"Flat": ("flat",), "Eggshell": ("eggshell",), "Satin": ("satin",),
              "Semi-Gloss": ("semi gloss",)},
    "tone": {"Natural Oak": ("oak", "natural oak"), "Gray Oak": ("gray oak",), "Walnut": ("walnut",),
             "Hickory": ("hickory",)},
}
# attributes written before the type words, in this order; colour and finish go after " in "
BEFORE_TYPE = ("size", "blade", "span", "deck", "length", "volume", "capacity", "voltage", "wattage", "power",
               "light", "sheen", "material", "tone")

# category | group | type | title forms | query forms | attributes | accessory of (types)
TYPE_TABLE = """
power tools|drill|cordless drill|Cordless Drill/Driver;Drill/Driver Kit;Compact Drill/Driver|drill;cordless drill;power drill;drill driver|voltage,colour|
power tools|drill|impact driver|Impact Driver;Cordless Impact Driver Kit|impact driver;impact drill|voltage,colour|
power tools|drill|hammer drill|Hammer Drill;Cordless Hammer Drill/Driver|hammer drill;masonry drill|voltage,colour|
power tools|saw|circular saw|Circular Saw;Cordless Circular Saw|circular saw;skill saw;circ saw|voltage,blade|
power tools|saw|reciprocating saw|Reciprocating Saw;Cordless Reciprocating Saw|reciprocating saw;sawzall;recip saw|voltage|
power tools|saw|miter saw|Compound Miter Saw;Sliding Compound Miter Saw|miter saw;chop saw|blade|
power tools|sander|orbital sander|Random Orbit Sander;Orbital Sander|orbital sander;sander|voltage|
power tools|grinder|angle grinder|Angle Grinder;Cordless Angle Grinder|angle grinder;grinder|voltage,blade|
power tools|bits|drill bit set|Drill Bit Set;Titanium Drill Bit Set;Drill and Drive Bit Set|drill bits;drill bit set;bit set|pack|cordless drill,hammer drill,impact driver
power tools|battery|battery pack|Lithium-Ion Battery Pack;Battery and Charger Starter Kit|battery pack;tool battery;drill battery|voltage|cordless drill,impact driver,hammer drill,circular saw,reciprocating saw,orbital sander,angle grinder,string trimmer,leaf blower
power tools|blade|circular saw blade|Circular Saw Blade;Carbide-Tipped Saw Blade|saw blade;circular saw blade|blade,pack|circular saw,miter saw
power tools|abrasive|sanding discs|Hook and Loop Sanding Discs;Sanding Disc Assortment|sanding discs;sandpaper;sanding pads|pack|orbital sander
power tools|abrasive|cut-off wheel|Cut-Off Wheel;Grinding Wheel|cut off wheel;grinding wheel;grinder disc|blade,pack|angle grinder
hand tools|hammer|claw hammer|Claw Hammer;Framing Hammer;Rip Claw Hammer|hammer;claw hammer;framing hammer|material|
hand tools|screwdriver|screwdriver set|Screwdriver Set;Multi-Bit Screwdriver|screwdriver;screwdriver set;screw driver|pack|
hand tools|wrench|adjustable wrench|Adjustable Wrench;Wide Jaw Adjustable Wrench|adjustable wrench;crescent wrench;wrench|size|
hand tools|wrench|socket set|Mechanics Tool Set;Socket Wrench Set|socket set;socket wrench set;mechanics tool set|pack|
hand tools|measure|tape measure|Tape Measure;Magnetic Tape Measure|tape measure;measuring tape|length|
hand tools|knife|utility knife|Utility Knife;Folding Utility Knife|utility knife;box cutter|colour|
hand tools|blade|utility knife blades|Utility Knife Blades;Replacement Utility Blades|utility blades;razor blades;utility knife blades|pack|utility knife
plumbing|faucet|kitchen faucet|Pull-Down Kitchen Faucet;Single-Handle Kitchen Faucet;Kitchen Faucet with Side Sprayer|kitchen faucet;kitchen sink faucet;pull down faucet|finish|
plumbing|faucet|bathroom faucet|Widespread Bathroom Faucet;Single Hole Bathroom Faucet;Centerset Bathroom Faucet|bathroom faucet;bathroom sink faucet;lavatory faucet|finish|
plumbing|shower|shower head|Rain Shower Head;Handheld Shower Head;Fixed Shower Head|shower head;rain shower head;handheld shower|finish|
plumbing|toilet|toilet|Two-Piece Elongated Toilet;One-Piece Round Toilet;Comfort Height Toilet|toilet;elongated toilet;toilets|colour|
plumbing|toilet part|toilet seat|Elongated Toilet Seat;Slow-Close Round Toilet Seat|toilet seat;elongated toilet seat|colour,material|toilet
plumbing|toilet part|toilet flapper|Toilet Flapper;Universal Toilet Flapper|flapper;toilet flapper|pack|toilet
plumbing|heater|water heater|Tank Water Heater;Tankless Water Heater|water heater;hot water heater;tankless water heater|power|
plumbing|supply|supply line|Faucet Supply Line;Braided Stainless Supply Line|supply line;faucet supply line;braided hose|size|kitchen faucet,bathroom faucet,toilet
lighting|bulb|led light bulb|A19 LED Light Bulb;Dimmable LED Light Bulb|led bulb;light bulb;led light bulbs|wattage,light,pack|
lighting|fan|ceiling fan|Indoor Ceiling Fan;Ceiling Fan with Light Kit;Indoor/Outdoor Ceiling Fan|ceiling fan;ceiling fan with light;fan|span,finish|
lighting|fan part|fan light kit|Ceiling Fan Light Kit;LED Fan Light Kit|fan light kit;ceiling fan light kit|finish|ceiling fan
lighting|fan part|fan remote|Universal Ceiling Fan Remote Control;Fan Wall Control|ceiling fan remote;fan remote|colour|ceiling fan
lighting|fixture|pendant light|Pendant Light;Mini Pendant;Island Pendant Light|pendant light;pendant lighting;hanging light|finish|
lighting|fixture|vanity light|Vanity Light;Bath Vanity Light Bar|vanity light;bathroom light fixture;vanity lighting|finish|
lighting|outdoor light|flood light|LED Flood Light;Motion-Activated Security Flood Light|flood light;security light;motion light|colour,wattage|
electrical|cord|extension cord|Extension Cord;Outdoor Extension Cord;Heavy-Duty Extension Cord|extension cord;outdoor extension cord;power cord|length,colour|
electrical|outlet|gfci outlet|GFCI Outlet;Tamper-Resistant GFCI Duplex Outlet|gfci outlet;gfci;ground fault outlet|colour|
electrical|switch|light switch|Single Pole Light Switch;Dimmer Switch;Rocker Light Switch|light switch;dimmer switch;rocker switch|colour|
electrical|plate|wall plate|Wall Plate;Decorator Wall Plate;Outlet Cover Plate|wall plate;outlet cover;switch plate|colour,pack|gfci outlet,light switch
electrical|breaker|circuit breaker|Circuit Breaker;Single-Pole Circuit Breaker|circuit breaker;breaker|pack|
outdoor|mower|lawn mower|Push Lawn Mower;Self-Propelled Lawn Mower;Walk-Behind Mower|lawn mower;mower;push mower;self propelled mower|deck,power|
outdoor|mower part|mower blade|Lawn Mower Blade;Replacement Mulching Blade|mower blade;lawn mower blade|deck|lawn mower
outdoor|trimmer|string trimmer|String Trimmer;Straight Shaft String Trimmer|string trimmer;weed eater;weed wacker;trimmer|power|
outdoor|trimmer part|trimmer line|Trimmer Line;Spool of Trimmer Line|trimmer line;weed eater string|length|string trimmer
outdoor|blower|leaf blower|Leaf Blower;Handheld Leaf Blower;Backpack Leaf Blower|leaf blower;blower|power|
outdoor|hose|garden hose|Garden Hose;Heavy-Duty Garden Hose|garden hose;water hose;hose|length|
outdoor|hose part|hose nozzle|Hose Nozzle;Pistol Grip Spray Nozzle|hose nozzle;spray nozzle|material|garden hose
outdoor|hose part|hose reel|Hose Reel;Wall Mount Hose Reel;Hose Reel Cart|hose reel;hose holder|colour|garden hose
outdoor|patio|patio umbrella|Market Patio Umbrella;Offset Patio Umbrella|patio umbrella;outdoor umbrella|colour|
outdoor|patio|patio dining set|Patio Dining Set;Outdoor Dining Set|patio set;patio dining set;outdoor furniture|material|
paint|paint|interior paint|Interior Paint;Interior Paint and Primer in One|interior paint;wall paint;paint|sheen,capacity,colour|
paint|paint|exterior paint|Exterior Paint;Exterior Paint and Primer|exterior paint;house paint;outdoor paint|sheen,capacity,colour|
paint|paint|spray paint|Spray Paint;Gloss Spray Paint|spray paint;spray can paint|colour|
paint|primer|primer|Primer;Stain-Blocking Primer|primer;paint primer|capacity|
paint|applicator|paint roller|Paint Roller Kit;Roller Frame|paint roller;roller|size|
paint|applicator part|roller cover|Roller Cover;Microfiber Roller Cover|roller cover;roller refill;paint roller covers|size,pack|paint roller
paint|applicator|paint brush|Angled Sash Paint Brush;Flat Paint Brush|paint brush;angle brush|pack|
paint|tape|painters tape|Painter's Tape;Multi-Surface Painter's Tape|painters tape;masking tape;blue tape|length,pack|
storage|shelving|shelving unit|5-Tier Steel Shelving Unit;Garage Storage Shelving|shelving unit;metal shelving;garage shelves|material,colour|
storage|chest|tool chest|Rolling Tool Chest;Tool Cabinet|tool chest;tool box;tool cabinet|colour|
storage|bin|storage bin|Storage Tote;Storage Bin with Lid|storage bin;tote;plastic bins|capacity,pack,colour|
flooring|floor|vinyl plank flooring|Luxury Vinyl Plank Flooring;Click Lock Vinyl Plank Flooring|vinyl plank flooring;lvp;vinyl flooring|tone|
flooring|floor|laminate flooring|Laminate Flooring;Laminate Wood Flooring|laminate flooring;laminate|tone|
flooring|tile|ceramic tile|Ceramic Floor and Wall Tile;Porcelain Floor Tile|ceramic tile;floor tile;porcelain tile|size,colour|
flooring|tile part|tile spacers|Tile Spacers;Tile Leveling Spacers|tile spacers;spacers|pack|ceramic tile
flooring|tile part|grout|Sanded Grout;Unsanded Grout|grout;tile grout|colour|ceramic tile
flooring|underlay|underlayment|Flooring Underlayment;Foam Underlayment|underlayment;floor underlayment|length|vinyl plank flooring,laminate flooring
appliances|fridge|refrigerator|French Door Refrigerator;Side by Side Refrigerator;Top Freezer Refrigerator|refrigerator;fridge;french door refrigerator|volume,finish|
appliances|fridge part|water filter|Refrigerator Water Filter;Replacement Water Filter|refrigerator water filter;fridge filter;water filter|pack|refrigerator
appliances|microwave|microwave|Over the Range Microwave;Countertop Microwave|microwave;over the range microwave;otr microwave|finish|
appliances|dishwasher|dishwasher|Built-In Dishwasher;Top Control Dishwasher|dishwasher;dish washer|finish|
appliances|laundry|washer|Top Load Washer;Front Load Washer|washer;washing machine;front load washer|colour|
appliances|laundry|dryer|Electric Dryer;Gas Dryer|dryer;clothes dryer|colour|
appliances|laundry part|dryer vent|Dryer Vent Hose;Dryer Vent Kit|dryer vent;dryer vent hose|length|dryer
doors|door|entry door|Steel Prehung Entry Door;Fiberglass Prehung Front Door|front door;entry door;exterior door|material,colour|
doors|door|storm door|Storm Door;Full View Storm Door|storm door;screen door|colour|
doors|door hardware|door knob|Entry Door Knob;Passage Door Knob;Door Lever|door knob;door handle;door lever|finish|entry door
doors|door hardware|deadbolt|Single Cylinder Deadbolt;Smart Deadbolt|deadbolt;door lock|finish|entry door
doors|door hardware|door hinge|Door Hinge;Residential Door Hinge|door hinge;hinges|finish,pack|entry door,storm door
doors|window|window blinds|Cordless Blinds;Faux Wood Blinds;Vinyl Mini Blinds|blinds;window blinds;mini blinds|colour,size|
hardware|fastener|wood screws|Wood Screws;Deck Screws|wood screws;screws;deck screws|pack|
hardware|fastener|drywall anchors|Drywall Anchors;Plastic Anchor Kit|drywall anchors;wall anchors;anchors|pack|
hardware|cabinet hardware|cabinet pull|Cabinet Pull;Bar Pull|cabinet pulls;drawer pulls;cabinet handles|finish,pack|
hardware|cabinet hardware|cabinet knob|Cabinet Knob;Round Cabinet Knob|cabinet knobs;drawer knobs|finish,pack|
"""  # noqa: E501

BRANDS = {  # invented names; several brands span categories (same brand, other type near-misses)
    "power tools": ("Voltrex", "Torqline", "Brakston", "Kestrel Pro", "Hardwell"),
    "hand tools": ("Hardwell", "Stonebridge", "Corvex", "Anvilcraft"),
    "plumbing": ("Aquaverde", "Brookhaven", "Delmare", "Flowcrest"),
    "lighting": ("Lumora", "Brightfield", "Halcyon Home", "Northlight"),
    "electrical": ("Ampwell", "Lumora", "Safeline", "Circuitry Co."),
    "outdoor": ("Greenvale", "Yardmaster Pro", "Voltrex", "Torqline", "Sunhaven"),
    "paint": ("Prismacoat", "Everhue", "Tintwell", "Brushmark"),
    "storage": ("Stonebridge", "Rackwell", "Hardwell", "Tidybox"),
    "flooring": ("Oakridge Floors", "Tileworks", "Vinlux", "Groundline"),
    "appliances": ("Frostbay", "Culinex", "Laundra", "Ovenmark"),
    "doors": ("Portalis", "Doorwell", "Keystead", "Brookhaven"),
    "hardware": ("Anvilcraft", "Boltline", "Grippa", "Brookhaven"),
}
SERIES = ("Pro Series", "Max", "Elite", "Classic", "Signature", "XR", "Essentials")
EXTRAS = {  # marketing words, by category
    "power tools": ("Brushless", "Compact", "Heavy-Duty", "Professional", "Variable Speed"),
    "hand tools": ("Heavy-Duty", "Professional", "Ergonomic", "Forged", "Compact"),
    "plumbing": ("WaterSense", "Spot Resist", "Easy Install", "Lead-Free", "Commercial"),
    "lighting": ("Dimmable", "Energy Star", "Integrated LED", "Modern", "Farmhouse"),
    "electrical": ("Heavy-Duty", "Tamper-Resistant", "Commercial Grade", "Weather Resistant"),
    "outdoor": ("Heavy-Duty", "Lightweight", "Variable Speed", "Weather Resistant", "Premium"),
    "paint": ("Premium", "One-Coat", "Low-VOC", "Quick Dry", "Professional"),
    "storage": ("Heavy-Duty", "Stackable", "Garage", "Commercial", "Compact"),
    "flooring": ("Waterproof", "Scratch Resistant", "Click Lock", "Commercial", "Premium"),
    "appliances": ("Energy Star", "Smart", "Fingerprint Resistant", "Quiet", "Counter Depth"),
    "doors": ("Energy Star", "Pre-Finished", "Heavy-Duty", "Keyed Alike", "Residential"),
    "hardware": ("Heavy-Duty", "Zinc-Plated", "Modern", "Classic", "Contractor Pack"),
}
ACRONYMS = {"gfci": "GFCI", "led": "LED"}


@dataclass(frozen=True)
class ProductType:
    category: str
    group: str
    name: str
    titles: tuple[str, ...]
    query_forms: tuple[str, ...]
    attributes: tuple[str, ...]
    accessory_of: tuple[str, ...]


def _split(text: str, sep: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(sep) if part.strip())


def _parse_types(table: str) -> list[ProductType]:
    """TYPE_TABLE as ProductTypes, checking that every name it refers to exists."""
    types = []
    for line in table.strip().splitlines():
        category, group, name, titles, forms, attrs, parents = line.split("|")
        types.append(ProductType(category, group, name, _split(titles, ";"), _split(forms, ";"),
                                 _split(attrs, ","), _split(parents, ",")))
    names = {t.name for t in types}
    unknown = [(t.name, p) for t in types for p in t.accessory_of if p not in names] + [
        (t.name, a) for t in types for a in t.attributes if a not in ATTRIBUTES] + [
        (t.category, "brands") for t in types if t.category not in BRANDS]
    if unknown:
        raise ValueError(f"TYPE_TABLE refers to unknown types, attributes or categories: {unknown}")
    return types


TYPES = _parse_types(TYPE_TABLE)


@dataclass(frozen=True)
class SyntheticConfig:
    """Sizes and noise of the synthetic data; the same config always gives the same tables."""

    seed: int = 7
    n_products: int = 5000
    n_queries: int = 600
    pairs_per_query: int = 8  # mean candidates per query; each query gets 2 fewer to 2 more
    min_raters: int = 3  # each pair is graded by min_raters..max_raters raters from the pool
    max_raters: int = 5
    rater_pool: int = 12
    rater_noise: float = 0.45  # std of a rater's per-pair noise, in grades
    rater_bias: float = 0.25  # std of a rater's constant leniency (+) or strictness (-)
    pair_noise: float = 0.2  # std of a pair's hidden fit that all its raters see alike
    misspell_rate: float = 0.15  # share of queries with a typo

    def validate(self) -> None:
        problems = [msg for bad, msg in (
            (self.n_products < 2 * len(TYPES),
             f"n_products must be >= {2 * len(TYPES)} (two per product type), got {self.n_products}"),
            (self.n_queries < 1, f"n_queries must be >= 1, got {self.n_queries}"),
            (self.pairs_per_query < 3, f"pairs_per_query must be >= 3, got {self.pairs_per_query}"),
            (not 1 <= self.min_raters <= self.max_raters <= self.rater_pool,
             "need 1 <= min_raters <= max_raters <= rater_pool, got "
             f"{self.min_raters}, {self.max_raters}, {self.rater_pool}"),
            (min(self.rater_noise, self.rater_bias, self.pair_noise) < 0, "noise settings must be >= 0"),
            (not 0 <= self.misspell_rate <= 1, f"misspell_rate must be in [0, 1], got {self.misspell_rate}"),
        ) if bad]
        if problems:
            raise ValueError("bad SyntheticConfig: " + "; ".join(problems))


@dataclass(frozen=True)
class Product:
    product_id: str
    type: ProductType
    brand: str
    attributes: dict[str, str]  # kind -> title form
    text: str


@dataclass(frozen=True)
class Intent:
    """What a query really asks for: raters judge against it, rankers see only the query text."""

    type: ProductType
    brand: str | None
    attributes: dict[str, str]


def _plural_title(name: str) -> str:
    words = [ACRONYMS.get(w, w.capitalize()) for w in name.split()]
    last = words[-1]
    if not last.endswith(("s", "ing")):
        words[-1] = last[:-2] + "ves" if last.endswith("fe") else last + "s"
    return " ".join(words)


def _make_product(rng: random.Random, index: int, ptype: ProductType,
                  accessories: list[ProductType]) -> Product:
    brand = rng.choice(BRANDS[ptype.category])
    attrs = {kind: rng.choice(list(ATTRIBUTES[kind])) for kind in ptype.attributes if rng.random() < 0.85}
    title = rng.choice(ptype.titles)
    words = [brand]
    if rng.random() < 0.3:
        words.append(rng.choice(SERIES))
    words += [attrs[k] for k in BEFORE_TYPE if k in attrs]
    if rng.random() < 0.45:
        words.append(rng.choice(EXTRAS[ptype.category]))
    words.append(title)
    if ptype.accessory_of and rng.random() < 0.5:  # "... for Cordless Drills": a lexical near-miss
        words.append(f"for {_plural_title(rng.choice(ptype.accessory_of))}")
    elif accessories and " with " not in title and rng.random() < 0.35:  # the product itself, with a part
        words.append(f"with {rng.choice(rng.choice(accessories).titles)}")
    words += [f"in {attrs[kind]}" for kind in ("colour", "finish") if kind in attrs]
    if "pack" in attrs:
        words.append(attrs["pack"])
    return Product(f"S{index:06d}", ptype, brand, attrs, " ".join(words))


def _type_weights(seed: int) -> list[float]:
    """A Zipf-like popularity over types: some types are far more common in catalogue and queries."""
    weights = [1.0 / (rank + 1) ** 0.7 for rank in range(len(TYPES))]
    random.Random(f"{seed}:popularity").shuffle(weights)
    return weights


def _catalogue(config: SyntheticConfig) -> list[Product]:
    rng = random.Random(f"{config.seed}:catalogue")
    order = list(range(len(TYPES))) * 2  # every type at least twice, the rest by popularity
    order += rng.choices(range(len(TYPES)), weights=_type_weights(config.seed),
                         k=config.n_products - len(order))
    accessories = {t.name: [a for a in TYPES if t.name in a.accessory_of] for t in TYPES}
    return [_make_product(rng, i, TYPES[t], accessories[TYPES[t].name]) for i, t in enumerate(order)]


def generate_catalogue(config: SyntheticConfig | None = None) -> pd.DataFrame:
    """The synthetic catalogue: product_id, product_text (sorted by id)."""
    config = config or SyntheticConfig()
    config.validate()
    products = _catalogue(config)
    return pd.DataFrame({schema.PRODUCT_ID: [p.product_id for p in products],
                         schema.PRODUCT_TEXT: [p.text for p in products]})


def _related(qt: ProductType, pt: ProductType) -> bool:
    """Accessory of the query type, the tool of a queried accessory, or another accessory of that tool."""
    return pt.name != qt.name and (qt.name in pt.accessory_of or pt.name in qt.accessory_of
                                   or bool(set(pt.accessory_of) & set(qt.accessory_of)))


def relevance(intent: Intent, product: Product) -> float:
    """Latent relevance on 0..2: type fit first, then brand and attribute agreement."""
    qt, pt = intent.type, product.type
    if pt.name == qt.name:
        base = 2.0
    elif pt.group == qt.group:
        base = 1.1
    elif qt.name in pt.accessory_of:  # an accessory of what was asked for ("drill" -> "drill bit set")
        base = 0.9
    elif pt.name in qt.accessory_of:  # the tool when its accessory was asked for
        base = 0.7
    elif _related(qt, pt):  # another accessory of the same tool
        base = 0.5
    elif pt.category == qt.category:
        base = 0.35
    else:
        base = 0.0
    score = base
    if intent.brand is not None:
        score += 0.25 if product.brand == intent.brand and base < 2 else 0.0
        score -= 0.9 * base / 2 if product.brand != intent.brand else 0.0
    for kind, value in intent.attributes.items():
        have = product.attributes.get(kind)
        score -= (0.3 if have is None else 0.8 if have != value else 0.0) * base / 2
    return min(2.0, max(0.0, score))


def _misspell(rng: random.Random, text: str) -> str:
    """One typo in a word of 4+ letters: a dropped, swapped, doubled or wrong letter."""
    words = text.split()
    long_words = [i for i, w in enumerate(words) if len(w) >= 4 and w.isalpha()]
    if not long_words:
        return text
    i = rng.choice(long_words)
    w = words[i]
    j = rng.randint(1, len(w) - 2)
    words[i] = rng.choice([w[:j] + w[j + 1:], w[:j - 1] + w[j] + w[j - 1] + w[j + 1:], w[:j] + w[j] + w[j:],
                           w[:j] + rng.choice("aeioustrn") + w[j + 1:]])
    return " ".join(words)


def _make_query(rng: random.Random, ptype: ProductType, misspell_rate: float) -> tuple[str, Intent]:
    kind = rng.choices(["type", "brand", "attr", "brand_attr"], weights=[0.4, 0.2, 0.3, 0.1])[0]
    brand = rng.choice(BRANDS[ptype.category]) if kind in ("brand", "brand_attr") else None
    attrs: dict[str, str] = {}
    if kind in ("attr", "brand_attr") and ptype.attributes:
        attr_kind = rng.choice([k for k in ptype.attributes if k != "pack"] or ptype.attributes)
        attrs[attr_kind] = rng.choice(list(ATTRIBUTES[attr_kind]))
    words = [rng.choice(ptype.query_forms)]
    if rng.random() < 0.15 and not words[0].endswith("s"):
        words[0] += "s"
    for attr_kind, value in attrs.items():
        form = rng.choice(ATTRIBUTES[attr_kind][value])
        words = [*words, form] if rng.random() < 0.3 else [form, *words]
    if brand:
        words.insert(0, brand.lower())
    text = " ".join(words)
    if rng.random() < misspell_rate:
        text = _misspell(rng, text)
    return text, Intent(ptype, brand, attrs)


BUCKET_WEIGHTS = {"exact": 0.45, "sibling": 0.12, "related": 0.15, "brand_or_category": 0.13, "random": 0.15}


class _Index:
    """Products by type, brand and category, and the candidate buckets of each query type."""

    def __init__(self, products: list[Product]):
        self.products = products
        self.by: dict[str, dict[str, list[Product]]] = {"type": {}, "brand": {}, "category": {}}
        for p in products:
            self.by["type"].setdefault(p.type.name, []).append(p)
            self.by["brand"].setdefault(p.brand, []).append(p)
            self.by["category"].setdefault(p.type.category, []).append(p)
        self.sibling = {qt.name: self._of_types(t for t in TYPES if t.group == qt.group and t != qt)
                        for qt in TYPES}
        self.related = {qt.name: self._of_types(t for t in TYPES if _related(qt, t)) for qt in TYPES}

    def _of_types(self, types) -> list[Product]:
        return [p for t in types for p in self.by["type"].get(t.name, [])]

    def candidates(self, rng: random.Random, intent: Intent, k: int) -> list[Product]:
        """k distinct products drawn like an old search engine's results: mostly plausible, some noise."""
        qt = intent.type
        exact = self.by["type"][qt.name]
        matching = [p for p in exact if (intent.brand is None or p.brand == intent.brand)
                    and all(p.attributes.get(a) == v for a, v in intent.attributes.items())]
        other = self.by["brand"].get(intent.brand, []) if intent.brand else self.by["category"][qt.category]
        buckets = {
            "exact": matching if matching and rng.random() < 0.5 else exact,
            "sibling": self.sibling[qt.name],
            "related": self.related[qt.name],
            "brand_or_category": [p for p in other if p.type != qt],
            "random": self.products,
        }
        chosen: dict[str, Product] = {}
        for _ in range(20 * k):
            if len(chosen) == k:
                break
            pool = buckets[rng.choices(list(BUCKET_WEIGHTS), weights=list(BUCKET_WEIGHTS.values()))[0]]
            product = rng.choice(pool or self.products)
            chosen.setdefault(product.product_id, product)
        return list(chosen.values())


def _rate(rng: random.Random, latent: float, biases: list[float], config: SyntheticConfig) -> list[float]:
    """Shares of grades 0..2 from a few raters of the pool: each gives round(latent + bias + noise)."""
    raters = rng.sample(range(len(biases)), rng.randint(config.min_raters, config.max_raters))
    counts = [0] * NUM_GRADES
    for r in raters:
        counts[min(NUM_GRADES - 1, max(0, round(latent + biases[r] + rng.gauss(0, config.rater_noise))))] += 1
    return [c / len(raters) for c in counts]


def generate_labelled(config: SyntheticConfig | None = None,
                      catalogue: pd.DataFrame | None = None) -> pd.DataFrame:
    """Synthetic labelled pairs in kdrank's schema (grade = mean rater grade, grade_dist = their shares).

    `catalogue` must be `generate_catalogue(config)`; it is rebuilt from the config when omitted.
    """
    config = config or SyntheticConfig()
    config.validate()
    products = _catalogue(config)
    if catalogue is not None and list(catalogue[schema.PRODUCT_ID]) != [p.product_id for p in products]:
        raise ValueError("catalogue does not match this SyntheticConfig; pass generate_catalogue(config)")
    index = _Index(products)
    rng = random.Random(f"{config.seed}:queries")
    biases = [rng.gauss(0, config.rater_bias) for _ in range(config.rater_pool)]
    weights = _type_weights(config.seed)
    rows, seen = [], set()
    for _ in range(config.n_queries * 50):
        if len(seen) == config.n_queries:
            break
        text, intent = _make_query(rng, rng.choices(TYPES, weights=weights)[0], config.misspell_rate)
        qid = schema.query_id(text)
        if qid in seen:
            continue
        seen.add(qid)
        k = rng.randint(config.pairs_per_query - 2, config.pairs_per_query + 2)
        for product in index.candidates(rng, intent, k):
            latent = relevance(intent, product) + rng.gauss(0, config.pair_noise)
            dist = _rate(rng, latent, biases, config)
            rows.append((qid, text, product.product_id, product.text, dist[1] + 2 * dist[2], dist))
    if len(seen) < config.n_queries:
        log.warning("only %d distinct synthetic queries could be made (asked for %d)",
                    len(seen), config.n_queries)
    return pd.DataFrame(rows, columns=schema.LABELLED_COLUMNS)


def write_default_data(output_dir: str, config: SyntheticConfig | None = None) -> dict[str, str]:
    """Write pairs.parquet (labelled), catalogue.parquet and summary.json under `output_dir`.

    Returns their paths. A rerun with the same config finds summary.json and writes nothing.
    """
    config = config or SyntheticConfig()
    paths = {name: storage.join(output_dir, f"{name}.parquet") for name in ("pairs", "catalogue")}
    paths["summary"] = storage.join(output_dir, "summary.json")
    settings = asdict(config)
    if all(storage.exists(p) for p in paths.values()) and (
            json.loads(storage.read_text(paths["summary"])).get("settings") == settings):
        log.info("synthetic data already in %s", output_dir)
        return paths
    catalogue = generate_catalogue(config)
    labelled = generate_labelled(config, catalogue)
    write_table(catalogue, paths["catalogue"])
    write_table(labelled, paths["pairs"])
    counts = {"pairs": len(labelled), "queries": int(labelled[schema.QUERY_ID].nunique()),
              "products": len(catalogue), "products_in_pairs": int(labelled[schema.PRODUCT_ID].nunique()),
              "grade_shares": [round(float(x), 4) for x in schema.dist_matrix(labelled).mean(axis=0)]}
    summary = {"synthetic": True, "settings": settings, "counts": counts}
    storage.write_text(paths["summary"], json.dumps(summary, indent=2))
    log.info("wrote synthetic default data to %s: %s", output_dir, counts)
    return paths
