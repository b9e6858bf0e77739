#!/usr/bin/env bash
# The evaluation of assets/default-model/evaluation.txt on any checkpoint of the recipe, in its format:
#   PYTHONPATH=. bash experiments/evaluate.sh /tmp/w/model > experiments/colour-link/run-w-evaluation.txt
# (progress lines go to stderr). 159 s for the shipped model on the 2-core CPU machine (2026-12-06).
set -euo pipefail
model=${1:?usage: evaluate.sh MODEL_DIR}
python=${PYTHON:-.venv/bin/python}
run() {  # run TITLE ARGS...: a section of evaluation.txt
    local title=$1; shift
    echo "== $title"
    echo "\$ python $*" | sed "s|$model|DIR|"
    "$python" "$@"
}
run "standard n=300" -m tokenpacker evaluate-default --model "$model" --device cpu --n 300
run "small max-tiles 9 n=300" -m tokenpacker evaluate-default --model "$model" --device cpu --split small --n 300 --max-tiles 9
run "small max-tiles 1 n=300" -m tokenpacker evaluate-default --model "$model" --device cpu --split small --n 300 --max-tiles 1
run "grounding n=100" -m tokenpacker evaluate-default --model "$model" --device cpu --n 100 --grounding
run "probe" -m tokenpacker.synthetic.probe --model "$model" --scenes 200
