"""The demo's A/B readout table, from a readout the statistics module computes (no Spark)."""

from __future__ import annotations

import pandas as pd
from rich.console import Console

from lambdarec.demo import AB_POLICIES, AB_VARIANTS, ab_settings, readout_table
from lambdarec.monitoring import ab


def _readout() -> dict:
    rows = [
        {
            "day": "2026-12-06",
            "variant": variant,
            "user_id": f"u{n}",
            "impressions": 30,
            "lists": 3,
            "clicks": n % 3,
            "carts": n % 2,
            "purchases": int(variant == "champion" and n % 4 == 0),
            "revenue": 25.0 if variant == "champion" and n % 4 == 0 else 0.0,
            "clicks_top_k": n % 3,
            "shown_top_k": 30,
        }
        for n in range(40)
        for variant in (["champion"] if n % 2 else ["popular"])
    ]
    return ab.readout(
        pd.DataFrame(rows), control="champion", variants=["champion", "popular"], min_lists=10
    )


def test_the_table_shows_each_variant_with_intervals_and_p_values() -> None:
    readout = _readout()
    console = Console(width=120, record=True)
    console.print(readout_table(readout))
    text = console.export_text()
    assert "champion" in text and "popular" in text
    popular = readout["period"]["tests"]["popular"]["metrics"]
    for metric in ("ctr_at_k", "conversion", "revenue_per_1000"):
        assert f"{popular[metric]['p_value']:.3g}" in text
    ctr = readout["period"]["variants"]["champion"]["metrics"]["ctr_at_k"]
    assert f"{ctr['value']:.2%}" in text
    assert "impressions" in text and "…" not in text  # headers wrap, never cut


def test_the_demo_runs_the_champion_against_popular_half_each() -> None:
    from lambdarec.config import Settings

    settings = ab_settings(Settings())
    assert (settings.ab_variants, settings.ab_policies) == (AB_VARIANTS, AB_POLICIES)
    assert settings.ab_variant_names == ["champion", "popular"]
