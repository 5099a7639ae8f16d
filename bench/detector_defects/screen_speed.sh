#!/bin/bash
# Screening speed: 10,000 Fashion-MNIST test images through the 80-epoch sneaker model, 1 onnxruntime thread.
set -e
cd /work/det-runs/speed
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
rm -rf model && cp -r /tmp/det16/work/r4-w32-b1-e80-mse-defects0.9/sneaker-s0/model model
for score in mse mse-top1 mse-max+feat; do
  aekit -q calibrate model cal --class sneaker --score $score --alpha 0.05 --threads 1 > /dev/null
  for maps in no yes; do
    rm -rf maps out*
    extra=""; [ $maps = yes ] && extra="--maps maps"
    t0=$(date +%s.%N)
    aekit -q screen model /tmp/det16/fmnist/test --class sneaker --out out --threads 1 $extra > /dev/null || true
    t1=$(date +%s.%N)
    echo "$score maps=$maps $(python -c "print(f'{10000/($t1-$t0):.0f} images/s ({$t1-$t0:.1f} s)')")"
  done
done
