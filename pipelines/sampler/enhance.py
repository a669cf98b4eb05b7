"""Prompt enhancer: the Gemma 3 text encoder the model already loaded rewrites a short prompt into the kind of
prompt LTX-2.3 was trained on, as Lightricks' ltx-pipelines does with ``enhance_prompt`` (a system prompt, the
user's words, sampling at temperature 0.7, a cleaned reply), optionally looking at one frame (the first frame
or a control frame: the image-to-video variant). The person edits the result before generating.

    res = enhance_prompt(loaded, EnhanceRequest(prompt="a woman in a cafe"))
    res.text, res.notice

The system prompts below are the studio's own words, written to the same brief as ltx-core's Gemma prompts
(gemma_t2v_system_prompt.txt / gemma_i2v_system_prompt.txt): one chronological paragraph, style first, concrete
visuals, present-progressive actions, a soundscape woven in, no invented camera moves or dialogue, restrained
wording, and the user's prompt returned as is when it cannot be used.

Sharing the text encoder with generation: the encoder is one module of the loaded model, and the engine moves it
between CPU and GPU around each prompt encoding on the resident tiers. The enhancer samples token by token with a
KV cache and holds the model's text-encoder lock (``text_encoder_lock``) for ONE forward pass at a time, on the
device where the encoder sits (CPU memory on the resident tiers); the engine takes the same lock around its own
encoding. So an enhancement never waits for a generation, and a generation waits at most one token step for an
enhancement. On the offload tiers accelerate's hooks move models in and out of the GPU behind our back; the
enhancer refuses there rather than race them.

On the tiny built-in model the encoder has random weights and a 50-word vocabulary: the path runs end to end but
the words it returns are noise (the result's notice says so).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from pipelines.errors import Cancelled, UserError

T2V_SYSTEM_PROMPT = """You write prompts for a text-to-video model that also makes the soundtrack. You receive a \
person's short idea for a shot and turn it into one detailed prompt for that model.

Rules:
- Keep everything the person asked for: subjects, style, actions, motion, camera movement, sounds, spoken words.
- Where the idea is vague, choose concrete details: the place, the light, materials, textures, clothing, hair, \
expressions. Do not add people or characters the person did not ask for.
- Describe actions as they happen, with present-progressive verbs ("is walking", "turns"), in the order they \
happen, linked by words such as "as", "then", "while". With no action given, describe small natural movements.
- Weave the sound into the description at the moment it happens: the ambience, specific sound effects, music \
or speech when asked for. Be specific ("a kettle clicks off") rather than general ("there are sounds").
- Speech only when the person mentions talking, singing or a conversation: give the exact words in quotes and \
how the voice sounds; keep any words the person wrote, fixing only typos.
- Begin with the visual style as "Style: <style>," when one is asked for or clear; otherwise use a realistic, \
cinematic look.
- Describe only what can be seen and heard. Use plain, calm wording: "a red coat", "soft window light", not \
intensified adjectives.
- Do not invent camera movement, cuts or timestamps unless they were asked for. For a point-of-view shot, do not \
describe the person whose view it is.
- If the idea is already detailed and in this form, change little; add the sound if it is missing.

Answer with the prompt only: one paragraph of plain English, no heading, no list, no quotes around it, no \
Markdown, nothing before or after it. If the idea is unsafe or cannot be used, answer with it unchanged."""

I2V_SYSTEM_PROMPT = """You write prompts for an image-to-video model that also makes the soundtrack. You receive \
the first frame of the shot (an image) and a person's short idea of what should happen, and you write one prompt \
that continues from that frame.

Rules:
- Look at the image: who or what is in it, where, the style and the mood. Keep the video consistent with it.
- Keep everything the person asked for: actions, motion, camera movement, sounds, spoken words. If the request \
conflicts with the image, follow the request and describe the change from what the image shows.
- Describe what changes and moves, not what the image already shows; restating it in other words can make the \
model cut away from the frame.
- Describe actions as they happen, with present-progressive verbs, in order, linked by "as", "then", "while".
- Weave the sound in at the moment it happens (ambience, effects, music, speech when asked for), matching its \
intensity to the action. Speech only when asked for: exact words in quotes and how the voice sounds.
- Begin with "Style: <style>," only when the style is clear. Describe only what is seen and heard, in plain, \
calm words, and only what can be observed (no guessed feelings or intentions).
- Do not invent camera movement, cuts or timestamps unless they were asked for.

