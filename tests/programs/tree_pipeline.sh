#!/bin/bash
# tree_pipeline: a batch-job-like bash script: `seq | awk` pipelines, `sort`,
# command substitutions, subshells and `sleep` between steps. The total is
# checked against the same sums computed with shell arithmetic only.
. "$(dirname "$0")/lib/crtest.sh"
cr_ready
steps=${1:-24}
total=0
check=0
for i in $(seq 1 "$steps"); do
	n=$((i * 700))
	s=$(seq 1 "$n" | awk '{s += $1} END {print s}')
	x=$( (echo "$i"; echo $((i * 3)); echo 2) | sort -n | tail -1)
	y=$(for k in 1 2 3; do echo $((k * i)); done | awk '{t += $1} END {print t}')
	total=$(((total + s % 9973 + x + y) % 1000003))
	check=$(((check + (n * (n + 1) / 2) % 9973 + 3 * i + 6 * i) % 1000003))
	echo "step $i s=$s x=$x y=$y total=$total"
	sleep 0.1
	case $i in
	6) cr_gate 1 ;;
	12) cr_gate 2 ;;
	18) cr_gate 3 ;;
	esac
done
if [ "$total" -eq "$check" ]; then echo PASS; else echo "FAIL: total $total, expected $check"; exit 1; fi
