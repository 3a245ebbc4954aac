"""Write a decoder LLM with random weights to local disk, once: config.json + model.safetensors, in
the layout `from_pretrained` reads. Stands in for downloading a model (no hub access needed).

Usage: python make_weights.py DIR [--size tiny|small|8b] [--device cpu|cuda]
Sizes are Llama-architecture shapes: tiny (~20M params, for tests), small (~0.2B, CPU benchmark),
8b (Llama-3-8B shape, ~8.0B params, 16 GB in bf16).
"""
import argparse
import json
import os
import time

SIZES = {
    "tiny": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=688, vocab_size=32000),
    "small": dict(hidden_size=1024, num_hidden_layers=12, num_attention_heads=16, num_key_value_heads=4,
                  intermediate_size=2816, vocab_size=32000),
    "8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=14336, vocab_size=128256, rope_theta=500000.0),
}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("dir")
    p.add_argument("--size", choices=sorted(SIZES), default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="bfloat16 or float32 (default: bfloat16 on cuda, float32 on cpu)")
    a = p.parse_args()
    marker = os.path.join(a.dir, "rewarm-weights.json")
    want = {"size": a.size, "dtype": a.dtype or ("bfloat16" if a.device.startswith("cuda") else "float32")}
    if os.path.exists(marker) and json.load(open(marker)) == want:
        print(f"weights already in {a.dir}")
        return
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    t = time.time()
    dtype = getattr(torch, want["dtype"])
    config = LlamaConfig(max_position_embeddings=4096, tie_word_embeddings=False, **SIZES[a.size])
    torch.manual_seed(0)
    torch.set_default_dtype(dtype)  # create the parameters in their final dtype: no fp32 copy of 8B
    with torch.device(a.device):
        model = LlamaForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    model.config.torch_dtype = dtype
    os.makedirs(a.dir, exist_ok=True)
    model.save_pretrained(a.dir, safe_serialization=True)
    with open(marker, "w") as f:
        json.dump(want, f)
    params = sum(x.numel() for x in model.parameters())
    print(f"wrote {params / 1e9:.2f}B params ({want['dtype']}) to {a.dir} in {time.time() - t:.1f}s")


if __name__ == "__main__":
    main()
