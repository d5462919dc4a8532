"""Text-encoder throughput on item texts.

    python benchmarks/encode.py [--items PATH_TO_MOVIELENS_DIR] [--batch-sizes 32,64,128]

Encodes the MovieLens catalog's item texts (title with year, genres) when a
MovieLens folder is given (default ../shared/data/ml-100k if present), else a
generated catalog's (title, categories, description), and prints items/s per
batch size. Model load time is reported separately.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from freshrec.datasets.movielens import load_movielens
from freshrec.datasets.synthetic import GeneratorSettings, World
from freshrec.domain import item_text
from freshrec.encoders import build_encoder
from freshrec.settings import EncoderSettings

DEFAULT_ML = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-100k"


def texts_from(path: Path | None) -> tuple[str, list[str]]:
    if path is not None and path.is_dir():
        data = load_movielens(path)
        rows = [r.data for r in data.items if r.data is not None]
        return data.layout, [item_text(str(r["title"]), "", tuple(r["categories"])) for r in rows]  # type: ignore[arg-type]
    world = World(GeneratorSettings(items=2_000, users=1, events=1))
    return "synthetic", [item_text(i["title"], i["description"], tuple(i["categories"])) for i in world.items]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=Path, default=DEFAULT_ML)
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--batch-sizes", default="32,64,128")
    args = parser.parse_args()
    name, texts = texts_from(args.items)
    print(f"{len(texts):,} {name} item texts, torch threads: {torch.get_num_threads()}")
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        start = time.perf_counter()
        encoder = build_encoder(EncoderSettings(model=args.model, batch_size=batch))
        loaded = time.perf_counter() - start
        encoder.encode(texts[:64])  # warm-up
        start = time.perf_counter()
        vectors = encoder.encode(texts)
        elapsed = time.perf_counter() - start
        rate = len(texts) / elapsed
        print(f"{args.model} batch {batch}: {rate:,.0f} items/s (dim {vectors.shape[1]}, load {loaded:.1f} s)")


if __name__ == "__main__":
    main()
