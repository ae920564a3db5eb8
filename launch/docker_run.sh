#!/usr/bin/env bash
# Run r1mega in its Docker image on one node with every GPU, host networking (NCCL/InfiniBand)
# and the data/checkpoint directory mounted at /workspace.
#   launch/docker_run.sh IMAGE SUBCOMMAND [ARGS...]
#   launch/docker_run.sh r1mega plan --config configs/model/deepseek_v3_671b.yaml --tp 2 --pp 16 --ep 64 --dp 64
# R1MEGA_DRY_RUN=1 prints the docker command instead of running it.
# R1MEGA_CODE_SANDBOX=1 lets the container create the namespaces the code-reward sandbox needs
# (Docker's default seccomp/AppArmor profiles forbid unshare and mount; the sandbox installs its
# own seccomp filter on the generated code).
set -euo pipefail
if [ "$#" -lt 2 ]; then
  echo "usage: $0 IMAGE SUBCOMMAND [ARGS...]" >&2
  exit 2
fi
image="$1"
shift
workspace="${WORKSPACE:-$PWD}"
sandbox_opts=()
if [ "${R1MEGA_CODE_SANDBOX:-0}" = "1" ]; then
  sandbox_opts=(--security-opt seccomp=unconfined --security-opt apparmor=unconfined)
fi
cmd=(docker run --rm --gpus all --ipc=host --network=host "${sandbox_opts[@]}"
  --ulimit memlock=-1 --ulimit stack=67108864
  --device=/dev/infiniband
  -v "$workspace:/workspace" -w /workspace
  -e NCCL_IB_HCA -e NCCL_SOCKET_IFNAME -e WANDB_MODE -e WANDB_API_KEY
  "$image" "$@")
if [ "${R1MEGA_DRY_RUN:-0}" = "1" ]; then
  printf '%q ' "${cmd[@]}"
  echo
  exit 0
fi
exec "${cmd[@]}"
