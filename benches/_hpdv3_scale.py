"""An HPDv3-sized dataset on disk, for start-up benchmarks (``bench_plan.py``).

HPDv3 has ~1.17 M comparisons over ~1.08 M images (about 2.2 comparisons per
image). This module writes a dataset of that shape cheaply:

* ``sources/``: a few hundred real JPEGs (Pillow, quality 90, random smooth
  content) at the sizes generators write (1024x1024, 1216x832, 1344x768, ...)
  and some off-grid photo sizes (1080x1080, 1456x816, ...).
* ``root/images/<model>/<shard>/<prompt>_<k>.jpg``: one distinct path per
  image, each a *hard link* to a source (ext4 allows 65,000 links per inode;
  300 sources carry ~3,600 each), so a million images cost directory entries,
  not data. A directory holds at most a few thousand entries.
* ``root/train.json``: the metadata as the reference loads it, a JSON list
  written like ``json.dump(records, f, indent=4)``, in HPDv3's form
  (``prompt``, ``path1``, ``path2``, ``model1``, ``model2``, ``choice_dist``,
  ``confidence``; ``REFERENCE.md`` section 1). A prompt has 2-6 images (one
  per model) and its records are distinct pairs among them: a chain through
  all of them (so every image is used) plus random extra pairs up to the
  wanted total. Records are shuffled (no grouping by prompt in the file).
* About 1.5 % of records carry the problems real data has: ~0.4 % of the
  images are missing on disk (each drops the records that use it), ~0.5 % of
  records have a null vote (counts as 0), ~0.3 % a null or missing
  confidence, ~0.1 % a missing model, ~0.02 % no ``path2`` (a bad record).
* ``manifest.json``: the generation spec and the counts, written last. A
  folder whose manifest matches the spec is reused as is.

Everything is seeded: the same spec gives the same files.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

#: Bump when the generator's output changes, so cached folders are rebuilt.
VERSION = 1
HPDV3_RECORDS = 1_168_962
HPDV3_IMAGES = 1_080_000
MARKER = ".hpdv3-scale"  # present in every folder this module made (and may delete)

#: Shape families: (share of prompts, [(height, width, weight)]). Generator sizes first, then off-grid
#: photo sizes (1080x1080, 1456x816, 1232x928, ...). Most images of a prompt share its family (models
#: given the same prompt and aspect setting), the rest take any size, so some pairs fail the pair rules.
FAMILIES: list[tuple[float, list[tuple[int, int, float]]]] = [
    (0.50, [(1024, 1024, 10.0), (1080, 1080, 1.0), (512, 512, 0.5), (1536, 1536, 0.3)]),
    (0.12, [(832, 1216, 3.0), (832, 1248, 2.0), (896, 1344, 2.0), (800, 1200, 1.0), (1024, 1536, 0.5)]),
    (0.12, [(1216, 832, 3.0), (1248, 832, 2.0), (1344, 896, 2.0), (1200, 800, 1.0), (1536, 1024, 0.5)]),
    (0.06, [(768, 1344, 3.0), (816, 1456, 1.5), (720, 1280, 1.5), (640, 1536, 0.5)]),
    (0.06, [(1344, 768, 3.0), (1456, 816, 1.5), (1280, 720, 1.5), (1536, 640, 0.5)]),
    (0.07, [(768, 1024, 2.0), (928, 1232, 1.5), (896, 1152, 1.5), (683, 1024, 0.5)]),
    (0.07, [(1024, 768, 2.0), (1232, 928, 1.5), (1152, 896, 1.5), (1024, 683, 0.5)]),
]  # fmt: skip
IN_FAMILY = 0.85
SIZES: list[tuple[int, int]] = [(h, w) for _, sizes in FAMILIES for h, w, _ in sizes]
MODELS = [
    "flux-dev", "sd3.5-large", "kolors", "midjourney-v6", "hunyuan-dit", "playground-v2.5",
    "sdxl", "dall-e-3", "pixart-sigma", "cogview4", "infinity", "real-photo",
]  # fmt: skip
SHARD = 1000  # prompts per shard directory

_SUBJECTS = [
    "a lighthouse", "an old fisherman", "a red fox", "a futuristic city", "a bowl of ramen", "a samurai",
    "a glass teapot", "a snowy mountain village", "a robot gardener", "a dragon", "a vintage car",
    "a cat wearing a crown", "a library", "a desert caravan", "a jellyfish", "a clockwork owl",
]  # fmt: skip
_SCENES = [
    "at sunset", "in a misty forest", "on a rainy street", "under the northern lights", "on the moon",
    "in a sunlit kitchen", "inside a cathedral", "by a frozen lake", "in a neon-lit alley", "in a meadow",
]  # fmt: skip
_STYLES = [
    "oil painting", "studio photograph", "watercolor", "35mm film", "isometric 3d render", "ukiyo-e print",
    "pixel art", "charcoal sketch", "cinematic still", "art nouveau poster", "macro photograph",
]  # fmt: skip
_EXTRAS = [
    "highly detailed", "soft lighting", "dramatic shadows", "8k", "wide angle", "bokeh", "vibrant colors",
    "muted palette", "golden hour", "trending on artstation", "symmetrical composition", "volumetric fog",
    "sharp focus", "depth of field", "intricate textures", "award winning",
]  # fmt: skip
_NON_ASCII = ["café", "夜の東京", "жар-птица", "smörgåsbord", "naïve", "北京的春天"]


@dataclass(frozen=True)
class Spec:
    """What to generate; a cached folder is reused only when its spec is equal."""

    records: int = HPDV3_RECORDS
    images: int = HPDV3_IMAGES
    sources: int = 300
    seed: int = 20260
    version: int = VERSION

    @classmethod
    def for_records(cls, records: int, sources: int = 300) -> Spec:
        """HPDv3's ratio of records to images (1.0824) at another scale."""
        images = (
            HPDV3_IMAGES
            if records == HPDV3_RECORDS
            else max(4, round(records * HPDV3_IMAGES / HPDV3_RECORDS))
        )
        return cls(records=records, images=images, sources=sources)


