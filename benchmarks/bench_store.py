"""Store overhead: RedisStore vs raw redis-py, LocalStore vs a plain dict, in the same run.

- RedisStore.put_tensors + get_tensors of a tensor dict vs redis-py SET + GET of the same raw
  tensor bytes on the same private server (target ratio <= 1.15). Ours additionally encodes the
  header, checksums (crc32) both ways and hands back writable tensors.
- LocalStore put + get vs a plain dict that stores and returns clones (the copies any safe
  in-process store must make, so that callers cannot alias stored state); target <= 2x.
"""

from __future__ import annotations

import redis
import torch

from benchmarks.timing import compare, fmt_ms
from kv_store import LocalStore, RedisStore
from kv_store.redis_server import LocalRedisServer

SIZES_MIB = (1, 16)
TARGET_REDIS = 1.15
TARGET_LOCAL = 2.0


def _tensor_dict(mib: int) -> dict[str, torch.Tensor]:
    """Four float32 tensors totalling `mib` MiB, shaped like per-layer K/V (B, H, S, D)."""
    numel = mib * (1 << 20) // 4 // 4
    return {
        f"layer{i}": torch.randn(1, 4, numel // 256, 64).reshape(1, 4, -1, 64) for i in range(4)
    }


def run(repeats: int = 21) -> str:
    rows = []
    with LocalRedisServer() as server:
        store = RedisStore(server.url, namespace="bench")
        raw = redis.Redis.from_url(server.url)
        for mib in SIZES_MIB:
            tensors = _tensor_dict(mib)
            raw_bytes = b"".join(t.numpy().tobytes() for t in tensors.values())

            def ours(tensors: dict[str, torch.Tensor] = tensors) -> None:
                store.put_tensors("state", tensors)
                store.get_tensors("state")

            def baseline(raw_bytes: bytes = raw_bytes) -> None:
                raw.set("tm:raw", raw_bytes)
                raw.get("tm:raw")

            cmp = compare(ours, baseline, repeats=repeats)
            rows.append(("RedisStore vs redis-py SET+GET", mib, cmp, TARGET_REDIS))
        raw.close()
        store.close()

    local = LocalStore()
    plain: dict[str, dict[str, torch.Tensor]] = {}
    for mib in SIZES_MIB:
        tensors = _tensor_dict(mib)

        def ours_local(tensors: dict[str, torch.Tensor] = tensors) -> None:
            local.put_tensors("state", tensors)
            local.get_tensors("state")

        def plain_dict(tensors: dict[str, torch.Tensor] = tensors) -> None:
            plain["state"] = {k: v.clone() for k, v in tensors.items()}
            {k: v.clone() for k, v in plain["state"].items()}

        cmp = compare(ours_local, plain_dict, repeats=repeats)
        rows.append(("LocalStore vs dict of clones", mib, cmp, TARGET_LOCAL))

    lines = [
        "| comparison | size | ours (ms) | baseline (ms) | ratio (medians) | paired ratio "
        "| target |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, mib, cmp, target in rows:
        ok = "met" if cmp.paired_ratio <= target else "MISSED"
        lines.append(
            f"| {name} | {mib} MiB | {fmt_ms(cmp.ours_s)} | {fmt_ms(cmp.baseline_s)} | "
            f"{cmp.ratio:.3f} | {cmp.paired_ratio:.3f} | <= {target} ({ok}) |"
        )
    lines.append("")
    lines.append(
        f"put+get round trips, {repeats} interleaved rounds after warm-up, medians. "
        "The payload is 4 float32 tensors; the Redis baseline sends the same raw bytes."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
