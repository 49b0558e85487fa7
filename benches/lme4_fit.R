# Time lme4::lmer on one benchmark case; run by benches/run.py, one R process per case.
#
#   Rscript benches/lme4_fit.R DATA.csv "FORMULA" REML|ML REPEAT FACTOR,COLUMNS
#
# Reads the CSV (factor columns as character, so labels such as "1002" stay labels), then fits
# `repeat` times with control = lmerControl(calc.derivs = FALSE): the finite-difference
# gradient and Hessian that lme4 computes after the optimum by default are a convergence check,
# not part of the fit, and interlace's own check costs 2·n_theta evaluations at most. Only the
# lmer call is timed (system.time: elapsed, and user + system CPU). Prints key=value lines for run.py.

args <- commandArgs(trailingOnly = TRUE)
if (length(args) != 5) stop("usage: lme4_fit.R DATA.csv FORMULA REML|ML REPEAT FACTORS")
csv <- args[[1]]
form <- as.formula(args[[2]])
reml <- switch(args[[3]], REML = TRUE, ML = FALSE, stop("method must be REML or ML"))
n_repeat <- as.integer(args[[4]])
factors <- strsplit(args[[5]], ",", fixed = TRUE)[[1]]

suppressPackageStartupMessages(library(lme4))
header <- names(read.csv(csv, nrows = 1, check.names = FALSE))
classes <- ifelse(header %in% factors, "character", NA)
data <- read.csv(csv, colClasses = classes, check.names = FALSE)
for (column in intersect(factors, header)) data[[column]] <- factor(data[[column]])

control <- lmerControl(calc.derivs = FALSE)
seconds <- cpu_seconds <- numeric(n_repeat)
for (k in seq_len(n_repeat)) {
  gc()
  timing <- system.time(fm <- lmer(form, data = data, REML = reml, control = control))
  seconds[k] <- timing[["elapsed"]]
  cpu_seconds[k] <- timing[["user.self"]] + timing[["sys.self"]]
}
cat(sprintf("seconds=%s\n", paste(sprintf("%.6f", seconds), collapse = ",")))
cat(sprintf("cpu_seconds=%s\n", paste(sprintf("%.6f", cpu_seconds), collapse = ",")))
cat(sprintf("n_evals=%d\n", as.integer(fm@optinfo$feval)))
cat(sprintf("objective=%.10f\n", -2 * as.numeric(logLik(fm))))
cat(sprintf("theta=%s\n", paste(sprintf("%.8g", getME(fm, "theta")), collapse = ",")))
cat(sprintf("lme4_version=%s\n", as.character(packageVersion("lme4"))))
cat(sprintf("r_version=%s\n", paste(R.version$major, R.version$minor, sep = ".")))
cat(sprintf("blas=%s\n", basename(extSoftVersion()[["BLAS"]])))
