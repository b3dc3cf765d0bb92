#!/usr/bin/env bash
# lancy on one CUDA GPU, in under 5 minutes: each check prints tokens/s and peak GPU memory beside TRL's defaults
# measured in the same script. Needs a CUDA build of torch and lancy installed (pip install -e ".[dev,gpu]"; flash-attn
# for the first check), and the model reachable: the hub, its cache, or LANCY_MODEL=/path/to/model.
#
#   bash bench/gpu_check.sh                 # SmolLM2-135M-Instruct
#   LANCY_MODEL=Qwen/Qwen3-0.6B bash bench/gpu_check.sh
#
#   1. SFT, LoRA: TRL's defaults vs lancy's (flash-attention 2 with packing, bf16)       bench/sft_throughput.py
#   2. QLoRA: lancy with --load-in-4bit vs TRL's defaults on the bf16 base               bench/sft_throughput.py
#   3. shared-prefix batches off vs on (SDPA, where they apply)                            bench/sft_throughput.py
#   4. engines through `lancy sft` itself: one plain process, DeepSpeed ZeRO-2 and FSDP on 1 GPU (tokens/s and the
#      peak the run records in run.json)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="${LANCY_MODEL:-smollm2-135m-instruct}"
STEPS="${STEPS:-6}"
python - <<'EOF'
import torch, sys
if not torch.cuda.is_available():
    sys.exit("gpu_check.sh needs a CUDA GPU that torch sees")
p = torch.cuda.get_device_properties(0)
print(f"GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB; torch {torch.__version__}, CUDA {torch.version.cuda}")
EOF
python -c "import flash_attn" 2>/dev/null && echo "flash-attn: installed" || echo "flash-attn: missing (check 1 runs lancy on SDPA)"
bench() { python bench/sft_throughput.py --model "$MODEL" --device cuda --lora --steps "$STEPS" --repeats 1 "$@"; }

echo; echo "== 1. SFT LoRA: TRL defaults vs lancy (flash-attention 2 + packing where installed, bf16)"
bench --variants trl_default lancy --lancy-set packing=true
echo; echo "== 2. QLoRA (NF4 base) vs TRL defaults (bf16 base)"
bench --variants trl_default lancy --lancy-set load_in_4bit=true
echo; echo "== 3. shared-prefix batches: off, then on (SDPA)"
bench --variants lancy --lancy-set attn_implementation='"sdpa"' --lancy-set shared_prefix=false
bench --variants lancy --lancy-set attn_implementation='"sdpa"' --lancy-set shared_prefix=true

echo; echo "== 4. engines on 1 GPU through lancy sft: plain, DeepSpeed ZeRO-2, FSDP"
OUT="$(mktemp -d)"
for engine in plain zero2 fsdp; do
  case $engine in plain) extra=();; zero2) extra=(--deepspeed zero2);; fsdp) extra=(--fsdp);; esac
  lancy sft --model "$MODEL" --max-steps "$STEPS" --eval-steps 1000 --save-steps 1000 --output-dir "$OUT" \
    --run-name "$engine" "${extra[@]}" >"$OUT/$engine.log" 2>&1 || { echo "$engine failed:"; tail -5 "$OUT/$engine.log"; continue; }
  python - "$OUT/$engine" "$engine" <<'EOF'
import json, sys
from pathlib import Path
run = Path(sys.argv[1]); info = json.loads((run / "run.json").read_text())
tokens = max((json.loads(l).get("num_tokens", 0) for l in (run / "logs" / "training.log").read_text().splitlines()
              if l.startswith("{")), default=0)
print(f"  {sys.argv[2]:6} {tokens / info['train_seconds']:10.0f} tokens/s  peak GPU memory "
      f"{info.get('peak_gpu_memory_gb', float('nan')):.2f} GB  train loss {info['train_loss']:.4f}  "
      f"memory estimate {info['model_info'].get('memory_estimate_gb')} GB")
EOF
done
rm -rf "$OUT"
