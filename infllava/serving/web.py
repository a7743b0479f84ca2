"""`infllava web MODEL`: a Gradio page to try a model: upload images (several allowed) or paste one, ask, the answer streams
in, multi-turn with a reset; beside the chat, what the model sees (its input, local crops, global crops,
thumbnail: `visualize.crops_picture`). A bad image (unreadable, too large) is reported in the page.

The chat runs through `ChatSession` (the images are encoded once per upload), like `infllava chat`. Needs the
`web` extra (gradio).
"""

from __future__ import annotations

import os
import queue
import tempfile
import threading
from pathlib import Path

import gradio as gr

from ..inference import ChatSession
from ..processing import ImageLoadError, load_image
from ..visualize import crops_picture

ROOT = Path(__file__).resolve().parent.parent.parent


def build_app(model, processor, title: str = "INF-LLaVA", examples: list[list[str]] | None = None,
              max_new_tokens: int = 128) -> gr.Blocks:
    pictures = Path(tempfile.mkdtemp(prefix="infllava-web-"))

    def load_images(files, pasted=None):
        """New images (uploaded files, then a pasted image): a new conversation about them; the crop picture
        of the first."""
        paths = [f if isinstance(f, str) else getattr(f, "name", None) or f.path for f in (files or [])]
        paths += [pasted] if pasted else []
        if not paths:
            return None, None, [], ""
        images, problems = [], []
        for p in paths:
            try:
                images.append(load_image(p, max_pixels=processor.image_processor.max_pixels))
            except (ImageLoadError, OSError, ValueError) as e:  # reported in the page; the others are used
                problems.append(f"**Image not loaded:** {' '.join(str(e).split())}")
        if not images:
            return None, None, [], "  \n".join(problems)
        session = ChatSession(model, processor, images=images, max_new_tokens=max_new_tokens)
        picture = crops_picture(images[0], processor.image_processor, pictures / f"crops-{os.getpid()}-{id(session)}.png")
        note = f"{len(images)} image(s) loaded; the picture shows what the model sees of the first."
        return session, str(picture), [], "  \n".join(problems + [note])

    def ask(question, history, session):
        question = (question or "").strip()
        history = list(history or [])
        if not question:
            yield history, session, "", "Type a question."
            return
        if session is None:
            session = ChatSession(model, processor, max_new_tokens=max_new_tokens)
        history += [{"role": "user", "content": question}, {"role": "assistant", "content": ""}]
        pieces: queue.Queue = queue.Queue()
        outcome: dict = {}

        def work():
            try:
                outcome["answer"] = session.ask(question, on_text=pieces.put)
            except Exception as e:  # noqa: BLE001 - shown in the page
                outcome["error"] = " ".join(str(e).split())
            finally:
                pieces.put(None)

        threading.Thread(target=work, daemon=True).start()
        while True:
            piece = pieces.get()
            if piece is None:
                break
            history[-1]["content"] += piece
            yield history, session, "", ""
        if "error" in outcome:
            history[-1]["content"] = f"(error: {outcome['error']})"
            yield history, session, "", f"**Error:** {outcome['error']}"
        else:
            history[-1]["content"] = outcome.get("answer", history[-1]["content"])
            yield history, session, "", ""

    def reset(session):
        if session is not None:
            session.reset()
        return [], session, ""

    with gr.Blocks(title=title) as demo:
        gr.Markdown(f"# {title}\nUpload one or several images, then ask. The model sees each image from two "
                    "perspectives: local crops (details) and global crops (the whole scene), plus a thumbnail.")
        session = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                files = gr.File(label="Images", file_count="multiple", file_types=["image"], elem_id="images")
                pasted = gr.Image(label="Or paste an image", sources=["clipboard", "upload"], type="filepath",
                                  elem_id="pasted", height=140)
                seen = gr.Image(label="What the model sees: input, local crops, global crops, thumbnail",
                                type="filepath", interactive=False, elem_id="crops", height=320)
                status = gr.Markdown("", elem_id="status")
            with gr.Column(scale=1):
                chat = gr.Chatbot(label="Chat", elem_id="chat", height=420)
                question = gr.Textbox(label="Question", placeholder="What is in the picture?", elem_id="question")
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="send")
                    clear = gr.Button("Reset conversation", elem_id="reset")
        if examples:
            gr.Examples(examples=examples, inputs=[files, question], label="Examples")
        files.change(load_images, [files, pasted], [session, seen, chat, status])
        pasted.change(load_images, [files, pasted], [session, seen, chat, status])
        send.click(ask, [question, chat, session], [chat, session, question, status])
        question.submit(ask, [question, chat, session], [chat, session, question, status])
        clear.click(reset, [session], [chat, session, status])
    return demo


def default_examples() -> list[list[str]] | None:
    example = ROOT / "examples" / "hrvqa-example.png"
    if example.is_file():
        return [[[str(example)], "What color is the small shape? Answer with one word."]]
    return None


def web(model_source: str, host: str = "127.0.0.1", port: int = 7860, device=None, dtype=None,
        max_new_tokens: int = 128, quantization: str | None = None) -> None:
    """Load `model_source` and serve the page until interrupted."""
    from ..inference import load

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    model, processor = load(model_source, device=device, dtype=dtype, quantization=quantization)
    demo = build_app(model, processor, title=f"INF-LLaVA: {Path(str(model_source)).name}",
                     examples=default_examples(), max_new_tokens=max_new_tokens)
    print(f"web demo on http://{host}:{port}", flush=True)
    demo.queue().launch(server_name=host, server_port=port, share=False, show_error=True, quiet=True)
