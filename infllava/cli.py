"""The `infllava` command. It only parses arguments and calls the library.

    infllava chat MODEL_DIR --image IMG "question"     stream one answer
    infllava chat MODEL_DIR [--image IMG]              multi-turn chat (/image PATH, /reset, /exit)
    infllava chat MODEL --image A --image B "question"  several images (<image> placeholders, in order)
    infllava convert-official SRC DST [--vision-tower DIR]
    infllava export MODEL DST                           one standard transformers directory
    infllava train CONFIG.yaml [section.key=value ...]
    infllava data check DATA --images DIR [--model MODEL_DIR]
    infllava eval MODEL_DIR --data test.jsonl --images DIR [--out scores.json]
    infllava hrvqa OUT --train N --val N --test N      (the high-resolution VQA benchmark)
"""

from __future__ import annotations

import argparse
import sys

from .templates import template_names


def _chat(args) -> int:
    from transformers.utils import logging as hf_logging

    from .inference import ChatSession, load
    from .processing import load_image

    images = [load_image(p, max_pixels=args.max_pixels or None) for p in args.image]  # fails before the model loads
    hf_logging.disable_progress_bar()
    model, processor = load(args.model_dir, device=args.device, dtype=args.dtype)
    session = ChatSession(model, processor, images=images, max_new_tokens=args.max_new_tokens,
                          temperature=args.temperature)

    def stream(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    if args.question:
        session.ask(" ".join(args.question), stream)
        sys.stdout.write("\n")
        return 0
    print("infllava chat: type a question; /image PATH to change image, /reset, /exit.", file=sys.stderr)
    while True:
        try:
            line = input("user> ").strip()
        except EOFError:
            print(file=sys.stderr)
            return 0
        if not line:
            continue
        if line in ("/exit", "/quit"):
            return 0
        if line == "/reset":
            session.reset()
            continue
        if line.startswith("/image "):
            try:
                session.set_image(line[len("/image "):].strip())
            except ValueError as e:
                print(f"error: {e}", file=sys.stderr)
            continue
        sys.stdout.write("assistant> ")
        session.ask(line, stream)
        sys.stdout.write("\n")


def _convert(args) -> int:
    import torch

    from .checkpoints import convert_official

    dtype = getattr(torch, args.dtype) if args.dtype else None
    report = convert_official(args.src, args.dst, vision_tower=args.vision_tower, grid=(args.grid, args.grid),
                              dem_num_heads=args.dem_heads, dtype=dtype)
    print(report.summary())
    print(f"wrote {args.dst} (full report: {args.dst}/conversion_report.json)")
    return 0


def _export(args) -> int:
    from transformers.utils import logging as hf_logging

    from .export import export

    hf_logging.disable_progress_bar()
    out = export(args.model, args.dst, dtype=args.dtype)
    print(f"wrote {out}: loads with AutoModelForImageTextToText / AutoProcessor after `import infllava`")
    return 0


def _train(args) -> int:
    from .training.config import load_config
    from .training.trainer import train

    cfg = load_config(args.config, args.overrides)  # every key and type checked before any work
    final = train(cfg)
    print(f"final model: {final}")
    return 0


def _data_check(args) -> int:
    from transformers.utils import logging as hf_logging

    from .processing import InfLlavaProcessor
    from .training.data import check_dataset

    hf_logging.disable_progress_bar()
    if args.model:
        processor = InfLlavaProcessor.from_pretrained(args.model)
    else:
        from .config import tiny_config
        from .tiny import make_tiny_tokenizer

        processor = InfLlavaProcessor.from_config(tiny_config(), make_tiny_tokenizer())
    template = args.template or processor.template
    report = check_dataset(args.data, args.images, processor.tokenizer, template, processor.image_token_id,
                           processor.num_image_tokens, args.max_length, processor.image_processor,
                           verify_images=not args.no_verify_images)
    print(report.format(max_ids=args.show))
    return 0 if report.ok == report.total else 1


def _eval(args) -> int:
    from transformers.utils import logging as hf_logging

    from .evaluation.evaluate import evaluate

    hf_logging.disable_progress_bar()
    r = evaluate(args.model_dir, args.data, args.images, args.out, batch_size=args.batch_size,
                 max_new_tokens=args.max_new_tokens, limit=args.limit, device=args.device, dtype=args.dtype,
                 feature_cache=args.feature_cache)
    print(f"model {r['model']} (views: {r['views']}) on {r['data']}: {r['seconds']} s")
    print(f"  overall   {100 * r['accuracy']:6.2f}%  ({r['correct']}/{r['total']})")
    for group in ("by_kind", "by_subtype"):
        for name, v in sorted(r.get(group, {}).items()):
            print(f"  {name:9s} {100 * v['accuracy']:6.2f}%  ({v['correct']}/{v['total']})")
    return 0


def _hrvqa(args) -> int:
    from .evaluation.hrvqa.writing import main as hrvqa_main

    return hrvqa_main(args.rest)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="infllava", description="INF-LLaVA: dual-perspective high-resolution LLaVA")
    sub = ap.add_subparsers(dest="command", required=True)

    c = sub.add_parser("chat", help="answer questions about an image (streams the answer)")
    c.add_argument("model_dir")
    c.add_argument("question", nargs="*", help="a question; without one, an interactive chat starts")
    c.add_argument("--image", action="append", default=[], metavar="IMAGE",
                   help="image file; repeat for several images (they fill the question's <image> placeholders in "
                        "order, or go before it)")
    c.add_argument("--max-new-tokens", type=int, default=256)
    c.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    c.add_argument("--max-pixels", type=int, default=100_000_000,
                   help="refuse larger images (decompression-bomb guard); 0 = no limit")
    c.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    c.add_argument("--dtype", default=None, help="float32, bfloat16, float16 (default: bf16 on cuda, fp32 on cpu)")
    c.set_defaults(func=_chat)

    v = sub.add_parser("convert-official", help="convert an official INF-LLaVA checkpoint directory")
    v.add_argument("src")
    v.add_argument("dst")
    v.add_argument("--vision-tower", default=None, help="local transformers CLIP directory")
    v.add_argument("--grid", type=int, default=3, help="crops per side the checkpoint was trained with (3)")
    v.add_argument("--dem-heads", type=int, default=8, help="DEM attention heads (official: 8)")
    v.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="cast the weights")
    v.set_defaults(func=_convert)

    x = sub.add_parser("export", help="write any model infllava loads as one standard transformers directory")
    x.add_argument("model", help="a shipped name (inf-llava-mini), a parts or a full model directory")
    x.add_argument("dst", help="new directory to write")
    x.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="weights dtype (float32)")
    x.set_defaults(func=_export)

    t = sub.add_parser("train", help="train a stage (align / pretrain / finetune) from a YAML config")
    t.add_argument("config", help="YAML file (see configs/)")
    t.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.lr=2e-5")
    t.set_defaults(func=_train)

    d = sub.add_parser("data", help="inspect training data")
    dsub = d.add_subparsers(dest="data_command", required=True)
    dc = dsub.add_parser("check", help="report samples that training would skip")
    dc.add_argument("data", help="LLaVA conversations (.json or .jsonl)")
    dc.add_argument("--images", default=".", help="folder the image paths are relative to")
    dc.add_argument("--model", default=None, help="model dir whose tokenizer and template to use (default: tiny)")
    dc.add_argument("--template", default=None, choices=template_names())
    dc.add_argument("--max-length", type=int, default=2048)
    dc.add_argument("--show", type=int, default=5, help="sample ids shown per problem")
    dc.add_argument("--no-verify-images", action="store_true", help="only check that image files exist")
    dc.set_defaults(func=_data_check)

    e = sub.add_parser("eval", help="score a model on a LLaVA-format question file (per-kind accuracy)")
    e.add_argument("model_dir")
    e.add_argument("--data", required=True, help="questions (.jsonl / .json, LLaVA format, optional 'kind')")
    e.add_argument("--images", default=".", help="folder the image paths are relative to")
    e.add_argument("--out", default=None, help="write scores and predictions to this JSON file")
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--max-new-tokens", type=int, default=8)
    e.add_argument("--limit", type=int, default=None, help="only the first N questions")
    e.add_argument("--device", default=None)
    e.add_argument("--dtype", default=None)
    e.add_argument("--feature-cache", default=None,
                   help="folder caching the frozen tower's outputs per crop (shared by the view ablations)")
    e.set_defaults(func=_eval)

    h = sub.add_parser("hrvqa", help="write the procedural high-resolution VQA benchmark", add_help=False)
    h.add_argument("rest", nargs=argparse.REMAINDER)
    h.set_defaults(func=_hrvqa)
    return ap


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse gives an empty `question` when it follows --image; collect the words it left over
    if extra and (args.command != "chat" or any(e.startswith("-") for e in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.question = list(args.question) + extra
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, OSError) as e:  # bad input: a message, not a traceback
        print(f"infllava {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
