#!/bin/bash
# tree_pgrp: the job signals its own process group (`kill -USR1 0`) and
# counts the deliveries; it must get each signal exactly once, before and
# after a restart (ckpt's own processes share the group and must neither
# drop nor duplicate it). (issue 5)
. "$(dirname "$0")/lib/crtest.sh"
n=0
trap 'n=$((n + 1))' USR1
cr_ready
for i in $(seq 1 12); do
	kill -USR1 0
	sleep 0.15 || true
	echo "sent $i got $n"
	case $i in
	3) cr_gate 1 ;;
	6) cr_gate 2 ;;
	9) cr_gate 3 ;;
	esac
done
if [ "$n" -eq 12 ]; then echo PASS; else echo "FAIL: got $n signals for 12 sent"; exit 1; fi
