/* libtick: a shared library the ticker calls on every tick (built with
 * -DWITH_LIB), so that the faults suite can change a library under a
 * checkpointed program. */
#include <stdint.h>

uint64_t tick_mix(uint64_t x) { return x >> 32; }
