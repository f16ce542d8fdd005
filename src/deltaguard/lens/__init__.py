"""Logit lens: decode every layer's residual stream through the final norm and head.

Shows *where* in the network refusal forms and where a fine-tune, or its compressed delta, breaks or
restores it. Entry point: ``logit_lens(model, tokenizer, prompts, LensConfig(...)) -> LensResult``;
plots: ``deltaguard.lens.plots.save_all(result, out_dir)``.
"""

from deltaguard.lens.api import logit_lens
from deltaguard.lens.config import LensConfig
from deltaguard.lens.core import LensParts, decode, find_parts
from deltaguard.lens.result import LensResult, load_result, merge_results
from deltaguard.lens.sites import Site, parse_site
from deltaguard.lens.tokens import TokenSet, resolve_token_set, resolve_token_sets

__all__ = [
    "LensConfig", "LensParts", "LensResult", "Site", "TokenSet", "decode", "find_parts", "load_result",
    "logit_lens", "merge_results", "parse_site", "resolve_token_set", "resolve_token_sets",
]
