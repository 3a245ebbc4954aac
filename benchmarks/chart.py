"""Draw a benchmark's result as a PNG beside its JSON: a restore benchmark (restore.py) as stacked
stages, cold start vs each restore; a memory-restore benchmark (memory_restore.py) as fill GB/s by
readers beside its yardsticks.
Usage: .venv/bin/python benchmarks/chart.py benchmarks/results/restore_cuda_8b_h200.json [...]
A stock-vLLM benchmark (serving.py --engine vllm) as two panels: the cold starts by vLLM's stages, the median
restore of each sleep level and page-cache state by rewarm's.
(needs matplotlib: pip install '.[bench]')"""
from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLD_STAGES = ["import", "load", "movable", "kv_reserve", "compile", "graphs", "warmup"]
RESTORE_STAGES = [("store checks", ("find", "fingerprint", "verify")), ("rootfs diff", ("rootfs",)),
                  ("CRIU", ("criu",)), ("CUDA restore", ("cuda_driver_init", "cuda_query", "cuda_restore", "cuda_unlock")),
                  ("resume hook (vLLM: wake_up)", ("resume",))]


def bars(state: dict) -> tuple[list[str], dict[str, list[float]]]:
    labels = ["cold start"] + [f"restore {i}\nTHP {r['thp']}\ncache {r['page_cache']}"
                               for i, r in enumerate(state["restores"], start=1)]
    parts: dict[str, list[float]] = {}
    worker = state["cold"]["health"]["stages"]
    n = len(labels)
    for i, name in enumerate(COLD_STAGES):
        parts.setdefault(f"cold: {name}", [0.0] * n)[0] = worker.get(name, 0.0)
    for j, r in enumerate(state["restores"], start=1):
        s = dict(r["stages"])
        s.setdefault("criu", s["runtime_restore"] - s.get("cuda_restore", 0.0))
        for name, keys in RESTORE_STAGES:
            parts.setdefault(name, [0.0] * n)[j] = sum(s.get(k, 0.0) for k in keys)
    totals = [state["cold"]["first_token_s"]] + [r["first_token_s"] for r in state["restores"]]
    accounted = [sum(v[i] for v in parts.values()) for i in range(n)]
    parts["other (runtime, process start, first token)"] = [max(t - a, 0.0) for t, a in zip(totals, accounted)]
    return labels, parts


def draw(path: str) -> str:
    with open(path) as f:
        state = json.load(f)
    if "captures" in state:
        return draw_vllm(path, state)
    return draw_memory(path, state) if "runs" in state else draw_restore(path, state)


def draw_memory(path: str, state: dict) -> str:
    fig, ax = plt.subplots(figsize=(7, 5))
    for thp in ("madvise", "always"):
        for cache in ("warm", "dropped"):
            runs = [r for r in state["runs"] if (r["thp"], r["cache"]) == (thp, cache) and r.get("fill_s")]
            if runs:
                ax.plot([r["readers"] for r in runs], [r["fill_bytes"] / r["fill_s"] / 1e9 for r in runs],
                        marker="o", label=f"CRIU fill, THP {thp}, cache {cache}")
    yard = state["yardstick"]["thp"]
    ax.plot([int(k) for k in yard], list(yard.values()), "k--", label="C fill, page cache (yardstick)")
    ax.axhline(state["disk_read_gbps"], color="grey", linestyle=":", label="disk read (yardstick)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("readers")
    ax.set_ylabel("GB/s")
    ax.set_title(f"Memory restore of {state['snapshot_bytes'] / 1e9:.1f} GB, {state['machine']['cores']} cores")
    ax.legend(fontsize=7)
    return _save(fig, path)


def _save(fig: "plt.Figure", path: str) -> str:
    fig.tight_layout()
    out = path.rsplit(".", 1)[0] + ".png"
    fig.savefig(out, dpi=110)
    return out


def draw_restore(path: str, state: dict) -> str:
    labels, parts = bars(state)
    fig, ax = plt.subplots(figsize=(2 + 1.3 * len(labels), 5))
    bottom = [0.0] * len(labels)
    for name, values in parts.items():
        if any(values):
            ax.bar(labels, values, bottom=bottom, label=name)
            bottom = [b + v for b, v in zip(bottom, values)]
    for i, total in enumerate(bottom):
        ax.text(i, total, f"{total:.1f}s", ha="center", va="bottom")
    where = state.get("gpu", [state["machine"]["cpu"]])[0]
    ax.set_title(f"LLM worker {state['size']} on {where}: time to first token")
    ax.set_ylabel("seconds")
    ax.tick_params(axis="x", labelsize=7)
    ax.legend(fontsize=7, loc="upper right")
    return _save(fig, path)


def _stack(ax: "plt.Axes", labels: list[str], parts: dict[str, list[float]], totals: list[float]) -> None:
    accounted = [sum(v[i] for v in parts.values()) for i in range(len(labels))]
    parts["other"] = [max(t - a, 0.0) for t, a in zip(totals, accounted)]
    bottom = [0.0] * len(labels)
    for name, values in parts.items():
        if any(values):
            ax.bar(labels, values, bottom=bottom, label=name)
            bottom = [b + v for b, v in zip(bottom, values)]
    for i, total in enumerate(totals):
        ax.text(i, total, f"{total:.1f}s" if total >= 10 else f"{total:.2f}s", ha="center", va="bottom")
    ax.set_ylabel("seconds to first token")
    ax.tick_params(axis="x", labelsize=8)
    ax.legend(fontsize=7, loc="upper right")


def draw_vllm(path: str, state: dict) -> str:
    fig, (cold_ax, restore_ax) = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [1, 2]})
    caches = list(state["cold"])
    cold_parts: dict[str, list[float]] = {}
    for i, cache in enumerate(caches):
        for name, seconds in (state["cold"][cache].get("engine_stages") or state["cold"][cache].get("vllm_stages", {})).items():
            if name != "engine_init":   # it holds torch.compile and the graphs
                cold_parts.setdefault(name, [0.0] * len(caches))[i] = seconds
    _stack(cold_ax, [f"cold start\ncache {c}" for c in caches], cold_parts,
           [state["cold"][c]["first_token_s"] for c in caches])
    cold_ax.set_title("cold start (vLLM's stages)")
    medians = []
    for level in sorted({r["level"] for r in state["restores"]}):
        for cache in ("warm", "dropped"):
            runs = sorted((r for r in state["restores"] if (r["level"], r["page_cache"]) == (level, cache)),
                          key=lambda r: r["first_token_s"])
            if runs:
                medians.append(runs[(len(runs) - 1) // 2])
    parts: dict[str, list[float]] = {}
    for j, r in enumerate(medians):
        for name, keys in RESTORE_STAGES:
            parts.setdefault(name, [0.0] * len(medians))[j] = sum(r["stages"].get(k, 0.0) for k in keys)
    _stack(restore_ax, [f"sleep level {r['level']}\ncache {r['page_cache']}" for r in medians], parts,
           [r["first_token_s"] for r in medians])
    restore_ax.set_title("restore through rewarm-runc (median)")
    fig.suptitle(f"Stock vLLM, {state['size']} Llama, on {state['gpu'][0]}")
    return _save(fig, path)


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(draw(arg))
