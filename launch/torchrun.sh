#!/usr/bin/env bash
# One node: launch/torchrun.sh NPROC SUBCOMMAND [ARGS...]
#   launch/torchrun.sh 8 verify-hf --hf-dir /ckpt/hf --tp 2 --pp 2 --ep 2
set -euo pipefail
if [ "$#" -lt 2 ]; then
  echo "usage: $0 NPROC SUBCOMMAND [ARGS...]" >&2
  exit 2
fi
nproc="$1"
shift
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec python -m torch.distributed.run --standalone --nproc_per_node="$nproc" -m r1mega.cli "$@"
