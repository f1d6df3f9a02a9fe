"""`resforce prepare`: a folder of captioned videos -> Wan-VAE latents + umT5 text (resforce.latents).
Under torchrun the ranks share the videos (worlds/latents/prepare.py)."""

from __future__ import annotations


def cmd_prepare(args) -> None:
    from resforce.worlds.latents.prepare import PrepareOptions, run_prepare

    opts = PrepareOptions(videos=args.video_dir, vae=args.vae, text_encoder=args.text_encoder, out=args.out,
                          tokenizer=args.tokenizer, captions=args.captions, chunks=args.chunks,
                          size=tuple(args.size), frame_stride=args.frame_stride,
                          clips_per_video=args.clips_per_video, batch=args.batch, workers=args.workers,
                          dtype=args.dtype, vae_dtype=args.vae_dtype, text_len=args.text_len, device=args.device)
    index, throughput = run_prepare(opts, progress=not args.quiet)
    import os

    if os.environ.get("RANK", "0") != "0":  # torchrun: rank 0 speaks for all
        return
    clips = sum(len(s["clips"]) for s in index["shards"])
    c, t, h, w = index["latent_shape"]
    print(f"wrote {args.out}: {clips} clip(s) of {t} latent frames ({index['geometry']['video_frames']} video "
          f"frames) of {c}x{h}x{w} from {len(index['done'])} video(s), {len(index['skipped'])} video(s) skipped "
          f"(index.json lists them). Train with data.kind=latents data.latents.root={args.out}")


def add_command(sub) -> None:
    from resforce.worlds.latents.prepare import DTYPES, VAE_DTYPES, PrepareOptions

    d = PrepareOptions("", "", "", "")
    p = sub.add_parser("prepare", help="encode captioned videos to Wan-VAE latents + umT5 embeddings (data.kind=latents)",
                       description="Encode a folder of captioned videos (clip.txt beside clip.mp4, or --captions "
                                   "manifest) into a dataset of normalised Wan-VAE latents and umT5 caption "
                                   "embeddings (one safetensors file per video + index.json). Local weights only. "
                                   "Resumable: run the same command again after a stop. Under torchrun the ranks "
                                   "share the videos: torchrun --nproc-per-node N -m resforce.cli prepare ...")
    p.add_argument("video_dir", metavar="VIDEO_DIR", help="folder searched recursively for videos")
    p.add_argument("--vae", required=True, help="local AutoencoderKLWan folder, or a Wan diffusers pipeline folder (vae/)")
    p.add_argument("--text-encoder", required=True,
                   help="local UMT5EncoderModel folder, or a Wan diffusers pipeline folder (text_encoder/, tokenizer/)")
    p.add_argument("--out", required=True, help="dataset folder to write (or to resume)")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder, if not in or beside the text encoder's")
    p.add_argument("--captions", default=None, help="JSON or CSV manifest of captions (default: clip.txt sidecars)")
    p.add_argument("--chunks", type=int, default=d.chunks,
                   help=f"clip length in chunks of 3 latent frames = 12*chunks-3 video frames (default {d.chunks}: "
                        "249 frames, the recipe's 15 s stages; 7 = 81 frames = 5 s at 16 fps)")
    p.add_argument("--size", type=int, nargs=2, default=list(d.size), metavar=("H", "W"),
                   help="frame size, multiples of 8 (default 480 832)")
    p.add_argument("--frame-stride", type=int, default=d.frame_stride, help="keep every k-th frame (Wan: 16 fps)")
    p.add_argument("--clips-per-video", type=int, default=d.clips_per_video,
                   help="clips cut one after the other from each video (0: all that fit)")
    p.add_argument("--batch", type=int, default=d.batch, help="clips of one video per VAE call")
    p.add_argument("--workers", type=int, default=d.workers,
                   help=f"reader threads decoding and resizing videos while the VAE runs (default {d.workers}; "
                        "0: read in the main thread)")
    p.add_argument("--dtype", default=d.dtype, choices=sorted(DTYPES), help="storage dtype")
    p.add_argument("--vae-dtype", default=d.vae_dtype, choices=list(VAE_DTYPES),
                   help="the VAE's compute dtype (auto: bfloat16 on CUDA, float32 on the CPU)")
    p.add_argument("--text-len", type=int, default=d.text_len, help="padded text tokens (Wan: 512)")
    p.add_argument("--device", default="auto", help="auto: CUDA if available (each rank its LOCAL_RANK's GPU), else cpu")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_prepare)