@dataclass(frozen=True)
class Dataset:
    root: Path  # the data root (image paths in the metadata are relative to it)
    metadata: Path  # train.json
    manifest: dict[str, Any]


def say(msg: str) -> None:
    print(f"[data] {msg}", file=sys.stderr, flush=True)


def load_or_generate(folder: Path, spec: Spec) -> Dataset:
    """The dataset in ``folder``: reused when its manifest matches ``spec``, else (re)generated."""
    manifest_path = folder / "manifest.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("spec") == asdict(spec):
            say(
                f"reusing {folder} ({manifest['records']:,} records, {manifest['image_paths']:,} image paths)"
            )
            return Dataset(folder / "root", folder / "root" / "train.json", manifest)
    if folder.exists() and any(folder.iterdir()):
        if not (folder / MARKER).is_file():
            raise SystemExit(
                f"{folder} exists and was not made by this generator; choose another --data folder"
            )
        say(f"{folder} holds another spec or an unfinished generation: removing it first")
        t = time.perf_counter()
        shutil.rmtree(folder)
        say(f"  removed in {time.perf_counter() - t:.0f} s")
    return generate(folder, spec)


def _check_disk(folder: Path, spec: Spec) -> None:
    # ~430 bytes of JSON per record, ~60 bytes of directory entry per link, ~150 KB per source.
    need = spec.records * 430 + spec.images * 60 + spec.sources * 150_000 + (64 << 20)
    probe = folder
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    say(f"disk: {free / 2**30:.1f} GiB free at {probe}, need about {need / 2**30:.2f} GiB")
    if free < 2 * need:
        raise SystemExit(
            f"not enough free disk at {probe}: {free / 2**30:.1f} GiB, want {2 * need / 2**30:.1f}"
        )


