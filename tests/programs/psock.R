# psock: an R PSOCK cluster (issue 13): parallel::makeCluster(type = "PSOCK")
# starts two Rscript workers that talk to the master over loopback TCP, as
# future::multisession and doParallel do. Each round sends a call to every
# worker, holds at a gate while the workers compute (their results are in
# flight or queued at the master when a checkpoint is taken), then collects
# the results and runs a parLapply. Output identical to an uninterrupted run
# means no call or result was lost or delivered twice.
# usage: Rscript psock.R [ROUNDS]   (default 3)
args <- commandArgs(trailingOnly = TRUE)
rounds <- if (length(args) >= 1) as.integer(args[1]) else 3L
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

library(parallel)
cl <- makeCluster(2, type = "PSOCK")
work <- function(seed, n) {
  set.seed(seed)
  x <- runif(n)
  c(sum(x), max(x))
}
starts <- Sys.getenv("CR_STARTS_LOG")
if (nzchar(starts)) cat("READY\n", file = starts, append = TRUE)
say("READY")
for (r in seq_len(rounds)) {
  for (w in seq_along(cl)) {
    parallel:::sendCall(cl[[w]], work, list(1000L * r + w, 200000L))
  }
  gate(r)
  got <- lapply(seq_along(cl), function(w) parallel:::recvResult(cl[[w]]))
  more <- parSapply(cl, 1:8, function(i, r) {
    set.seed(i + 10 * r)
    mean(rnorm(5000))
  }, r)
  say("round %d: calls %s; parSapply %.10f", r,
      paste(sprintf("%.8f/%.8f", sapply(got, `[`, 1), sapply(got, `[`, 2)), collapse = " "),
      sum(more))
}
stopCluster(cl)
say("PASS")
