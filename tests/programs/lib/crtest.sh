# Shared helpers for the shell programs of the C/R suite: the same protocol as
# lib/crtest.h (READY, gates "hold k"/"go k" blocking while $CR_GATE_DIR/gate-k
# exists, PASS or "FAIL: why" last).
cr_gate() {
	echo "hold $1"
	if [ -n "${CR_GATE_DIR:-}" ]; then
		while [ -e "$CR_GATE_DIR/gate-$1" ]; do
			[ -e "$CR_GATE_DIR/gate-$1.ping" ] && rm -f "$CR_GATE_DIR/gate-$1.ping"
			sleep 0.01
		done
	fi
	echo "go $1"
}

# Record the start-up in $CR_STARTS_LOG (the runner checks that a restart
# resumes the program instead of running it again), then print READY.
cr_ready() {
	if [ -n "${CR_STARTS_LOG:-}" ]; then echo READY >>"$CR_STARTS_LOG"; fi
	echo READY
}
