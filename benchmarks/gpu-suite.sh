#!/usr/bin/env bash
# The GPU measurements of BENCHMARKS.md and the GPU tests, on a GPU node where rewarm is installed
# (packaging/install-node.sh, or packaging/offline/install.sh where no package archive is reachable)
# and REWARM_CONFIG names its config. Results go to benchmarks/results/ (suffix LABEL).
#   benchmarks/gpu-suite.sh LABEL [tests] [memory] [llm] [loaders] [vllm-cold] [vllm-restores]
#                                 [sglang-cold] [sglang-restores]   (default: the first three)
# The vLLM steps need vLLM's packages in $VLLM_SITE (default /opt/vsite) and a model in $VLLM_MODEL;
# $VLLM_BENCH_ARGS adds serving.py's options (--levels, --engine-arg=FLAG, --env K=V, --flags, --gpu-mem;
# each option one word: --engine-arg=--load-format=instanttensor). The SGLang steps take SGLang's kit
# in $SGLANG_SITE (default /opt/sgsite, benchmarks/sglang_kit) and the same model, $SGLANG_BENCH_ARGS.
set -uo pipefail
cd "$(dirname "$0")/.."
label=${1:?usage: gpu-suite.sh LABEL [tests] [memory] [llm]}
shift
steps=${*:-tests memory llm}
results=benchmarks/results
export PYTHONUNBUFFERED=1
python3 -c 'import torch; print("torch", torch.__version__, "GPUs", torch.cuda.device_count())'
for step in $steps; do
  case $step in
    tests)   # the GPU tests, the CUDA helper, the parallel fill in a container; their output kept
      python3 -m pytest -s -v -p no:cacheprovider tests/system/test_gpu_machine.py tests/system/test_llm_worker_gpu.py \
        tests/system/test_cuda_helper.py \
        tests/system/test_parallel_fill.py 2>&1 | tee "$results/gpu_tests_$label.log" ;;
    memory)  # memory restore throughput by readers, THP and page cache, beside the C fill and the disk
      python3 benchmarks/memory_restore.py --gib 8 --label "$label" 2>&1 | tee "$results/memory_restore_$label.log" ;;
    llm)     # the 8B worker with CUDA graphs: cold start vs restore to first token, every stage
      work=/var/tmp/rewarm-bench/restore-gpu
      python3 benchmarks/restore.py --device cuda --size 8b --kv-gb 40 --work "$work" --label "$label" 2>&1 \
        | tee "$results/restore_cuda_8b_$label.log"
      rm -rf "$work" ;;
    loaders) # vLLM's weight loaders from the page cache (warm, dropped) onto the GPU, no server
      PYTHONPATH="${VLLM_SITE:-/opt/vsite}${PYTHONPATH:+:$PYTHONPATH}" python3 benchmarks/weight_loaders.py \
        --model "${VLLM_MODEL:?}" --label "$label" 2>&1 | tee "$results/weight_loaders_$label.log" ;;
    vllm-cold|vllm-restores)   # stock vLLM: cold start vs restore to first token, its preset's levels
      python3 benchmarks/serving.py --engine vllm --phase "${step#vllm-}" --model "${VLLM_MODEL:?}" \
        --site "${VLLM_SITE:-/opt/vsite}" --label "$label" ${VLLM_BENCH_ARGS:-} 2>&1 | tee -a "$results/vllm_$label.log" ;;
    sglang-cold|sglang-restores)   # stock SGLang: the same, its preset's one mode
      python3 benchmarks/serving.py --engine sglang --phase "${step#sglang-}" --model "${VLLM_MODEL:?}" \
        --site "${SGLANG_SITE:-/opt/sgsite}" --label "$label" ${SGLANG_BENCH_ARGS:-} 2>&1 \
        | tee -a "$results/sglang_$label.log" ;;
    *) echo "unknown step $step"; exit 2 ;;
  esac
done
