#!/usr/bin/env bash
# The multi-domain table of the README (Visual-Decathlon style) on the CPU: efficientnet-lite0 at
# 64 px, every bundled image domain, five methods, one run each (seed 0), one after the other.
# Each run's results.json is kept in benchmarks/results/cpu-vision-domains/<task>-<method>/;
# the trained adapters are not (full fine-tuning saves a whole model per domain).
#   bash benchmarks/run_vision_domains.sh [TASK ...]      (default: every image task)
# then: adapterkit report benchmarks/results/cpu-vision-domains/* --domains --plot vision-domains.png
set -euo pipefail
cd "$(dirname "$0")/.."
ADAPTERKIT=${ADAPTERKIT:-adapterkit}
OUT=benchmarks/results/cpu-vision-domains
TASKS=${*:-mnist digits fashion_mnist animal_mnist letters lfw_faces textures}
COMMON="--model efficientnet-lite0 --image-size 64 --max-examples ${MAX_EXAMPLES:-600} --epochs ${EPOCHS:-3} \
  --eval-every ${EPOCHS:-3} --batch-size 32 --quiet"
# method and its learning rate (AdamW, linear decay): fresh modules on a frozen network take far
# larger steps than fine-tuning every pretrained weight
METHODS=("probe --lr 1e-2" "full --lr 1e-4" "residual --lr 3e-3" "residual_parallel --lr 3e-3"
         "lora --option r=8 --option targets=[\"expand\",\"project\"] --lr 3e-3")
for task in $TASKS; do
  for entry in "${METHODS[@]}"; do
    method=${entry%% *}
    run=$(mktemp -d)
    # shellcheck disable=SC2086
    $ADAPTERKIT train $COMMON --task "$task" --method $entry --output-dir "$run" > /dev/null
    mkdir -p "$OUT/$task-$method"
    cp "$run/results.json" "$OUT/$task-$method/results.json"
    rm -rf "$run"
    echo "$task $method done" >&2
  done
done
