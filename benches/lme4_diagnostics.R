# Time lme4 on the influence, bootstrap and profile tasks of benches/diagnostics.py, one R
# process per task.
#
#   Rscript benches/lme4_diagnostics.R DATA.csv "FORMULA" REML|ML FACTORS REPEAT TASK [ARGS]
#
#   TASK = delete LEVEL LIMIT START   refit without each observation (LEVEL = 1) or each level
#                                     of the factor LEVEL, the first LIMIT cases (0: all), from
#                                     lme4's default start (START = default) or from θ̂ (theta)
#          bootstrap NSIM SEED        bootMer(m, FUN = c(fixef, theta, sigma), nsim, seed)
#          profile                    confint(m, method = "profile")
#
# Reads the CSV as lme4_fit.R does (factor columns as character, then factor(), so labels such
# as "1002" stay labels), fits the full model (not timed; its −2 log L is printed), then times
# only the task, REPEAT times (system.time: elapsed, and user + system CPU). Every fit, the
# full one and the refits, uses lmerControl(calc.derivs = FALSE): the finite-difference
# gradient and Hessian that lme4 adds after each optimum by default are a convergence check,
# not part of the fit, so leaving them out makes lme4 faster and the ratios conservative.
# bootMer's refits inherit it from the full fit (refit() computes derivatives only when the
# fit it refits did).
#
# The deletion loop is the one a user (or HLMdiag's case_delete) writes:
#   for (i in cases) lmer(formula, data = data[-rows_of(i), ], REML = reml)
# and Cook's distance of each case, (β̂ − β̂₍ᵢ₎)ᵀ V̂⁻¹ (β̂ − β̂₍ᵢ₎) / p with V̂ = vcov(full fit), is
# printed so that diagnostics.py can compare it with interlace's. Prints key=value lines.

args <- commandArgs(trailingOnly = TRUE)
if (length(args) < 6) {
  stop("usage: lme4_diagnostics.R DATA.csv FORMULA REML|ML FACTORS REPEAT TASK ...")
}
csv <- args[[1]]
form <- as.formula(args[[2]])
reml <- switch(args[[3]], REML = TRUE, ML = FALSE, stop("method must be REML or ML"))
factors <- strsplit(args[[4]], ",", fixed = TRUE)[[1]]
n_repeat <- as.integer(args[[5]])
task <- args[[6]]
args <- args[-(1:6)] # the task's own arguments

suppressPackageStartupMessages(library(lme4))
header <- names(read.csv(csv, nrows = 1, check.names = FALSE))
classes <- ifelse(header %in% factors, "character", NA)
data <- read.csv(csv, colClasses = classes, check.names = FALSE)
for (column in intersect(factors, header)) data[[column]] <- factor(data[[column]])

control <- lmerControl(calc.derivs = FALSE)
full <- lmer(form, data = data, REML = reml, control = control)
cat(sprintf("objective=%.10f\n", -2 * as.numeric(logLik(full))))
cat(sprintf("lme4_version=%s\n", as.character(packageVersion("lme4"))))
cat(sprintf("r_version=%s\n", paste(R.version$major, R.version$minor, sep = ".")))
cat(sprintf("blas=%s\n", basename(extSoftVersion()[["BLAS"]])))

# Warnings of the refits (singular fits, convergence) are counted, not printed.
n_warnings <- 0L
counted <- function(expr) {
  withCallingHandlers(expr, warning = function(w) {
    n_warnings <<- n_warnings + 1L
    invokeRestart("muffleWarning")
  }, message = function(m) invokeRestart("muffleMessage"))
}

# Run task() n_repeat times, timing each run; print the times.
timed <- function(task) {
  seconds <- cpu_seconds <- numeric(n_repeat)
  for (k in seq_len(n_repeat)) {
    gc()
    timing <- system.time(task())
    seconds[k] <- timing[["elapsed"]]
    cpu_seconds[k] <- timing[["user.self"]] + timing[["sys.self"]]
  }
  cat(sprintf("seconds=%s\n", paste(sprintf("%.6f", seconds), collapse = ",")))
  cat(sprintf("cpu_seconds=%s\n", paste(sprintf("%.6f", cpu_seconds), collapse = ",")))
  cat(sprintf("n_warnings=%d\n", n_warnings))
}

numbers <- function(x) paste(sprintf("%.10g", x), collapse = ",")

if (task == "delete") {
  if (length(args) != 3) stop("usage: ... delete LEVEL LIMIT START")
  level <- args[[1]]
  limit <- as.integer(args[[2]])
  start <- switch(args[[3]], default = NULL, theta = list(theta = getME(full, "theta")),
    stop("START must be default or theta"))
  if (level == "1") {
    labels <- as.character(seq_len(nrow(data)) - 1L) # 0-based, as the Python index
    keep <- function(k) -k
  } else {
    labels <- levels(data[[level]])
    keep <- function(k) data[[level]] != labels[[k]]
  }
  cases <- seq_along(labels)
  if (limit > 0) cases <- head(cases, limit)
  beta <- matrix(NA_real_, length(cases), length(fixef(full)))
  evals <- integer(length(cases))
  timed(function() {
    for (k in cases) {
      refit <- counted(lmer(form, data = data[keep(k), ], REML = reml, control = control,
        start = start))
      beta[k, ] <<- fixef(refit)
      evals[k] <<- refit@optinfo$feval
    }
  })
  cat(sprintf("mean_evals=%.2f\n", mean(evals)))
  change <- sweep(beta, 2, fixef(full)) # β̂₍ᵢ₎ − β̂; the sign cancels
  cooksd <- rowSums((change %*% solve(as.matrix(vcov(full)))) * change) / ncol(beta)
  cat(sprintf("n_refits=%d\n", length(cases)))
  cat(sprintf("labels=%s\n", paste(labels[cases], collapse = ",")))
  cat(sprintf("cooksd=%s\n", numbers(cooksd)))
} else if (task == "bootstrap") {
  if (length(args) != 2) stop("usage: ... bootstrap NSIM SEED")
  nsim <- as.integer(args[[1]])
  seed <- as.integer(args[[2]])
  statistic <- function(x) c(fixef(x), getME(x, "theta"), sigma(x))
  timed(function() boot <<- counted(bootMer(full, FUN = statistic, nsim = nsim, seed = seed)))
  cat(sprintf("statistics=%s\n", paste(names(boot$t0), collapse = ",")))
  cat(sprintf("estimates=%s\n", numbers(boot$t0)))
  cat(sprintf("boot_sd=%s\n", numbers(apply(boot$t, 2, sd, na.rm = TRUE))))
  cat(sprintf("n_failed=%d\n", sum(!complete.cases(boot$t))))
} else if (task == "profile") {
  timed(function() ci <<- counted(confint(full, method = "profile")))
  cat(sprintf("parameters=%s\n", paste(rownames(ci), collapse = ",")))
  cat(sprintf("lower=%s\n", numbers(ci[, 1])))
  cat(sprintf("upper=%s\n", numbers(ci[, 2])))
} else {
  stop("TASK must be delete, bootstrap or profile")
}
