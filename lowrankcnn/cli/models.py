"""``lowrankcnn profile`` and ``lowrankcnn models``: parameters and MACs, next to the published figures."""

from __future__ import annotations

import argparse
import json
from typing import get_args

from ..errors import ConfigError
from ..models import list_models, model_cfg
from ..models.published import compare_published
from ..profiling import Convention, ProfileResult, Rank1Form, profile
from ..tables import format_table
from .common import add_command, json_parent, lowrank_parent, model_parent, model_spec, shape_parent


def _profile_model(name: str, args: argparse.Namespace, convention: str) -> ProfileResult:
    """Count ``name`` as the flags describe it, built on the meta device (nothing allocated or computed)."""
    model = model_spec(args, name).create("meta")
    cfg = model_cfg(model)
    if args.input_size is None and cfg is None:
        raise ConfigError(f"{name} declares no input size; give $input_size", param="input_size")
    size = cfg.input_size if args.input_size is None else args.input_size
    return profile(model, size, convention=convention, training=args.training, rank1_form=args.rank1_form)


def cmd_profile(args: argparse.Namespace) -> None:
    result = _profile_model(args.model, args, args.convention)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result.table())


def cmd_models(args: argparse.Namespace) -> None:
    if args.model_kwargs:
        raise ConfigError("$model_kwargs differ from model to model: give them to `lowrankcnn profile MODEL`")
    given = [f for f in ("lowrank", "rank", "rank_ratio", "keep_dense") if getattr(args, f, None) is not None]
    if given:
        flags = ", ".join("$" + f for f in given)
        raise ConfigError(
            f"models lists the registry as built; {flags}: use `lowrankcnn profile MODEL` to see a conversion"
        )
    names = list_models(args.pattern)
    if not names:
        raise ConfigError(f"no model matches {args.pattern!r}; run `lowrankcnn models` to list them all")
    checks = [
        compare_published(name, args.input_size, args.num_classes, args.in_chans, args.width_mult) for name in names
    ]
    if args.json:
        print(json.dumps([c.to_dict() for c in checks], indent=2))
        return
    head = ("model", "input", "params", "MACs", "paper-convention MACs", "published MACs", "vs published")
    body = [
        (
            c.model,
            str(c.input_size),
            f"{c.params:,}",
            f"{c.macs:,}",
            *(
                ("-", "-", "")
                if c.published_macs is None
                else (
                    f"{c.paper_convention_macs:,}",
                    f"{c.published_macs:,}",
                    "exact" if c.vs_published == 0 else f"{100 * c.vs_published:+.1f}%",
                )
            ),
        )
        for c in checks
    ]
    print(format_table(head, body, left=1, rules=False))


def _counting_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--training", action="store_true", help="count training-only parts (GoogLeNet's auxiliary heads)")
    p.add_argument(
        "--rank1-form",
        choices=get_args(Rank1Form),
        default="decomposed",
        help="count rank-1 layers as deployed (1-D chain, default) or as trained (assembled 3-D)",
    )
    return p


def register(sub: argparse._SubParsersAction) -> None:
    parents = [shape_parent(), model_parent(), lowrank_parent(), _counting_parent(), json_parent()]
    p = add_command(sub, "profile", cmd_profile, "per-layer parameters and MACs of a model", parents)
    p.add_argument("model", help="registry name, e.g. vgg11_gmp_lr")
    p.add_argument(
        "--convention",
        choices=get_args(Convention),
        default="standard",
        help="'paper' adds one MAC per bias, as the published tables do",
    )
    p = add_command(
        sub,
        "models",
        cmd_models,
        "list models with params and MACs (standard convention, inference) at native input size, "
        "next to the published figures (paper convention, training-only heads included where the paper did)",
        parents,
    )
    p.add_argument("pattern", nargs="?", default="*", help="shell-style pattern, e.g. 'vgg11*'")