Answer with the prompt only: one short paragraph of plain English, no heading, no list, no Markdown, nothing \
before or after it. If the request is unsafe or cannot be used, answer with it unchanged."""

TINY_NOTICE = ("tiny test model: its text encoder has random weights and a 50-word vocabulary, so the enhanced "
               "prompt is random words; with LTX-2.3's Gemma 3 this rewrites the prompt for real")
MAX_PROMPT_CHARS = 2000
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": "-"})


@dataclass
class EnhanceRequest:
    prompt: str
    model: str = "tiny"
    image: str | None = None     # an image, or a video (then `frame` of it): the i2v variant looks at it
    frame: int = 0
    seed: int = 10
    max_new_tokens: int = 256
    temperature: float = 0.7

    def validate(self) -> "EnhanceRequest":
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise UserError("the prompt to enhance is empty: write a few words about the video first")
        if len(self.prompt) > MAX_PROMPT_CHARS:
            raise UserError(f"the prompt is {len(self.prompt)} characters; the enhancer takes at most {MAX_PROMPT_CHARS}")
        if not (1 <= int(self.max_new_tokens) <= 1024):
            raise UserError(f"max_new_tokens={self.max_new_tokens} must be between 1 and 1024")
        if not (0.0 <= float(self.temperature) <= 2.0):
            raise UserError(f"temperature={self.temperature} must be between 0 and 2")
        if int(self.frame) < 0:
            raise UserError(f"frame={self.frame} must be 0 or more")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise UserError(f"seed={self.seed} must be a non-negative integer")
        return self

    def to_dict(self) -> dict:
        return {"prompt": self.prompt, "model": self.model, "image": self.image, "frame": int(self.frame),
                "seed": int(self.seed), "max_new_tokens": int(self.max_new_tokens),
                "temperature": float(self.temperature)}

    @classmethod
    def from_dict(cls, data: dict) -> "EnhanceRequest":
        if not isinstance(data, dict):
            raise UserError("an enhance request must be a JSON object with a prompt")
        known = {"prompt", "model", "image", "frame", "seed", "max_new_tokens", "temperature"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"unknown enhance setting(s): {', '.join(unknown)}")
        try:
            kw = dict(data)
            for k in ("frame", "seed", "max_new_tokens"):
                if kw.get(k) is not None:
                    kw[k] = int(kw[k])
            if kw.get("temperature") is not None:
                kw["temperature"] = float(kw["temperature"])
            return cls(**{k: v for k, v in kw.items() if v is not None or k == "image"}).validate()
        except (TypeError, ValueError) as exc:
            raise UserError(f"invalid enhance request: {exc}") from None


@dataclass
class EnhanceResult:
    text: str
    raw: str
    seconds: float
    tokens: int
    used_image: bool
    notice: str = ""
    lock_waits: list[float] = field(default_factory=list, repr=False)  # seconds each step waited for the lock
    step_seconds: list[float] = field(default_factory=list, repr=False)  # seconds each step held the lock

    def to_dict(self) -> dict:
        return {"text": self.text, "raw": self.raw, "seconds": round(self.seconds, 3), "tokens": self.tokens,
                "used_image": self.used_image, "notice": self.notice,
                "max_lock_wait": round(max(self.lock_waits, default=0.0), 4)}


def text_encoder_lock(loaded) -> threading.RLock:
    """The lock that serialises use of a loaded model's text encoder (its device moves and forward passes)."""
    lock = loaded.extras.get("text_encoder_lock")
    if lock is None:
        lock = loaded.extras.setdefault("text_encoder_lock", threading.RLock())
    return lock


def clean_response(text: str) -> str:
    """Straight quotes and dashes, no leading non-letters (Gemma likes to open with quotes or bullets), one
    paragraph."""
    text = " ".join(text.translate(_QUOTES).split())
    for i, ch in enumerate(text):
        if ch.isalpha():
            return text[i:]
    return text


def load_frame(path: str, frame: int = 0) -> np.ndarray:
    """An image file, or frame `frame` of a video, as uint8 RGB."""
    from pipelines.video_io import IMAGE_EXTS, read_image, read_video

    if Path(path).suffix.lower() in IMAGE_EXTS:
        return read_image(path)
    frames, _ = read_video(path, max_frames=int(frame) + 1)
    return frames[min(int(frame), len(frames) - 1)]


def _image_inputs(te, frame: np.ndarray):
    """pixel_values for Gemma 3's vision tower (SigLIP at the config's image size, mean/std 0.5) and the token ids
    that stand for the image: [begin-of-image] + image tokens + [end-of-image]."""
    import torch
    from transformers import Gemma3ImageProcessorPil

    size = int(te.config.vision_config.image_size)
    proc = Gemma3ImageProcessorPil(size={"height": size, "width": size})
    pv = proc(images=frame, return_tensors="pt")["pixel_values"]
    n = int(te.config.mm_tokens_per_image)
    img, boi, eoi = int(te.config.image_token_index), int(te.config.boi_token_index), int(te.config.eoi_token_index)
    ids = [img] * n if boi == img else [boi] + [img] * n + [eoi]  # the tiny model shares one id for all three
    return pv, torch.tensor(ids, dtype=torch.long)


def _prompt_ids(tok, system: str, user: str, image_ids=None):
    """Gemma 3's chat layout (the system prompt opens the user turn), the image's ids where it appears."""
    import torch

    def enc(text: str) -> list[int]:
        return list(tok(text, add_special_tokens=False, verbose=False)["input_ids"])

    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    head = enc(f"<start_of_turn>user\n{system}\n\n")
    tail = enc(f"{user}<end_of_turn>\n<start_of_turn>model\n")
    mid = image_ids.tolist() + enc("\n\n") if image_ids is not None else []
    return torch.tensor([bos + head + mid + tail], dtype=torch.long)