def _make_sources(folder: Path, uses: np.ndarray, total: int, rng: np.random.Generator) -> list[list[str]]:
    """About ``total`` JPEGs, sizes in proportion to ``uses`` (images per size in :data:`SIZES`), at
    least one per size and enough that no source needs 60,000 links. Returns file names per size."""
    share = uses / max(1, uses.sum())
    counts = np.maximum(np.maximum(1, np.round(share * total)), np.ceil(uses / 60_000)).astype(int)
    folder.mkdir(parents=True, exist_ok=True)
    out: list[list[str]] = []
    for (h, w), n in zip(SIZES, counts.tolist()):
        names = []
        for k in range(n):
            # Smooth random content: a coarse random grid upscaled bicubically, plus mild grain.
            coarse = rng.integers(0, 256, (rng.integers(3, 9), rng.integers(3, 9), 3), dtype=np.uint8)
            img = Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC)
            arr = np.asarray(img, dtype=np.int16) + rng.integers(-6, 7, (h, w, 3), dtype=np.int16)
            name = f"src_{h}x{w}_{k:03d}.jpg"
            Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(folder / name, quality=90)
            names.append(name)
        out.append(names)
    return out


def _prompt(rng: np.random.Generator, i: int) -> str:
    """A prompt of ~60-200 characters; ~3 % carry non-ASCII text (\\u-escaped in the file)."""
    words = [
        _SUBJECTS[rng.integers(len(_SUBJECTS))],
        _SCENES[rng.integers(len(_SCENES))] + ",",
        _STYLES[rng.integers(len(_STYLES))] + ",",
    ]
    if rng.random() < 0.03:
        words.append(_NON_ASCII[rng.integers(len(_NON_ASCII))] + ",")
    target = int(rng.integers(60, 200))
    text = " ".join(words) + f" study {i}"
    while len(text) < target - 20:
        text += ", " + _EXTRAS[rng.integers(len(_EXTRAS))]
    return text


def _indented(rec: dict[str, Any]) -> str:
    """``rec`` as ``json.dump(records, f, indent=4)`` writes a list element (same bytes), several times
    faster: ``json.dumps`` with ``indent`` takes the pure-Python encoder, scalars alone take the C one."""
    parts = []
    for key, value in rec.items():
        if isinstance(value, list):
            inner = ",\n".join(f"            {json.dumps(x)}" for x in value)
            text = f"[\n{inner}\n        ]" if value else "[]"
        else:
            text = json.dumps(value)
        parts.append(f"        {json.dumps(key)}: {text}")
    return "    {\n" + ",\n".join(parts) + "\n    }"


