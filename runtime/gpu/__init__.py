"""GPUs: the CUDA driver's checkpoint API (driver.py), the cuda-checkpoint command CRIU's CUDA
plugin runs (cuda_cli.py), and NVML's view of the node and of a container's GPUs (nvml.py)."""
