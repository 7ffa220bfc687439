#!/usr/bin/env bash
# The card's SM clock, power, temperature, utilisation and clock-event reasons, one line every PERIOD seconds, until
# killed, for benchmarks/gpu_by_stage.py to line up with a run's step log. A profile's handful of steps shows the
# card at its boost clock; a 15-minute run may not hold it, and the run's step times alone cannot tell a card that
# slows down from a host that cannot keep it busy.
#
#   bash benchmarks/sample_gpu.sh OUT.csv [PERIOD] &   # columns: unix_s,sm_mhz,mem_mhz,power_w,temp_c,util_pct,reasons
#
# The time is the sampler's own (Unix seconds), not nvidia-smi's local timestamp, so the host's time zone never
# enters the join. util_pct is nvidia-smi's: the share of its last sample period with a kernel running.
set -u
out=$1 period=${2:-1}
# the reasons field was renamed from clocks_throttle_reasons (older drivers accept only that name)
reasons=clocks_event_reasons.active
nvidia-smi --query-gpu=$reasons --format=csv,noheader >/dev/null 2>&1 || reasons=clocks_throttle_reasons.active
query=clocks.sm,clocks.mem,power.draw,temperature.gpu,utilization.gpu,$reasons
echo "unix_s,sm_mhz,mem_mhz,power_w,temp_c,util_pct,reasons" > "$out"
while :; do
  # the first card only: the runs sampled here use one
  line=$(nvidia-smi --query-gpu=$query --format=csv,noheader,nounits 2>/dev/null | head -1 | tr -d ' ')
  [ -n "$line" ] && echo "$(date +%s.%N),$line" >> "$out"
  sleep "$period"
done
