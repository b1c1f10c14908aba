# montecarlo: a seeded Monte-Carlo estimate of pi in Rscript, one progress line per chunk,
# with gates like the C programs (see lib/crtest.h).
# usage: Rscript montecarlo.R [CHUNKS [N]]   (defaults 40, 100000)
args <- commandArgs(trailingOnly = TRUE)
chunks <- if (length(args) >= 1) as.integer(args[1]) else 40L
n <- if (length(args) >= 2) as.integer(args[2]) else 100000L
gate_dir <- Sys.getenv("CR_GATE_DIR")

say <- function(...) {
  cat(sprintf(...), "\n", sep = "")
  flush(stdout())
}

gate <- function(k) {
  say("hold %d", k)
  if (nzchar(gate_dir)) {
    path <- file.path(gate_dir, sprintf("gate-%d", k))
    while (file.exists(path)) Sys.sleep(0.005)
  }
  say("go %d", k)
}

set.seed(20261126)
step <- chunks %/% 4
say("chunks %d n %d", chunks, n)
starts <- Sys.getenv("CR_STARTS_LOG")
if (nzchar(starts)) cat("READY\n", file = starts, append = TRUE)
say("READY")
inside <- 0
total <- 0
for (k in seq_len(chunks)) {
  x <- runif(n)
  y <- runif(n)
  inside <- inside + sum(x * x + y * y <= 1)
  total <- total + n
  say("chunk %d inside %d pi %.10f", k, as.integer(inside), 4 * inside / total)
  if (k %% step == 0 && k %/% step <= 3) gate(k %/% step)
  Sys.sleep(0.02)
}
est <- 4 * inside / total
if (total != chunks * n) {
  say("FAIL: %.0f samples, expected %d", total, chunks * n)
  quit(status = 1)
}
if (abs(est - pi) > 0.01) {
  say("FAIL: estimate %.6f is too far from pi", est)
  quit(status = 1)
}
say("PASS")
