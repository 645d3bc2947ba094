#!/usr/bin/env bash
# One-off GPU check (issue: agent on real NVIDIA hardware): prints the NVML inventory and live
# readings of every GPU while a small load runs, using the agent's own NVML code
# (target/release/gp4u-gpu-probe, built with `cargo build --release -p gp4u-agent --bin gp4u-gpu-probe`).
# Output: JSON lines on stdout; the load's output on stderr.
set -uo pipefail
probe="${1:-target/release/gp4u-gpu-probe}"
echo "== host"; uname -a; nvidia-smi -L 2>&1 || echo "nvidia-smi unavailable"
load=""
if python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  load='python3 -c "import torch; x=torch.randn(8192,8192,device=\"cuda\"); y=torch.empty_like(x); [torch.matmul(x,x,out=y) for _ in range(20000)]; torch.cuda.synchronize()"'
  echo "== load: torch matmul"
elif command -v gpu_burn >/dev/null 2>&1; then
  load='gpu_burn 30'
  echo "== load: gpu_burn"
else
  echo "== load: none available (no torch with CUDA); sampling idle readings"
fi
echo "== probe"
"$probe" --samples 8 --interval-ms 500 ${load:+--load-cmd "$load"}
echo "== probe exit $?"