def _stop_ids(tok) -> set[int]:
    ids = {tok.eos_token_id} if tok.eos_token_id is not None else set()
    for t in ("<end_of_turn>", "<eos>"):
        i = tok.convert_tokens_to_ids(t)
        if isinstance(i, int) and i != tok.unk_token_id and i >= 0:
            ids.add(i)
    return ids


def _sample(logits, temperature: float, gen, top_k: int = 64, top_p: float = 0.95):
    """Gemma's usual sampling: temperature, top-k 64, top-p 0.95 (greedy at temperature 0)."""
    import torch

    logits = logits.float()
    if temperature <= 0:
        return int(logits.argmax())
    logits = logits / temperature
    k = min(top_k, logits.shape[-1])
    vals, idx = torch.topk(logits, k)
    probs = torch.softmax(vals, -1)
    keep = torch.cumsum(probs, -1) - probs < top_p
    probs = torch.where(keep, probs, torch.zeros_like(probs))
    probs = probs / probs.sum()
    return int(idx[torch.multinomial(probs, 1, generator=gen)])


def enhance_prompt(loaded, req: EnhanceRequest, should_cancel: Callable[[], bool] | None = None,
                   progress: Callable[[float, str], None] | None = None) -> EnhanceResult:
    """Rewrite req.prompt with the loaded model's Gemma text encoder. Returns the cleaned text and the raw reply."""
    import torch
    from transformers import DynamicCache

    req = req.validate()
    pipe = loaded.pipe
    te, tok = getattr(pipe, "text_encoder", None), getattr(pipe, "tokenizer", None)
    if te is None or tok is None or not hasattr(te, "get_input_embeddings"):
        raise UserError("this model has no Gemma text encoder loaded; the enhancer needs it")
    if hasattr(te, "_hf_hook") or any(hasattr(m, "_hf_hook") for m in (pipe.transformer, getattr(pipe, "vae", None))
                                      if m is not None):
        raise UserError("prompt enhancement is not available on the offload memory tiers (model / group offload "
                        "move the text encoder in and out of the GPU during a generation); use the bf16 or fp8 tier")
    t0 = time.perf_counter()
    pixel_values = image_ids = None
    if req.image:
        pixel_values, image_ids = _image_inputs(te, load_frame(req.image, req.frame))
    system = I2V_SYSTEM_PROMPT if req.image else T2V_SYSTEM_PROMPT
    user = f"User's idea: {req.prompt.strip()}"
    ids = _prompt_ids(tok, system, user, image_ids)
    stops = _stop_ids(tok)
    lock = text_encoder_lock(loaded)
    gen = torch.Generator().manual_seed(int(req.seed))
    cache = DynamicCache(config=te.config.get_text_config())
    import inspect

    cache_kw = "cache" if "cache" in inspect.signature(te.forward).parameters else "past_key_values"  # renamed in 5.x
    waits: list[float] = []
    held: list[float] = []
    out_ids: list[int] = []
    step_ids, mask = ids, torch.ones_like(ids)
    for step in range(int(req.max_new_tokens)):
        if should_cancel is not None and should_cancel():
            raise Cancelled("cancelled by the user")
        asked = time.perf_counter()
        with lock:  # one forward pass at a time, where the encoder sits now
            waits.append(time.perf_counter() - asked)
            dev = next(te.parameters()).device
            kw = {"input_ids": step_ids.to(dev), "attention_mask": mask.to(dev), cache_kw: cache, "use_cache": True}
            if step == 0 and pixel_values is not None:
                kw["pixel_values"] = pixel_values.to(dev, next(te.parameters()).dtype)
            with torch.no_grad():
                logits = te(**kw).logits[0, -1].to("cpu")
            held.append(time.perf_counter() - asked - waits[-1])
        nxt = _sample(logits, float(req.temperature), gen)
        if nxt in stops:
            break
        out_ids.append(nxt)
        step_ids = torch.tensor([[nxt]], dtype=torch.long)
        mask = torch.ones(1, mask.shape[1] + 1, dtype=torch.long)
        if progress is not None and step % 8 == 0:
            progress(min(0.99, (step + 1) / req.max_new_tokens), f"writing: {len(out_ids)} tokens")
    raw = tok.decode(out_ids, skip_special_tokens=True)
    text = clean_response(raw)
    notice = TINY_NOTICE if loaded.is_tiny else ""
    if not text:
        text = req.prompt.strip()
        notice = (notice + "; " if notice else "") + "the model returned nothing usable; your prompt is kept as it was"
    return EnhanceResult(text=text, raw=raw, seconds=time.perf_counter() - t0, tokens=len(out_ids),
                         used_image=pixel_values is not None, notice=notice, lock_waits=waits,
                         step_seconds=held)
