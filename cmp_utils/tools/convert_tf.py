"""Convert TensorFlow(-slim) checkpoints into this project's PyTorch state dicts.

``python -m cmp_utils.tools.convert_tf CHECKPOINT OUT.pt [--kind mobilenet_v1|resnet_v1_152|cmpm_model]``

The kinds, and how TF's tensors map onto the PyTorch networks: :mod:`cmp_utils.models.tf_checkpoint`.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence

from ..core import atomic
from ..models.tf_checkpoint import (
    BN_STATISTICS_CHOICES,
    EMA_CHOICES,
    EXACT_BACKBONE,
    KIND_DEFAULTS,
    KINDS,
    CheckpointMismatch,
    convert_backbone,
    convert_cmpm_model,
    guess_kind,
    read_checkpoint,
    read_word_counts,
)


def convert(
    checkpoint: str | os.PathLike,
    out_path: str | os.PathLike,
    kind: str | None = None,
    scope: str | None = None,
    ema: str | None = None,
    word_counts: str | os.PathLike | None = None,
    out=None,
    bn_statistics: str | None = None,
) -> dict[str, Any]:
    """Convert ``checkpoint`` and write ``out_path`` (torch.save, atomic); print the mapping to ``out``
    (default stdout). Returns what was saved.

    ``ema`` / ``bn_statistics``: ``None`` = the kind's default (:data:`KIND_DEFAULTS`): a trained
    ``cmpm_model`` as the release's test evaluates it (EMA shadows, its statistics), an ImageNet
    backbone as the release's training starts from it (raw weights, statistics 0 / 1).
    """
    out = out or sys.stdout
    variables = read_checkpoint(checkpoint)
    kind = kind or guess_kind(variables)
    if kind not in KINDS:
        raise ValueError(f"parameter kind={kind!r} is not known; use one of {KINDS}")
    default_ema, default_statistics = KIND_DEFAULTS[kind]
    ema, bn_statistics = ema or default_ema, bn_statistics or default_statistics
    if kind == "cmpm_model":
        if bn_statistics != "checkpoint":
            raise ValueError(
                "--bn-statistics reset applies to ImageNet backbones (a trained model needs its statistics)"
            )
        result = convert_cmpm_model(variables, scope, ema)
        conversion = result.pop("conversion")
        result["source_words"] = read_word_counts(word_counts) if word_counts else None
        if result["source_words"] and len(result["source_words"]) + 1 > result["settings"]["vocab_size"]:
            raise CheckpointMismatch(
                f"--word-counts lists {len(result['source_words'])} words but the embedding "
                f"'BiLSTM/token_embedding_weights' has only {result['settings']['vocab_size']} rows"
            )
        saved = {**result, "kind": kind, "backbone": result["settings"]["backbone"], "source": str(checkpoint)}
    else:
        if word_counts:
            raise ValueError("--word-counts applies to --kind cmpm_model only")
        state, conversion, _ = convert_backbone(variables, kind, scope, ema, bn_statistics=bn_statistics)
        backbone = EXACT_BACKBONE["mobilenet_v1" if kind == "mobilenet_v1" else "resnet_v1"]
        saved = {"state_dict": state, "kind": kind, "backbone": backbone, "source": str(checkpoint)}
    conversion.report(out)
    atomic.torch_save(out_path, saved)
    print(f"wrote {out_path} ({kind}); use it with backbone={saved['backbone']!r} for outputs equal to TF's", file=out)
    return saved


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cmp_utils.tools.convert_tf", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="TF checkpoint prefix (e.g. mobilenet_v1_1.0_224.ckpt) or its folder")
    parser.add_argument("out", help="output .pt file")
    parser.add_argument("--kind", choices=KINDS, help="what the checkpoint holds (guessed when left out)")
    parser.add_argument("--scope", help="CNN variable scope (default MobilenetV1 / resnet_v1_152)")
    parser.add_argument(
        "--ema",
        choices=EMA_CHOICES,
        default=None,
        help="auto: take <variable>/ExponentialMovingAverage where present (the release's test; "
        "default of cmpm_model); raw: the trained variables (default of the ImageNet kinds, "
        "what the release's training restores)",
    )
    parser.add_argument(
        "--bn-statistics",
        choices=BN_STATISTICS_CHOICES,
        default=None,
        help="ImageNet kinds: reset (default: moving mean 0, variance 1, as the release's training "
        "starts) or checkpoint (the ImageNet statistics); cmpm_model: checkpoint",
    )
    parser.add_argument("--word-counts", help="cmpm_model: the release's word_counts.txt (its word ids)")
    args = parser.parse_args(argv)
    try:
        convert(
            args.checkpoint,
            args.out,
            args.kind,
            args.scope,
            args.ema,
            args.word_counts,
            bn_statistics=args.bn_statistics,
        )
    except (CheckpointMismatch, FileNotFoundError, ImportError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
