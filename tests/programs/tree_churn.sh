#!/bin/bash
# tree_churn: children created and reaped all the time (command substitutions,
# fork+exec of /bin/true, subshells with exit statuses), to be checkpointed
# periodically in the middle of it.
. "$(dirname "$0")/lib/crtest.sh"
cr_ready
n=0
expect=0
for i in $(seq 1 300); do
	v=$(echo "$i")
	/bin/true
	(exit $((i % 7)))
	rc=$?
	n=$((n + v + rc))
	expect=$((expect + i + i % 7))
	case $i in
	75) cr_gate 1 ;;
	150) cr_gate 2 ;;
	225) cr_gate 3 ;;
	esac
	[ $((i % 25)) -eq 0 ] && echo "at $i n=$n" && sleep 0.05
done
if [ "$n" -eq "$expect" ]; then echo PASS; else echo "FAIL: n=$n expected $expect"; exit 1; fi
