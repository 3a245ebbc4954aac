"""The environment through which rewarm talks to its cuda-checkpoint command: CRIU's CUDA plugin
runs that command with fixed arguments, so everything else travels in the environment that the
runtime, CRIU and the plugin pass down."""
from __future__ import annotations

DEVICE_MAP = "REWARM_CUDA_DEVICE_MAP"        # OLD_UUID=NEW_UUID,... for a restore onto other GPUs
LOCK_TIMEOUT_MS = "REWARM_CUDA_LOCK_TIMEOUT_MS"   # how long a lock waits for in-flight GPU work
TIMING_LOG = "REWARM_CUDA_TIMING_LOG"        # where each action's seconds are appended (the restore's stages)
