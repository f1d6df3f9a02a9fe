"""Wan-VAE latents and umT5 text embeddings: `resforce prepare` writes them, the `latents`
world streams them, `resforce generate --prompt` encodes a prompt and decodes the rollout.

geometry.py     how video frames map to latent frames and chunks (Wan: 1 + 4k -> 1 + k)
local.py        local model folders (never downloads), errors naming the flag
vae.py          AutoencoderKLWan: normalised encode, decode, streaming chunk-by-chunk decode
text_encoder.py UMT5EncoderModel + tokenizer, embeddings as WanPipeline makes them
captions.py     clip.txt sidecars or one JSON/CSV manifest
dataset.py      the prepared dataset on disk: safetensors shards + index.json
prepare.py      the resumable `resforce prepare` pipeline
"""
