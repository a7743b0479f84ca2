"""The `infllava` command. It parses arguments and calls the library; nothing else.

    infllava chat MODEL --image IMG "question"           stream one answer (--image repeats: several images)
    infllava chat MODEL [--image IMG]                    multi-turn chat (/image PATH, /reset, /exit)
    infllava convert-official SRC DST [--vision-tower DIR]
    infllava export MODEL DST                            one standard transformers directory
    infllava train CONFIG.yaml [section.key=value ...]
    infllava data check DATA --images DIR [--model MODEL]
    infllava eval MODEL --data test.jsonl --images DIR [--out scores.json]
    infllava serve MODEL [--port 8000] [--api-key KEY]  an OpenAI-compatible server with batching
    infllava web MODEL [--port 7860]                    a web page to try it (Gradio)
    infllava hrvqa OUT --train N --val N --test N [--heldout N]   (the high-resolution VQA benchmark)
    infllava hrvqa OUT [--mixture N --mixture-val N --generalise N]  (+ simple scenes, a held-out split)

This module lives outside the `infllava` package so that parsing (and every `--help`) imports neither
torch nor transformers: importing `infllava` registers the model with transformers' Auto classes, which
loads both. The library is imported by each command when it runs.

Exit codes: 0 done; 1 a failure, reported in one line naming the problem (a file that cannot be read, a
model that is not an infllava model, ...); 2 a usage error (an argument or a configuration value that
makes no sense), also one line; 130 interrupted. Set INFLLAVA_DEBUG=1 to also get the traceback.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

DEVICE_RE = re.compile(r"^(auto|cpu|mps|(cuda|xpu|npu|hpu)(:\d+)?)$")
DTYPES = ("auto", "float32", "bfloat16", "float16")


class UsageError(Exception):
    """An argument or configuration value that makes no sense (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (exit 2) instead of usage text + error."""

    def error(self, message: str):  # noqa: D401
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        sys.exit(2)


# ---------------------------------------------------------------------------------- argument types


def _positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def _temperature(text: str) -> float:
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (0 = greedy), got {text}")
    return value


def _top_p(text: str) -> float:
    value = _float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _device(text: str) -> str:
    if not DEVICE_RE.match(text):
        raise argparse.ArgumentTypeError(f"unknown device {text!r} (cpu, cuda, cuda:N, mps, xpu, auto)")
    return text


def _text(text: str) -> str:
    """Command-line text must be valid UTF-8 (a terminal in another encoding gives undecodable bytes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError("is not valid UTF-8 text") from None
    return text


def _add_device_dtype(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", type=_device, default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", default=None, choices=DTYPES, help="default: bfloat16 on cuda, float32 on cpu")
    p.add_argument("--quantization", default=None, choices=["nf4", "int8", "none"],
                   help="load the language model 4-bit (nf4) or 8-bit (int8) with bitsandbytes (default: none)")


# ---------------------------------------------------------------------------------- commands


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _chat(args) -> int:
    from infllava.inference import ChatSession, load
    from infllava.processing import load_image

    question = " ".join(args.question)
    from infllava.processing import DEFAULT_MAX_PIXELS

    # --max-pixels: None keeps the model's own limit, 0 lifts it, N sets it
    max_pixels = DEFAULT_MAX_PIXELS if args.max_pixels is None else (args.max_pixels or None)
    images = [load_image(p, max_pixels=max_pixels) for p in args.image]  # fails before the model loads
    _quiet_transformers()
    model, processor = load(args.model_dir, device=args.device, dtype=args.dtype, quantization=args.quantization)
    if args.max_pixels is not None:
        processor.image_processor.max_pixels = max_pixels
    session = ChatSession(model, processor, images=images, max_new_tokens=args.max_new_tokens,
                          temperature=args.temperature, top_p=args.top_p)

    def stream(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    if question:
        session.ask(question, stream)
        sys.stdout.write("\n")
        return 0
    print("infllava chat: type a question; /image PATH to change image, /reset, /exit.", file=sys.stderr)
    while True:
        try:
            line = input("user> ").strip()
        except EOFError:
            print(file=sys.stderr)
            return 0
        except UnicodeDecodeError:
            print("error: that line is not valid UTF-8 text; try again", file=sys.stderr)
            continue
        if not line:
            continue
        if line in ("/exit", "/quit"):
            return 0
        if line == "/reset":
            session.reset()
            continue
        try:
            _text(line)
            if line.startswith("/image "):
                session.set_image(line[len("/image "):].strip())
                continue
            sys.stdout.write("assistant> ")
            session.ask(line, stream)
            sys.stdout.write("\n")
        except (ValueError, OSError, argparse.ArgumentTypeError) as e:
            print(f"error: {_one_line(e)}", file=sys.stderr)


def _convert(args) -> int:
    import torch

    from infllava.checkpoints import convert_official

    _quiet_transformers()
    dtype = getattr(torch, args.dtype) if args.dtype else None
    report = convert_official(args.src, args.dst, vision_tower=args.vision_tower, grid=(args.grid, args.grid),
                              dem_num_heads=args.dem_heads, dtype=dtype)
    print(report.summary())
    print(f"wrote {args.dst} (full report: {args.dst}/conversion_report.json)")
    return 0


def _export(args) -> int:
    from infllava.export import export

    _quiet_transformers()
    out = export(args.model, args.dst, dtype=args.dtype)
    print(f"wrote {out}: loads with AutoModelForImageTextToText / AutoProcessor after `import infllava`")
    return 0


def _train(args) -> int:
    from infllava.training.config import ConfigError, load_config
    from infllava.training.trainer import train

    try:
        cfg = load_config(args.config, args.overrides)  # every key and type checked before any work
        cfg.check_paths()
    except ConfigError as e:
        raise UsageError(str(e)) from e
    final = train(cfg)
    print(f"final model: {final}")
    return 0


def _data_check(args) -> int:
    from infllava.processing import InfLlavaProcessor
    from infllava.templates import TEMPLATES
    from infllava.training.data import check_dataset

    _quiet_transformers()
    if args.template is not None and args.template not in TEMPLATES:
        raise UsageError(f"--template must be one of {', '.join(TEMPLATES)}, got {args.template!r}")
    if args.model:
        from infllava.loading import check_model_type, resolve_source

        path = resolve_source(args.model)
        check_model_type(path)
        processor = InfLlavaProcessor.from_pretrained(path)
    else:
        from infllava.config import tiny_config
        from infllava.tiny import make_tiny_tokenizer

        processor = InfLlavaProcessor.from_config(tiny_config(), make_tiny_tokenizer())
    template = args.template or processor.template
    report = check_dataset(args.data, args.images, processor.tokenizer, template, processor.image_token_id,
                           processor.num_image_tokens, args.max_length, processor.image_processor,
                           verify_images=not args.no_verify_images)
    print(report.format(max_ids=args.show))
    return 0 if report.ok == report.total else 1


def _eval(args) -> int:
    from infllava.evaluation.evaluate import evaluate

    _quiet_transformers()
    r = evaluate(args.model_dir, args.data, args.images, args.out, batch_size=args.batch_size,
                 max_new_tokens=args.max_new_tokens, limit=args.limit, device=args.device, dtype=args.dtype,
                 feature_cache=args.feature_cache, quantization=args.quantization)
    print(f"model {r['model']} (views: {r['views']}, language model {r['quantization'] or 'unquantized'}, "
          f"{r['lm_mib']} MiB) on {r['data']}: {r['seconds']} s, {r['seconds_per_question']} s per question")
    print(f"  overall   {100 * r['accuracy']:6.2f}%  ({r['correct']}/{r['total']})")
    for group in ("by_kind", "by_subtype"):
        for name, v in sorted(r.get(group, {}).items()):
            print(f"  {name:9s} {100 * v['accuracy']:6.2f}%  ({v['correct']}/{v['total']})")
    if r.get("skipped"):
        print(f"  skipped   {r['skipped']} question(s) whose image could not be read (first: {r['skip_reasons'][0]})")
    if r.get("resumed"):
        print(f"  resumed   {r['resumed']} prediction(s) from an earlier interrupted run")
    return 0


def _serve(args) -> int:
    from infllava.serving.api import ServeSettings, serve

    _quiet_transformers()
    name = args.served_model_name or os.path.basename(os.path.normpath(args.model))
    settings = ServeSettings(
        model_name=name, api_key=args.api_key or os.environ.get("INFLLAVA_API_KEY") or None,
        max_batch_size=args.max_batch_size, max_queue=args.max_queue, max_image_pixels=args.max_image_pixels or None,
        max_images_per_request=args.max_images_per_request, max_new_tokens_limit=args.max_new_tokens_limit,
        default_max_tokens=min(256, args.max_new_tokens_limit), max_body_bytes=args.max_body_mb * 2**20,
        batch_window_s=args.batch_window_ms / 1000, encoder_cache_size=args.encoder_cache_size)
    serve(args.model, host=args.host, port=args.port, device=args.device, dtype=args.dtype, settings=settings,
          quantization=args.quantization)
    return 0


def _web(args) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from infllava.serving.web import web

    _quiet_transformers()
    web(args.model, host=args.host, port=args.port, device=args.device, dtype=args.dtype,
        max_new_tokens=args.max_new_tokens, quantization=args.quantization)
    return 0


def _hrvqa(args) -> int:
    from infllava.evaluation.hrvqa.writing import write_benchmark

    mixture = args.mixture or args.mixture_val or args.generalise
    if not mixture or args.train or args.val or args.test or args.heldout:
        # only the mixture asked for (every HR-VQA split 0): an HR-VQA benchmark in OUT and its hrvqa.json stay as they are
        write_benchmark(args.out, train=args.train, val=args.val, test=args.test, heldout=args.heldout, size=args.size,
                        train_format=args.train_format, train_every_subtype=args.train_every_subtype,
                        captions=args.captions)
    if mixture or args.mixture_val or args.generalise:
        from infllava.evaluation.hrvqa.mixture import write_mixture_splits

        write_mixture_splits(args.out, train=args.mixture, val=args.mixture_val, generalise=args.generalise,
                             captions=args.captions)
    return 0


# ---------------------------------------------------------------------------------- parser


def add_hrvqa_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="output directory")
    p.add_argument("--train", type=_non_negative_int, default=2000, help="train images (default 2000)")
    p.add_argument("--val", type=_non_negative_int, default=200, help="val images (default 200)")
    p.add_argument("--test", type=_non_negative_int, default=1000, help="test images (default 1000)")
    p.add_argument("--heldout", type=_non_negative_int, default=0,
                   help="held-out images (default 0: not written): generated like test from a seed of its own, "
                        "for one final check after every choice made on val/test; never train or select on it")
    p.add_argument("--size", type=_positive_int, default=672, help="image side in px (default 672 = 3 x 224)")
    p.add_argument("--train-format", choices=("one", "all"), default="one",
                   help="train records: one per question (default) or one multi-turn record per image; "
                        "val/test/heldout are always one per question")
    p.add_argument("--train-every-subtype", action="store_true",
                   help="train images carry one question of every subtype (7) instead of the 2-4 that "
                        "val/test images carry: ~2.4x the supervision per image for the same tower work")
    p.add_argument("--captions", action="store_true",
                   help="also write train_captions.jsonl (image -> dense scene caption, for stage-1 alignment), "
                        "and mixture-train_captions.jsonl with --mixture (every covered token named: cover regions)")
    p.add_argument("--mixture", type=_non_negative_int, default=0,
                   help="also write N simple-scene training images (mixture-train.jsonl, one multi-turn record "
                        "per image; default 0: none): varied backgrounds, sizes, shapes, colours and phrasings "
                        "(infllava.evaluation.hrvqa.mixture; --size does not apply)")
    p.add_argument("--mixture-val", type=_non_negative_int, default=0,
                   help="also write N simple-scene validation images (mixture-val.jsonl, one record per question)")
    p.add_argument("--generalise", type=_non_negative_int, default=0,
                   help="also write N held-out simple-scene images (generalise.jsonl, one record per question): "
                        "held-out phrasings and styles (gradient backgrounds, outlined shapes) never used in "
                        "training; score it once, never train or select on it")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="infllava", description="INF-LLaVA: dual-perspective high-resolution LLaVA")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser)

    c = sub.add_parser("chat", help="answer questions about one or several images (streams the answer)")
    c.add_argument("model_dir", help="a shipped name (inf-llava-mini) or a model directory")
    c.add_argument("question", nargs="*", type=_text, help="a question; without one, an interactive chat starts")
    c.add_argument("--image", action="append", default=[], metavar="IMAGE",
                   help="image file; repeat for several images (they fill the question's <image> placeholders in "
                        "order, or go before it)")
    c.add_argument("--max-new-tokens", type=_positive_int, default=256)
    c.add_argument("--temperature", type=_temperature, default=0.0, help="0 = greedy")
    c.add_argument("--top-p", type=_top_p, default=1.0, help="nucleus sampling with temperature > 0 (default 1)")
    c.add_argument("--max-pixels", type=_non_negative_int, default=None,
                   help="refuse larger images (decompression-bomb guard; default: the model's limit, 100 MP); "
                        "0 = no limit")
    _add_device_dtype(c)
    c.set_defaults(func=_chat)

    v = sub.add_parser("convert-official", help="convert an official INF-LLaVA checkpoint directory")
    v.add_argument("src")
    v.add_argument("dst", help="a new directory (an existing one, or one inside SRC, is refused)")
    v.add_argument("--vision-tower", default=None, help="local transformers CLIP directory")
    v.add_argument("--grid", type=_positive_int, default=3, help="crops per side the checkpoint was trained with (3)")
    v.add_argument("--dem-heads", type=_positive_int, default=8, help="DEM attention heads (official: 8)")
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
    dsub = d.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    dc = dsub.add_parser("check", help="report samples that training would skip")
    dc.add_argument("data", help="LLaVA conversations (.json or .jsonl)")
    dc.add_argument("--images", default=".", help="folder the image paths are relative to")
    dc.add_argument("--model", default=None, help="model whose tokenizer and template to use (default: tiny)")
    dc.add_argument("--template", default=None, help="a conversation template name (default: the model's)")
    dc.add_argument("--max-length", type=_positive_int, default=2048)
    dc.add_argument("--show", type=_non_negative_int, default=5, help="sample ids shown per problem")
    dc.add_argument("--no-verify-images", action="store_true", help="only check that image files exist")
    dc.set_defaults(func=_data_check)

    e = sub.add_parser("eval", help="score a model on a LLaVA-format question file (per-kind accuracy)")
    e.add_argument("model_dir", help="a shipped name (inf-llava-mini) or a model directory")
    e.add_argument("--data", required=True, help="questions (.jsonl / .json, LLaVA format, optional 'kind')")
    e.add_argument("--images", default=".", help="folder the image paths are relative to")
    e.add_argument("--out", default=None,
                   help="scores and predictions JSON; predictions are also appended to OUT.partial.jsonl as they "
                        "come, and a rerun with the same --out resumes from them")
    e.add_argument("--batch-size", type=_positive_int, default=8)
    e.add_argument("--max-new-tokens", type=_positive_int, default=8)
    e.add_argument("--limit", type=_positive_int, default=None, help="only the first N questions")
    _add_device_dtype(e)
    e.add_argument("--feature-cache", default=None,
                   help="folder caching the frozen tower's outputs per crop (shared by the view ablations)")
    e.set_defaults(func=_eval)

    s = sub.add_parser("serve", help="an OpenAI-compatible server (POST /v1/chat/completions) with batching")
    s.add_argument("model", help="a shipped name (inf-llava-mini) or a model directory")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=_positive_int, default=8000)
    s.add_argument("--api-key", default=None, help="require `Authorization: Bearer KEY` (or INFLLAVA_API_KEY)")
    s.add_argument("--served-model-name", default=None, help="the model id clients send (default: MODEL's name)")
    s.add_argument("--max-batch-size", type=_positive_int, default=8, help="requests decoded together")
    s.add_argument("--max-queue", type=_positive_int, default=64, help="waiting requests before 429")
    s.add_argument("--max-image-pixels", type=_non_negative_int, default=100_000_000, help="0 = no limit")
    s.add_argument("--max-images-per-request", type=_positive_int, default=8)
    s.add_argument("--max-new-tokens-limit", type=_positive_int, default=1024, help="the largest max_tokens accepted")
    s.add_argument("--max-body-mb", type=_positive_int, default=32, help="request bodies above this are refused (413)")
    s.add_argument("--batch-window-ms", type=_non_negative_int, default=20,
                   help="how long a batch waits for more requests after its first")
    s.add_argument("--encoder-cache-size", type=_non_negative_int, default=64,
                   help="images whose visual tokens are kept for later questions about them (0: none)")
    _add_device_dtype(s)
    s.set_defaults(func=_serve)

    w = sub.add_parser("web", help="a web page to try a model (Gradio): images, streamed chat, what the model sees")
    w.add_argument("model", help="a shipped name (inf-llava-mini) or a model directory")
    w.add_argument("--host", default="127.0.0.1")
    w.add_argument("--port", type=_positive_int, default=7860)
    w.add_argument("--max-new-tokens", type=_positive_int, default=128)
    _add_device_dtype(w)
    w.set_defaults(func=_web)

    h = sub.add_parser("hrvqa", help="write the procedural high-resolution VQA benchmark",
                       description="Write the procedural high-resolution VQA benchmark (HR-VQA).")
    add_hrvqa_arguments(h)
    h.set_defaults(func=_hrvqa)
    return ap


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
    except SystemExit as e:  # --help (0) or a usage error already reported in one line (2)
        return int(e.code or 0)
    # argparse gives an empty `question` when it follows --image; collect the words it left over
    if extra and (args.command != "chat" or any(x.startswith("-") for x in extra)):
        sys.stderr.write(f"infllava {args.command}: error: unrecognized arguments: {' '.join(extra)} "
                         f"(see infllava {args.command} --help)\n")
        return 2
    if extra:
        try:
            args.question = list(args.question) + [_text(x) for x in extra]
        except argparse.ArgumentTypeError as e:
            sys.stderr.write(f"infllava chat: error: the question {e}\n")
            return 2
    where = f"infllava {args.command}" + (f" {args.data_command}" if getattr(args, "data_command", None) else "")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        sys.stderr.write(f"{where}: interrupted\n")
        return 130
    except UsageError as e:
        sys.stderr.write(f"{where}: error: {_one_line(e)}\n")
        return 2
    except MemoryError:
        sys.stderr.write(f"{where}: error: out of memory (the model or the data do not fit this machine)\n")
        return 1
    except Exception as e:  # noqa: BLE001 - a failure is one line naming it, never a traceback
        if os.environ.get("INFLLAVA_DEBUG"):
            import traceback

            traceback.print_exc()
        prefix = "" if isinstance(e, (ValueError, OSError)) else f"{type(e).__name__}: "
        sys.stderr.write(f"{where}: error: {prefix}{_one_line(e)}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
