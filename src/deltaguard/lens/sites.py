"""Where the lens reads the residual stream: one site grammar, parsed once into ``Site``.

Grammar (no shorthands)::

    layers.{i}.resid_pre    input of decoder layer i (layers.0.resid_pre is the embedding output)
    layers.{i}.resid_mid    after layer i's attention has been added to the stream
    layers.{i}.resid_post   output of decoder layer i
    layers.{i}.attn_out     what layer i's attention adds to the stream
    layers.{i}.mlp_out      what layer i's MLP adds to the stream
    final_norm              output of the model's final norm (decoded by the head alone)

Every site has a *depth* on one axis for plots and "first layer" statistics: the embeddings are at
depth 0 and the output of layer i is at depth i + 1; mid-layer sites sit at i + 0.5.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from deltaguard.errors import ConfigError

POINTS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
FINAL_NORM = "final_norm"
_SITE_RE = re.compile(r"layers\.(\d+)\.([a-z_]+)")
_DEPTH_OFFSET = {"resid_pre": 0.0, "resid_mid": 0.5, "attn_out": 0.5, "resid_post": 1.0, "mlp_out": 1.0}


@dataclass(frozen=True, order=True)
class Site:
    """A parsed site: ``layer`` is None only for ``final_norm``."""

    layer: int | None
    point: str

    def __str__(self) -> str:
        return FINAL_NORM if self.point == FINAL_NORM else f"layers.{self.layer}.{self.point}"

    def depth(self, n_layers: int) -> float:
        """Position on the layer axis: 0 = embeddings, i + 1 = after layer i."""
        if self.point == FINAL_NORM:
            return float(n_layers)
        assert self.layer is not None
        return self.layer + _DEPTH_OFFSET[self.point]

    @property
    def is_component(self) -> bool:
        """True for sites that need the block split into attention and MLP (mid, attn_out, mlp_out)."""
        return self.point in ("resid_mid", "attn_out", "mlp_out")


def parse_site(text: str) -> Site:
    """Parse one site name; anything outside the grammar raises ConfigError."""
    if text == FINAL_NORM:
        return Site(None, FINAL_NORM)
    match = _SITE_RE.fullmatch(text)
    if match is None or match.group(2) not in POINTS:
        raise ConfigError(
            f"lens site {text!r} is not valid; use layers.<i>.<point> with point one of "
            f"{', '.join(POINTS)}, or {FINAL_NORM}"
        )
    return Site(int(match.group(1)), match.group(2))


def default_sites(n_layers: int) -> tuple[Site, ...]:
    """The classic logit lens: the embeddings, then the output of every decoder layer."""
    return (Site(0, "resid_pre"), *(Site(i, "resid_post") for i in range(n_layers)))


def resolve_sites(names: tuple[str, ...], n_layers: int) -> tuple[Site, ...]:
    """Parse and range-check site names for a model with ``n_layers`` layers, sorted by depth.

    An empty tuple means ``default_sites``. Duplicates raise ConfigError.
    """
    if not names:
        return default_sites(n_layers)
    sites = [parse_site(name) for name in names]
    for site in sites:
        if site.layer is not None and not 0 <= site.layer < n_layers:
            raise ConfigError(
                f"lens site {site} is out of range for a {n_layers}-layer model (layers 0..{n_layers - 1})"
            )
    seen: set[Site] = set()
    for site in sites:
        if site in seen:
            raise ConfigError(f"lens site {site} is listed twice")
        seen.add(site)
    order = {"resid_pre": 0, "attn_out": 1, "resid_mid": 2, "mlp_out": 3, "resid_post": 4, FINAL_NORM: 5}
    return tuple(sorted(sites, key=lambda s: (s.depth(n_layers), order[s.point])))
