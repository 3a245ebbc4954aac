"""Greedy decoding the way serving engines do it: a KV cache of fixed size allocated once, prefill
eagerly, then one decode step per token for a whole batch, replayed from a CUDA graph captured at
start for each batch size (as vLLM captures decode graphs). It runs on the weights of the loaded
transformers Llama model (the same tensors, no copy); on the CPU the same steps run eagerly.

Shapes: cache [layers, max_batch, kv_heads, max_len, head_dim] for keys and for values. A decode
step of batch b takes tokens[b] and positions[b] (each row at its own position), writes its keys
and values at those positions, attends over the whole cache row with a mask up to the position,
and gives the next tokens[b] (argmax).
"""
import math

import torch
import torch.nn.functional as F


class StaticDecoder:
    def __init__(self, model, max_batch: int, max_len: int, cache=None):
        """`cache(shape, dtype)` gives the zeroed key and value caches (default: two torch.zeros)."""
        cfg = model.config
        self.device, self.dtype = model.device, model.dtype
        self.layers = cfg.num_hidden_layers
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.eps, self.max_batch, self.max_len = cfg.rms_norm_eps, max_batch, max_len
        self.w = dict(model.state_dict())          # the model's own tensors, shared
        shape = (self.layers, max_batch, self.kv_heads, max_len, self.head_dim)
        if cache is None:
            self.k_cache, self.v_cache = (torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(2))
        else:
            self.k_cache, self.v_cache = cache(shape, self.dtype)
        theta = float(getattr(cfg, "rope_theta", None) or 10000.0)
        inv = 1.0 / (theta ** (torch.arange(0, self.head_dim, 2, device=self.device, dtype=torch.float32) / self.head_dim))
        freqs = torch.outer(torch.arange(max_len, device=self.device, dtype=torch.float32), inv)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos, self.sin = emb.cos().to(self.dtype), emb.sin().to(self.dtype)
        self.span = torch.arange(max_len, device=self.device)
        self.graphs: dict[int, tuple] = {}   # batch size -> (graph, tokens buffer, positions buffer, output)

    # --- the model --------------------------------------------------------------------------------
    def _rms(self, x, weight):
        variance = x.float().pow(2).mean(-1, keepdim=True)
        return (x.float() * torch.rsqrt(variance + self.eps)).to(self.dtype) * weight

    @staticmethod
    def _rotate(x):
        half = x.shape[-1] // 2
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

    def _rope(self, x, cos, sin):
        return x * cos + self._rotate(x) * sin

    def _qkv(self, i, h, cos, sin):
        p = f"model.layers.{i}.self_attn."
        b, n, _ = h.shape
        q = F.linear(h, self.w[p + "q_proj.weight"]).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        k = F.linear(h, self.w[p + "k_proj.weight"]).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        v = F.linear(h, self.w[p + "v_proj.weight"]).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        return self._rope(q, cos, sin), self._rope(k, cos, sin), v

    def _mlp_and_out(self, i, x, attn):
        p = f"model.layers.{i}."
        b, n = attn.shape[0], attn.shape[2]
        x = x + F.linear(attn.transpose(1, 2).reshape(b, n, self.heads * self.head_dim),
                         self.w[p + "self_attn.o_proj.weight"])
        h = self._rms(x, self.w[p + "post_attention_layernorm.weight"])
        mlp = F.silu(F.linear(h, self.w[p + "mlp.gate_proj.weight"])) * F.linear(h, self.w[p + "mlp.up_proj.weight"])
        return x + F.linear(mlp, self.w[p + "mlp.down_proj.weight"])

    def _logits_last(self, x):
        x = self._rms(x[:, -1:, :], self.w["model.norm.weight"])
        head = self.w.get("lm_head.weight", self.w["model.embed_tokens.weight"])
        return F.linear(x, head)[:, -1, :]

    def prefill(self, row: int, tokens: list[int]) -> int:
        """Fill cache row `row` with the prompt; returns the first generated token."""
        n = len(tokens)
        ids = torch.tensor([tokens], device=self.device)
        x = F.embedding(ids, self.w["model.embed_tokens.weight"])
        cos, sin = self.cos[:n], self.sin[:n]
        groups = self.heads // self.kv_heads
        for i in range(self.layers):
            h = self._rms(x, self.w[f"model.layers.{i}.input_layernorm.weight"])
            q, k, v = self._qkv(i, h, cos, sin)
            self.k_cache[i, row, :, :n] = k[0]
            self.v_cache[i, row, :, :n] = v[0]
            attn = F.scaled_dot_product_attention(q, k.repeat_interleave(groups, dim=1),
                                                  v.repeat_interleave(groups, dim=1), is_causal=True)
            x = self._mlp_and_out(i, x, attn)
        return int(self._logits_last(x).argmax(-1)[0])

    def step(self, tokens, positions):
        """One decode step for rows 0..b-1: tokens[b] at positions[b] -> next tokens[b]."""
        b = tokens.shape[0]
        rows = self.span[:b]
        x = F.embedding(tokens.view(b, 1), self.w["model.embed_tokens.weight"])
        cos, sin = self.cos[positions].unsqueeze(1).unsqueeze(1), self.sin[positions].unsqueeze(1).unsqueeze(1)
        mask = (self.span.view(1, 1, 1, -1) <= positions.view(b, 1, 1, 1))
        groups = self.heads // self.kv_heads
        for i in range(self.layers):
            h = self._rms(x, self.w[f"model.layers.{i}.input_layernorm.weight"])
            q, k, v = self._qkv(i, h, cos, sin)
            self.k_cache[i, rows, :, positions] = k[:, :, 0, :]
            self.v_cache[i, rows, :, positions] = v[:, :, 0, :]
            keys = self.k_cache[i, :b].repeat_interleave(groups, dim=1)
            values = self.v_cache[i, :b].repeat_interleave(groups, dim=1)
            attn = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask,
                                                  scale=1.0 / math.sqrt(self.head_dim))
            x = self._mlp_and_out(i, x, attn)
        return self._logits_last(x).argmax(-1)

    # --- CUDA graphs ------------------------------------------------------------------------------
    def capture_graphs(self, sizes: list[int]) -> None:
        """One graph per batch size, as serving engines capture them at start."""
        if self.device.type != "cuda":
            return
        pool = torch.cuda.graph_pool_handle()
        for b in sorted(sizes, reverse=True):
            tokens = torch.zeros(b, dtype=torch.long, device=self.device)
            positions = torch.zeros(b, dtype=torch.long, device=self.device)
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):   # warm the kernels up outside the capture
                    self.step(tokens, positions)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                out = self.step(tokens, positions)
            self.graphs[b] = (graph, tokens, positions, out)
        torch.cuda.synchronize()

    def _decode(self, tokens, positions):
        b = tokens.shape[0]
        size = min((s for s in self.graphs if s >= b), default=None)
        if size is None:
            return self.step(tokens, positions)
        graph, t_buf, p_buf, out = self.graphs[size]
        t_buf.zero_()
        p_buf.zero_()
        t_buf[:b].copy_(tokens)
        p_buf[:b].copy_(positions)
        graph.replay()
        return out[:b].clone()

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
        """Greedy continuations of up to max_batch prompts at once (each at most max_len long)."""
        if not 0 < len(prompts) <= self.max_batch:
            raise ValueError(f"1 to {self.max_batch} prompts at once")
        limit = self.max_len - max_tokens
        prompts = [p[-limit:] or [3] for p in prompts]
        first = [self.prefill(row, p) for row, p in enumerate(prompts)]
        tokens = torch.tensor(first, device=self.device)
        positions = torch.tensor([len(p) for p in prompts], device=self.device)
        out = [tokens]
        for _ in range(max_tokens - 1):
            tokens = self._decode(tokens, positions)
            positions = positions + 1
            out.append(tokens)
        return torch.stack(out, dim=1).tolist()
