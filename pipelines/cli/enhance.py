"""`python -m pipelines enhance --prompt "a woman in a cafe" [--image FRAME.png | --image CLIP.mp4 --frame N]`:
the model's Gemma 3 rewrites the prompt in the style LTX-2.3 was trained on (pipelines.sampler.enhance)."""
from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("enhance", help="rewrite a short prompt with the model's Gemma (LTX-2.3's style)",
                              description="Prompt enhancer. Prints JSON: text, raw, seconds, tokens, notice.")
    p.add_argument("--prompt", required=True)
    p.add_argument("--image", default=None, help="a frame to look at: an image, or a video (see --frame)")
    p.add_argument("--frame", type=int, default=0, help="which frame of --image when it is a video")
    p.add_argument("--seed", type=int, default=10)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--model", default="tiny", help="tiny or a model name from `python -m pipelines models`")
    p.add_argument("--models-dir", default=None)
    p.set_defaults(handler=_enhance)


def _enhance(args) -> int:
    from pipelines.cli import print_json
    from pipelines.models.loader import default_cache
    from pipelines.models.registry import get_spec
    from pipelines.sampler.enhance import EnhanceRequest, enhance_prompt

    req = EnhanceRequest(prompt=args.prompt, model=args.model, image=args.image, frame=args.frame, seed=args.seed,
                         max_new_tokens=args.max_new_tokens, temperature=args.temperature).validate()
    if req.image:
        from pathlib import Path

        from pipelines.errors import UserError

        if not Path(req.image).is_file():
            raise UserError(f"file not found: {req.image}")
    models_dir = args.models_dir
    if args.model != "tiny":
        from pipelines.config import Paths

        md = Paths.resolve(models_dir=args.models_dir).models_dir
        models_dir = str(md) if md else None
    loaded = default_cache().get(get_spec(args.model, models_dir))
    print_json(enhance_prompt(loaded, req).to_dict())
    return 0
