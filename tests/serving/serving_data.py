"""Helpers for the serving tests and the Triton benchmark: free ports, a started server, test pairs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from serving.server import ServerConfig, TritonServer, free_port

PRODUCT_WORDS = ["cordless", "drill", "battery", "charger", "saw", "blade", "hammer", "wrench", "screwdriver",
                 "bit", "set", "paint", "brush", "roller", "white", "black", "steel", "oak", "pine", "volt",
                 "kit", "lamp", "bulb", "led", "faucet", "chrome", "kitchen", "shower", "valve", "hose"]
NON_ASCII = ["Küchenarmatur Edelstahl", "perceuse sans fil à percussion", "天井照明 LED シーリングライト",
             "лампа настольная", "grifo de cocina – níquel", "🔨 hammer 16 oz", "ﬁbre optique", "Øre ålegræs"]


def spread_student(source: str, target: str | Path, *, seed: int = 0, initializer_range: float = 0.3,
                   bias_shift: float = 0.0) -> str:
    """A copy of the tiny student `source` re-initialised with larger weights, so scores spread over
    units (like a trained re-ranker) instead of 1e-4 and a 1e-4 parity check means something."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    shutil.copytree(source, target, dirs_exist_ok=True)
    config = AutoConfig.from_pretrained(source)
    config.initializer_range = initializer_range
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config)
    with torch.no_grad():
        model.classifier.bias += bias_shift
    model.save_pretrained(target)
    return str(target)


def make_pairs(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """`n` pairs with mixed lengths, long texts that get truncated and non-ASCII text."""
    rng = np.random.default_rng(seed)
    queries, products = [], []
    for i in range(n):
        query = " ".join(rng.choice(PRODUCT_WORDS, size=rng.integers(1, 5)))
        kind = i % 5
        if kind == 0:
            product = " ".join(rng.choice(PRODUCT_WORDS, size=rng.integers(2, 8)))
        elif kind == 1:
            product = " ".join(rng.choice(PRODUCT_WORDS, size=rng.integers(150, 300)))[:2000]  # truncated
        elif kind == 2:
            words = " ".join(rng.choice(PRODUCT_WORDS, size=rng.integers(1, 30)))
            product = f"{rng.choice(NON_ASCII)} {words}"
            query = f"{query} {rng.choice(NON_ASCII)}"
        elif kind == 3:
            product = " ".join(rng.choice(PRODUCT_WORDS, size=rng.integers(10, 40)))
        else:
            product = rng.choice(NON_ASCII) * int(rng.integers(1, 40))
        queries.append(query)
        products.append(product)
    return queries, products


def ports() -> dict[str, int]:
    chosen: set[int] = set()
    while len(chosen) < 3:
        chosen.add(free_port())
    http, grpc, metrics = sorted(chosen)
    return {"http_port": http, "grpc_port": grpc, "metrics_port": metrics}


def start_server(repository: str, **options) -> TritonServer:
    config = ServerConfig(repository=str(repository), ready_timeout_s=300.0, **ports(), **options)
    return TritonServer(config).start()
