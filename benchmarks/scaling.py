"""How the head fit and feature extraction grow with the number of images (100 -> 10,000).

Synthetic data: for the head fit, N feature vectors (1280-D like EfficientNet-Lite0's) drawn
around 9 random person centres; for extraction, N images served lazily from the 400 ORL photos
(image i is photo i mod 400), so no image list grows with N and the memory measured is the
extractor's own. Extraction runs at 112×112 to keep the 10,000-image point affordable.
"""
from __future__ import annotations

from typing import Sequence

import torch

from helpers import load_backbone, train_head_on_features
from helpers.data.folders import load_orl
from helpers.features.extract import FINAL, compute
from helpers.train.fit import SMALL_FIT

from .common import Figure, PeakRSS, Section, fmt_s, time_repeats


class LazyImages(Sequence):
    """N images served from a small pool without building an N-long list."""

    def __init__(self, pool, n: int):
        self.pool, self.n = pool, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.pool[j % len(self.pool)] for j in range(*i.indices(self.n))]
        if not -self.n <= i < self.n:
            raise IndexError(i)   # the Sequence protocol: iteration (list(), for) stops here
        return self.pool[(i % self.n) % len(self.pool)]


def synthetic_features(n: int, dim: int = 1280, people: int = 9, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(people, dim, generator=g).relu()
    y = torch.arange(n) % people
    x = (centres[y] + 0.5 * torch.randn(n, dim, generator=g)).relu()
    return x, y


def run(smoke: bool = False, sizes=(100, 300, 1000, 3000, 10000), epochs: int = 50, input_size: int = 112,
        backbone: str = "auto", repeats: int = 3) -> Section:
    if smoke:
        sizes, epochs, input_size, repeats = (20, 40), 2, 64, 1
    bb = load_backbone(backbone, verbose=False)
    pool = load_orl().images
    rows = []
    for n in sizes:
        x, y = synthetic_features(n, bb.feature_dim)
        with PeakRSS() as m_head:
            t_head = time_repeats(lambda: train_head_on_features(x, y, epochs=epochs, progress=False),
                                  repeats=repeats if n <= 3000 else 1, warmup=0)
        images = LazyImages(pool, n)
        with PeakRSS() as m_ext:
            t_ext = time_repeats(lambda: compute(bb, images, size=input_size)[FINAL],
                                 repeats=repeats if n <= 1000 else 1, warmup=0)
        row = {
            "n": n,
            "head_fit_s": round(t_head.median, 3),
            "head_fit_ms_per_item": round(1000 * t_head.median / n, 3),
            "head_fit_peak_rss_mb": round(m_head.delta_mb, 1),
            "extraction_s": round(t_ext.median, 2),
            "extraction_ms_per_image": round(1000 * t_ext.median / n, 2),
            "extraction_peak_rss_mb": round(m_ext.delta_mb, 1),
            "features_mb": round(n * bb.feature_dim * 4 / 2**20, 1),
            "all_input_tensors_mb": round(n * 3 * input_size ** 2 * 4 / 2**20, 1),
        }
        rows.append(row)
        print(f"  [scaling] n={n:>6}: head fit {fmt_s(t_head.median)} ({row['head_fit_ms_per_item']} ms/item, "
              f"+{row['head_fit_peak_rss_mb']} MiB), extraction {fmt_s(t_ext.median)} "
              f"({row['extraction_ms_per_image']} ms/image, +{row['extraction_peak_rss_mb']} MiB; "
              f"features {row['features_mb']} MiB)", flush=True)
    first, last = rows[0], rows[-1]
    grow = last["n"] / first["n"]
    sec = Section("Scaling", config={"sizes": list(sizes), "epochs": epochs, "input_size": input_size,
                                     "backbone": bb.describe(), "feature_dim": bb.feature_dim,
                                     "extraction": "features.compute defaults (engine and batch)", "people": 9,
                                     "head_threads": f"1 below {SMALL_FIT} vectors, else {torch.get_num_threads()}"})
    sec.details = {"rows": rows}
    sec.notes.append(f"The head fit runs on 1 thread below {SMALL_FIT} vectors and on {torch.get_num_threads()} "
                     "above (helpers.train_head_on_features), so ms/item drops where the thread count changes.")
    sec.figures = [
        Figure("scaling.head_fit", f"Head fit time, {last['n']:,} vs {first['n']:,} vectors",
               last["head_fit_s"], "s", f"{first['n']:,} vectors", first["head_fit_s"],
               last["head_fit_s"] / first["head_fit_s"], f"× for {grow:,.0f}× the data"),
        Figure("scaling.extraction", f"Extraction time, {last['n']:,} vs {first['n']:,} images ({input_size}px)",
               last["extraction_s"], "s", f"{first['n']:,} images", first["extraction_s"],
               last["extraction_s"] / first["extraction_s"], f"× for {grow:,.0f}× the data"),
        Figure("scaling.extraction_memory", f"Extra memory while extracting {last['n']:,} images",
               last["extraction_peak_rss_mb"], "MiB", "features alone / all input tensors at once",
               last["features_mb"], None, f"inputs at once would be {last['all_input_tensors_mb']:,.0f} MiB"),
    ]
    return sec
