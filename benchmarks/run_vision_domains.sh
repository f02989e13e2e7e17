#!/usr/bin/env bash
# The multi-domain table of the README (Visual-Decathlon style) on the CPU: efficientnet-lite0 at
# 64 px, every bundled image domain, five methods, one run each (seed 0), one after the other.
# Each run's results.json is kept in benchmarks/results/cpu-vision-domains/<task>-<method>/;
# the trained adapters are not (full fine-tuning saves a whole model per domain).
#   bash benchmarks/run_vision_domains.sh [TASK ...]      (default: every image task)
#   ONLY="full residual" bash benchmarks/run_vision_domains.sh ...   (only these methods)
# then: adapterkit report benchmarks/results/cpu-vision-domains/* --domains --plot vision-domains.png
set -euo pipefail
cd "$(dirname "$0")/.."
ADAPTERKIT=${ADAPTERKIT:-adapterkit}
OUT=benchmarks/results/cpu-vision-domains
TASKS=${*:-mnist digits fashion_mnist animal_mnist letters lfw_faces textures}
COMMON="--model efficientnet-lite0 --image-size 64 --max-examples ${MAX_EXAMPLES:-300} --epochs ${EPOCHS:-5} \
  --eval-every ${EPOCHS:-5} --batch-size 32 --quiet"
# method and its learning rate (AdamW, linear decay), each the better of two in a 2-epoch trial on
# digits (full: 1e-3 / 3e-3, residual and residual_parallel: 3e-3 / 1e-2); at 1e-4 full
# fine-tuning stayed near chance in this few steps, its new head learning too slowly
METHODS=("probe --lr 1e-2" "full --lr 3e-3" "residual --lr 1e-2" "residual_parallel --lr 3e-3"
         "lora --option r=8 --option targets=[\"expand\",\"project\"] --lr 3e-3")
for task in $TASKS; do
  for entry in "${METHODS[@]}"; do
    method=${entry%% *}
    if [[ -n ${ONLY:-} && " $ONLY " != *" $method "* ]]; then continue; fi
    run=$(mktemp -d)
    # shellcheck disable=SC2086
    $ADAPTERKIT train $COMMON --task "$task" --method $entry --output-dir "$run" > /dev/null
    mkdir -p "$OUT/$task-$method"
    cp "$run/results.json" "$OUT/$task-$method/results.json"
    rm -rf "$run"
    echo "$task $method done" >&2
  done
done
