#!/bin/bash
# README route on the GNU-info corpus with the default preset
set -e
S=/work/main/.venv/bin/stride
W="--workspace /work/ws3"
date; /usr/bin/time -f "%e s, %M KB" $S $W corpus import /work/exp/info/info.jsonl --name info
date; /usr/bin/time -f "%e s, %M KB" $S $W --no-progress model train-tiny --corpus info --out /work/ws3/models/info-tiny --preset default
date; /usr/bin/time -f "%e s, %M KB" $S $W --no-progress index --corpus info --model /work/ws3/models/info-tiny --run i1 --preset default --device auto
date; /usr/bin/time -f "%e s, %M KB" $S $W --no-progress bench tracing --run i1 --out /work/exp/info/tracing
date