def generate(folder: Path, spec: Spec) -> Dataset:
    """Write the dataset (see the module docstring) into ``folder``; prints what it does."""
    t0 = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text("made by benches/_hpdv3_scale.py; safe to delete\n")
    _check_disk(folder, spec)
    rng = np.random.default_rng(spec.seed)
    root = folder / "root"
    root.mkdir(exist_ok=True)

    # Prompts of 2-6 images (mean 4); the last prompt takes what is left.
    sizes: list[int] = []
    left = spec.images
    while left > 0:
        k = int(rng.integers(2, 7))
        k = left if left - k < 2 else k
        sizes.append(k)
        left -= k
    n_prompts = len(sizes)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    prompt_of = np.repeat(np.arange(n_prompts), sizes)
    local = np.arange(spec.images) - starts[prompt_of]
    # One image per model within a prompt: a random permutation of the models per prompt.
    img_model = np.argsort(rng.random((n_prompts, len(MODELS))), axis=1)[prompt_of, local]
    missing = rng.random(spec.images) < 0.004
    # Image sizes: the prompt's family mostly, any size otherwise.
    fam_p = np.array([f for f, _ in FAMILIES])
    family = rng.choice(len(FAMILIES), n_prompts, p=fam_p / fam_p.sum())[prompt_of]
    offsets = np.cumsum([0] + [len(sz) for _, sz in FAMILIES])
    size_idx = np.empty(spec.images, np.int64)
    for f, (_, fam) in enumerate(FAMILIES):
        w = np.array([x for _, _, x in fam])
        sel = np.flatnonzero(family == f)
        size_idx[sel] = offsets[f] + rng.choice(len(fam), sel.size, p=w / w.sum())
    anywhere = rng.random(spec.images) >= IN_FAMILY
    size_idx[anywhere] = rng.integers(0, len(SIZES), int(anywhere.sum()))
    paths = [
        f"images/{MODELS[m]}/{p // SHARD:04d}/{p:07d}_{k}.jpg"
        for m, p, k in zip(img_model.tolist(), prompt_of.tolist(), local.tolist())
    ]

    say(f"1/4 writing ~{spec.sources} source JPEGs at {len(SIZES)} sizes (Pillow, q90) ...")
    uses = np.bincount(size_idx[~missing], minlength=len(SIZES))
    sources = _make_sources(folder / "sources", uses, spec.sources, rng)
    src_files = [f for names in sources for f in names]
    src_mib = sum((folder / "sources" / f).stat().st_size for f in src_files) / 2**20
    say(f"    {len(src_files)} files, {src_mib:.0f} MiB, in {time.perf_counter() - t0:.0f} s")
    # Each image links to a random source of its size.
    first = np.cumsum([0] + [len(n) for n in sources])
    per_size = np.array([len(n) for n in sources])
    img_source = first[size_idx] + (rng.random(spec.images) * per_size[size_idx]).astype(np.int64)

    say(
        f"2/4 linking {spec.images:,} image paths ({n_prompts:,} prompts, {int(missing.sum()):,} left missing) ..."
    )
    t = time.perf_counter()
    made_dirs: set[str] = set()
    src_paths = [str(folder / "sources" / f) for f in src_files]
    for i, path in enumerate(paths):
        if missing[i]:
            continue
        d = path.rsplit("/", 1)[0]
        if d not in made_dirs:
            (root / d).mkdir(parents=True, exist_ok=True)
            made_dirs.add(d)
        full = root / path
        try:
            os.link(src_paths[img_source[i]], full)
        except FileExistsError:
            pass
        if (i + 1) % 200_000 == 0:
            say(f"    {i + 1:,} ({time.perf_counter() - t:.0f} s)")
    say(f"    done in {time.perf_counter() - t:.0f} s ({len(made_dirs):,} directories)")

    say(f"3/4 choosing {spec.records:,} comparisons ...")
    t = time.perf_counter()
    pairs_a: list[np.ndarray] = []
    pairs_b: list[np.ndarray] = []
    spare_a: list[np.ndarray] = []
    spare_b: list[np.ndarray] = []
    sizes_arr = np.array(sizes)
    for k in range(2, int(sizes_arr.max()) + 1):
        ps = np.flatnonzero(sizes_arr == k)
        if ps.size == 0:
            continue
        base = starts[ps][:, None]
        chain = np.array([(j, j + 1) for j in range(k - 1)])
        extra = np.array([(a, b) for a in range(k) for b in range(a + 2, k)]).reshape(-1, 2)
        pairs_a.append((base + chain[:, 0]).ravel())
        pairs_b.append((base + chain[:, 1]).ravel())
        if extra.size:
            spare_a.append((base + extra[:, 0]).ravel())
            spare_b.append((base + extra[:, 1]).ravel())
    a = np.concatenate(pairs_a)
    b = np.concatenate(pairs_b)
    if a.size >= spec.records:
        pick = rng.choice(a.size, spec.records, replace=False)
        a, b = a[pick], b[pick]
    else:
        sa, sb = np.concatenate(spare_a), np.concatenate(spare_b)
        need = spec.records - a.size
        if need > sa.size:
            raise SystemExit(f"{spec.records:,} records need more pairs than {spec.images:,} images allow")
        pick = rng.choice(sa.size, need, replace=False)
        a, b = np.concatenate([a, sa[pick]]), np.concatenate([b, sb[pick]])
    order = rng.permutation(a.size)
    a, b = a[order], b[order]
    swap = rng.random(a.size) < 0.5  # which of the two is the chosen one
    a, b = np.where(swap, b, a), np.where(swap, a, b)
    say(f"    done in {time.perf_counter() - t:.1f} s")

    say(f"4/4 writing train.json ({spec.records:,} records, a JSON list with indent=4) ...")
    t = time.perf_counter()
    prompts = [_prompt(rng, p) for p in range(n_prompts)]
    n = a.size
    votes_total = rng.integers(3, 16, n)
    votes_chosen = np.ceil(votes_total * rng.uniform(0.5, 1.0, n)).astype(np.int64)
    votes_rejected = votes_total - votes_chosen
    confidence = np.round(rng.uniform(0.5, 1.0, n), 4)
    kind = rng.random(n)
    null_vote = kind < 0.005
    null_conf = (kind >= 0.005) & (kind < 0.0065)
    no_conf = (kind >= 0.0065) & (kind < 0.008)
    no_model = (kind >= 0.008) & (kind < 0.009)
    no_path2 = (kind >= 0.009) & (kind < 0.0092)
    counts = {
        "null_vote": int(null_vote.sum()),
        "null_confidence": int(null_conf.sum()),
        "missing_confidence": int(no_conf.sum()),
        "missing_model": int(no_model.sum()),
        "missing_path2": int(no_path2.sum()),
        "records_with_a_missing_image": int((missing[a] | missing[b]).sum()),
    }
    tmp = root / "train.json.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write("[\n")
        a_l, b_l = a.tolist(), b.tolist()
        vc_l, vr_l, conf_l = votes_chosen.tolist(), votes_rejected.tolist(), confidence.tolist()
        prompt_l, model_l = prompt_of.tolist(), [MODELS[m] for m in img_model.tolist()]
        null_vote_l, null_conf_l, no_conf_l = null_vote.tolist(), null_conf.tolist(), no_conf.tolist()
        no_model_l, no_path2_l = no_model.tolist(), no_path2.tolist()
        for i in range(n):
            ia, ib = a_l[i], b_l[i]
            rec: dict[str, Any] = {
                "prompt": prompts[prompt_l[ia]],
                "path1": paths[ia],
                "path2": paths[ib],
                "model1": model_l[ia],
                "model2": model_l[ib],
                "choice_dist": [vc_l[i], vr_l[i]],
                "confidence": conf_l[i],
            }
            if null_vote_l[i]:
                rec["choice_dist"] = [None, vr_l[i]]
            elif null_conf_l[i]:
                rec["confidence"] = None
            elif no_conf_l[i]:
                del rec["confidence"]
            elif no_model_l[i]:
                del rec["model2"]
            elif no_path2_l[i]:
                del rec["path2"]
            text = _indented(rec)
            fh.write(text if i == n - 1 else text + ",\n")
            if (i + 1) % 300_000 == 0:
                say(f"    {i + 1:,} ({time.perf_counter() - t:.0f} s)")
        fh.write("\n]\n")
    tmp.replace(root / "train.json")
    say(
        f"    done in {time.perf_counter() - t:.0f} s ({(root / 'train.json').stat().st_size / 2**20:.0f} MiB)"
    )

    manifest = {
        "spec": asdict(spec),
        "records": n,
        "image_paths": spec.images,
        "image_files": int((~missing).sum()),
        "prompts": n_prompts,
        "sources": len(src_files),
        "max_links_per_source": int(np.bincount(img_source[~missing]).max()),
        "problems": counts,
        "generated_seconds": round(time.perf_counter() - t0, 1),
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    say(f"generated in {manifest['generated_seconds']:.0f} s: {json.dumps(counts)}")
    return Dataset(root, root / "train.json", manifest)


def image_files(root: Path) -> list[str]:
    """Every file under ``root/images`` (for the warm-up pass)."""
    out: list[str] = []
    stack = [str(root / "images")]
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                else:
                    out.append(e.path)
    return out


if __name__ == "__main__":  # python benches/_hpdv3_scale.py DIR [RECORDS]
    spec = Spec.for_records(int(sys.argv[2])) if len(sys.argv) > 2 else Spec()
    ds = load_or_generate(Path(sys.argv[1]), spec)
    print(json.dumps(ds.manifest, indent=2))
